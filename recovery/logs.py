"""Structured JSON logs: one event name per operation, a request id on every line."""

from __future__ import annotations

import logging
import re
import sys
import time
import uuid
from typing import Any

import structlog
from flask import Flask, g, request
from werkzeug.wrappers import Response

from recovery.config import settings

_REQUEST_ID = re.compile(r"^[A-Za-z0-9._-]{8,64}$")


def configure(level: str = "INFO") -> None:
    """Route structlog and the standard library through one JSON renderer."""
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    structlog.configure(
        # Below the level, an event is dropped before any processor works on it.
        processors=[
            structlog.stdlib.filter_by_level,
            *shared,
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[*shared, structlog.stdlib.ExtraAdder()],
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            structlog.processors.format_exc_info,
            structlog.processors.JSONRenderer(),
        ],
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # Werkzeug's own access lines would duplicate our request_finished event.
    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    logging.getLogger("alembic").setLevel(logging.WARNING)


def get_logger(name: str = "recovery") -> structlog.stdlib.BoundLogger:
    logger: structlog.stdlib.BoundLogger = structlog.get_logger(name)
    return logger


# URL parts that are credentials: a customer's link token opens their pay and
# unsubscribe pages, so it must not reach log files.
SECRET_VIEW_ARGS = frozenset({"token"})


def loggable_path() -> str:
    """The request's path, with the route's pattern in place of any secret part."""
    if request.url_rule is not None and SECRET_VIEW_ARGS & set(request.view_args or ()):
        return request.url_rule.rule
    return request.path


def bind_request_id(incoming: str) -> str:
    """The request's id (the caller's X-Request-ID if it looks like one), bound to every log line."""
    request_id = incoming if _REQUEST_ID.match(incoming) else uuid.uuid4().hex
    structlog.contextvars.clear_contextvars()
    structlog.contextvars.bind_contextvars(request_id=request_id)
    return request_id


def unbind_request_id() -> None:
    structlog.contextvars.clear_contextvars()


def init_app(app: Flask) -> None:
    configure(settings(app=app).log_level)
    log = get_logger("recovery.request")

    @app.before_request
    def start_request() -> None:
        g.request_id = bind_request_id(request.headers.get("X-Request-ID", ""))
        g.request_started = time.perf_counter()

    @app.after_request
    def log_request(response: Response) -> Response:
        response.headers["X-Request-ID"] = g.get("request_id", "")
        started = g.get("request_started")
        if started is not None and request.endpoint != "static":
            log.info(
                "request_finished",
                method=request.method,
                path=loggable_path(),
                status=response.status_code,
                duration_ms=round((time.perf_counter() - started) * 1000, 2),
            )
        return response

    @app.teardown_request
    def unbind(_exc: BaseException | None) -> None:
        unbind_request_id()
