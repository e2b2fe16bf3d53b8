"""Redis and the RQ queue, created lazily from `REDIS_URL`."""

from __future__ import annotations

from typing import Any

from flask import Flask, current_app
from redis import Redis
from rq import Queue

# Redis calls from a web request must fail fast rather than hang the page.
_TIMEOUTS = {"socket_connect_timeout": 2, "socket_timeout": 5}


def init_app(app: Flask) -> None:
    app.extensions["redis"] = Redis.from_url(app.config["REDIS_URL"], **_TIMEOUTS)


def redis_connection(app: Flask | None = None) -> Redis:
    return (app or current_app).extensions["redis"]  # type: ignore[no-any-return]


def get_queue(name: str = "default", app: Flask | None = None) -> Queue:
    return Queue(name, connection=redis_connection(app))


def enqueue(func: Any, *args: Any, **kwargs: Any) -> Any:
    """Enqueue `func` on the default queue; call only after the commit that made it true."""
    return get_queue().enqueue(func, *args, **kwargs)
