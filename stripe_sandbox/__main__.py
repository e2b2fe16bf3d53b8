"""`python -m stripe_sandbox`: serve the Stripe sandbox with werkzeug's threaded server."""

from __future__ import annotations

import logging
import signal
import sys
from types import FrameType

from werkzeug.serving import run_simple

from stripe_sandbox.app import create_app
from stripe_sandbox.config import Config
from stripe_sandbox.context import EXTENSION, Sandbox


def _stop(signum: int, frame: FrameType | None) -> None:
    # SIGTERM ends the server like Ctrl-C, so the webhook thread stops and SQLite closes cleanly.
    raise KeyboardInterrupt


def main() -> None:
    logging.basicConfig(stream=sys.stderr, level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    # We log one line per request ourselves; werkzeug's own line would double it.
    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    config = Config.from_env()
    app = create_app(config)
    sandbox: Sandbox = app.extensions[EXTENSION]
    signal.signal(signal.SIGTERM, _stop)
    sandbox.dispatcher.start()
    logging.getLogger("stripe_sandbox").info(
        "Stripe sandbox on http://%s:%d (database %s, webhooks to %s)",
        config.host,
        config.port,
        config.database,
        ", ".join(config.webhook_urls) or "no configured URL",
    )
    try:
        run_simple(config.host, config.port, app, threaded=True, use_reloader=False)
    except KeyboardInterrupt:
        pass
    finally:
        sandbox.dispatcher.stop()
        sandbox.store.close()


if __name__ == "__main__":
    main()
