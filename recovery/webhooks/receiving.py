"""Receiving a Stripe event: the row it becomes, stored once whatever the redeliveries.

The receiver (recovery/webhooks/receiver.py) calls `store_event` on a
connection of its own in autocommit: one statement per event.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Connection

from recovery.models import WebhookEvent, WebhookState, utcnow
from recovery.models.base import insert_ignoring_duplicates
from recovery.transactions.validation import has_control_characters


@dataclass(frozen=True)
class Received:
    stripe_event_id: str
    type: str
    created: bool  # False: a redelivery of an id we already hold


def _text(value: Any, limit: int) -> str | None:
    return value[:limit] if isinstance(value, str) else None


# The event's fields that become columns of their own (event_row), by where they are in the event.
_STORED_FIELDS = (("id",), ("type",), ("data", "object", "id"), ("api_version",), ("account",))


def unstorable_field(event: dict[str, Any]) -> str | None:
    """The first of the event's column fields that holds control characters, e.g. "data.object.id".

    NUL cannot be stored in PostgreSQL text, a lone surrogate in no encoding;
    no Stripe id or type holds any control character, so all are refused.
    """
    for path in _STORED_FIELDS:
        value: Any = event
        for key in path:
            value = value.get(key) if isinstance(value, dict) else None
        if isinstance(value, str) and has_control_characters(value):
            return ".".join(path)
    return None


def event_row(event: dict[str, Any]) -> dict[str, Any]:
    """The WebhookEvent columns for a verified event dict (verify_webhook checked its shape)."""
    created = event.get("created")
    obj = event["data"]["object"]
    return {
        "stripe_event_id": event["id"],
        "type": event["type"],
        "object_id": _text(obj.get("id"), 255),
        "api_version": _text(event.get("api_version"), 32),
        "livemode": bool(event.get("livemode")),
        "account": _text(event.get("account"), 255),
        "stripe_created_at": (
            datetime.fromtimestamp(created, UTC) if isinstance(created, int) and created > 0 else None
        ),
        "payload": event,
        "status": WebhookState.PENDING,
        "attempts": 0,
        "received_at": utcnow(),
    }


def store_event(connection: Connection, event: dict[str, Any]) -> Received:
    """Insert the event unless its id is already stored: one INSERT .. ON CONFLICT DO NOTHING.

    Safe to run twice or concurrently: the unique stripe_event_id decides, so a
    redelivery (or two deliveries racing) stores one row and changes nothing.
    """
    dialect = connection.dialect.name
    statement = _STORE_STATEMENTS.get(dialect)
    if statement is None:
        # Built once: values go in as parameters, so each event costs a cached statement, not a new one.
        statement = insert_ignoring_duplicates(connection, WebhookEvent, ["stripe_event_id"]).returning(
            WebhookEvent.id
        )
        _STORE_STATEMENTS[dialect] = statement
    new_id = connection.execute(statement, event_row(event)).scalar()
    return Received(event["id"], event["type"], created=new_id is not None)


_STORE_STATEMENTS: dict[str, Any] = {}
