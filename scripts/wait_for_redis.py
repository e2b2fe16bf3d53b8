"""Wait until Redis at $REDIS_URL answers PING; exit 1 after the timeout (seconds, default 30)."""

import os
import sys
import time

from redis import Redis
from redis.exceptions import RedisError

url = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
deadline = time.monotonic() + float(sys.argv[1] if len(sys.argv) > 1 else 30)
while True:
    try:
        Redis.from_url(url, socket_connect_timeout=1).ping()
        break
    except RedisError as error:
        if time.monotonic() > deadline:
            sys.exit(f"Redis at {url} is not answering: {error}")
        time.sleep(0.2)
