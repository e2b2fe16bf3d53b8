"""Stripe's webhook signature: check it over the raw body, and the shape of what was signed."""

from __future__ import annotations

import json
import re
import time
from typing import Any

import stripe


class WebhookRejected(Exception):
    """A webhook request we refuse: `reason` is a short code for logs, `message` the answer body."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


def _signature_timestamp(header: str) -> int | None:
    for item in header.split(","):
        key, _, value = item.strip().partition("=")
        if key == "t":
            try:
                return int(value)
            except ValueError:
                return None
    return None


def verify_webhook(
    payload: bytes, header: str | None, secrets: list[str], tolerance: int, *, now: float | None = None
) -> dict[str, Any]:
    """Check the `Stripe-Signature` header over the raw body and return the event as a plain dict.

    Every secret is tried (rotation: Stripe signs with the old and new secret,
    one `v1` each, while both are live). Timestamps more than `tolerance`
    seconds old or in the future are refused: a captured request cannot be
    replayed later. `json.loads`, not `construct_event`: building StripeObjects
    costs ~100x the HMAC and processing works on the stored dict anyway.
    """
    if not header:
        raise WebhookRejected("missing_signature", "missing signature")
    if tolerance <= 0:
        raise ValueError("tolerance must be positive")
    if not secrets:
        raise WebhookRejected("not_configured", "webhook secret not configured")
    timestamp = _signature_timestamp(header)
    if timestamp is None:
        raise WebhookRejected("malformed_signature", "invalid signature")
    current = time.time() if now is None else now
    if timestamp > current + tolerance:
        raise WebhookRejected("timestamp_in_future", "invalid signature: timestamp outside the tolerance")
    if timestamp < current - tolerance:
        raise WebhookRejected("timestamp_too_old", "invalid signature: timestamp outside the tolerance")
    for secret in secrets:
        try:
            stripe.WebhookSignature.verify_header(payload, header, secret, tolerance)
        except stripe.SignatureVerificationError:
            continue
        except UnicodeDecodeError:
            raise WebhookRejected("not_utf8", "invalid body: not UTF-8") from None
        break
    else:
        raise WebhookRejected("bad_signature", "invalid signature")
    try:
        event = json.loads(payload)
    except ValueError:
        raise WebhookRejected("not_json", "invalid body: not JSON") from None
    if not _looks_like_event(event):
        raise WebhookRejected("not_an_event", "invalid body: not a Stripe event")
    return event  # type: ignore[no-any-return]


def is_event_id(value: str) -> bool:
    """Whether `value` has the shape of a Stripe event id (any of the shapes Stripe uses)."""
    return _EVENT_ID.fullmatch(value) is not None


# Stripe's event ids in every shape it uses: evt_1NG8Du2eZvKYlo2CUI79vXWy,
# evt_3..., thin events' evt_test_65R..., up to the 255 characters Stripe allows
# an id (and our column holds). Letters, digits and underscores only.
_EVENT_ID = re.compile(r"evt_[A-Za-z0-9_]{1,251}")


def _looks_like_event(event: Any) -> bool:
    return (
        isinstance(event, dict)
        and event.get("object") == "event"
        and isinstance(event.get("id"), str)
        and isinstance(event.get("type"), str)
        and 0 < len(event["type"]) <= 100
        and isinstance(event.get("data"), dict)
        and isinstance(event["data"].get("object"), dict)
    )
