"""Jinja filters and globals shared by every page."""

from __future__ import annotations

from datetime import datetime
from functools import lru_cache
from typing import Any
from zoneinfo import ZoneInfo

from flask import Flask, request, url_for
from markupsafe import Markup, escape

from recovery import declines, money
from recovery.models.transaction import STATUS_LABELS


def format_datetime(value: datetime | None, tz: str = "UTC") -> str:
    """A moment for staff, always with its zone: "7 Dec 2026, 17:40 UTC".

    The month is a word so that no reader swaps day and month; the zone is
    named on every value because a bare time is read as local time.
    """
    if value is None:
        return "—"
    local = value.astimezone(ZoneInfo(tz))
    return f"{local.day} {local:%b %Y, %H:%M} {local.tzname() or tz}"


def url_with(**changes: Any) -> str:
    """The current page's URL with some query arguments changed (None drops one)."""
    args = request.args.to_dict()
    for key, value in changes.items():
        if value is None or value == "":
            args.pop(key, None)
        else:
            args[key] = value
    assert request.endpoint is not None
    values: dict[str, Any] = {**(request.view_args or {}), **args}
    return url_for(request.endpoint, **values)


def row_id_arg(name: str) -> int | None:
    """A page's row-id query argument ("before=123"); None unless it fits a bigint column."""
    raw = request.args.get(name, "")
    return int(raw) if raw.isascii() and raw.isdigit() and len(raw) < 19 else None


def status_badge(status: str) -> Markup:
    """A status as a badge; a filter because the list shows fifty and a macro call costs twice as much."""
    text = escape(status)
    return Markup(f'<span class="status status-{text}">{text}</span>')


# Message statuses in staff words, with the sentence a tooltip gives. "Sent" read as
# "the customer has it"; all we know at that point is that the provider took it.
MESSAGE_STATUSES = {
    "queued": ("Queued", "Waiting for its send time."),
    "sending": ("Sending", "Being handed to the email or SMS provider now."),
    "sent": ("Handed to provider", "The provider accepted it; delivery is shown when they confirm."),
    "delivered": ("Delivered", "The provider confirmed delivery to the customer."),
    "failed": ("Failed", "It could not be handed to the provider; see the error."),
    "undeliverable": ("Undeliverable", "The provider could not deliver it to this address or number."),
    "cancelled": ("Cancelled", "Not sent: the recovery ended first."),
    "unknown": (
        "Unknown, check the provider",
        "The sender stopped while the provider had it: it may have gone out.",
    ),
}


KEPT_IN_OUTBOX = (
    "Kept in the outbox",
    "No email or SMS provider is configured, so the outbox kept it; the customer did not get it.",
)


def message_status(status: str, provider: str | None = None) -> Markup:
    """A message's status as a badge in staff words, its meaning in the tooltip."""
    label, meaning = MESSAGE_STATUSES.get(status, (status.capitalize(), ""))
    if status == "sent" and provider == "outbox":
        label, meaning = KEPT_IN_OUTBOX
    return Markup('<span class="status status-{} status-words" title="{}">{}</span>').format(
        status, meaning, label
    )


def message_status_meaning(status: str, provider: str | None = None) -> str:
    """What a message's status means, as one sentence for the page (the badge's tooltip)."""
    if status == "sent" and provider == "outbox":
        return KEPT_IN_OUTBOX[1]
    return MESSAGE_STATUSES.get(status, ("", ""))[1]


def _transaction_badge(status: str) -> Markup:
    text = escape(STATUS_LABELS.get(status, status))
    return Markup(f'<span class="status status-{escape(status)}">{text}</span>')


# Built once: the list shows fifty of these a page, from a handful of statuses.
_TRANSACTION_BADGES = {status: _transaction_badge(status) for status in STATUS_LABELS}


def transaction_badge(status: str) -> Markup:
    """A transaction's status as a badge in staff's words: `cancelled` reads "closed" (see Transaction)."""
    return _TRANSACTION_BADGES.get(status) or _transaction_badge(status)


@lru_cache(maxsize=512)
def failure_cell(code: str) -> Markup:
    """A decline code as the list shows it: its title, its sentence and code on hover.

    Cached: fifty rows a page share a few dozen codes.
    """
    decline = declines.describe(code)
    assert decline is not None  # a code is given
    return Markup(f'<span title="{escape(decline.sentence)} ({escape(code)})">{escape(decline.title)}</span>')


def url_prefix(endpoint: str, argument: str) -> str:
    """The URL of `endpoint` up to `argument`, which ends it: /transactions/ for a detail page.

    For links built in a long loop: `{{ prefix }}{{ t.id }}` costs a fraction of
    a url_for per row (a third of a fifty-row page went there).
    """
    values: dict[str, Any] = {argument: 0}
    url = url_for(endpoint, **values)
    if not url.endswith("/0"):
        raise ValueError(f"{endpoint}'s URL does not end in {argument}: {url}")
    return url[:-1]


def init_app(app: Flask) -> None:
    app.jinja_env.filters["money"] = money.format_amount
    app.jinja_env.filters["dt"] = format_datetime
    app.jinja_env.filters["status_badge"] = status_badge
    app.jinja_env.filters["transaction_badge"] = transaction_badge
    app.jinja_env.filters["transaction_status"] = lambda status: STATUS_LABELS.get(status, status)
    app.jinja_env.filters["message_status"] = message_status
    app.jinja_env.filters["message_status_meaning"] = message_status_meaning
    app.jinja_env.filters["decline"] = declines.describe
    app.jinja_env.filters["failure_cell"] = failure_cell
    app.jinja_env.globals["url_with"] = url_with
    app.jinja_env.globals["url_prefix"] = url_prefix
    app.jinja_env.add_extension("jinja2.ext.do")
    app.jinja_env.trim_blocks = True
    app.jinja_env.lstrip_blocks = True
