"""Fault injection: make the next API requests fail or slow down, as Stripe sometimes does.

A fault is `{"status": 500, "count": 2}` (answer the next two /v1 requests with
that status), `{"delay_ms": 300, "count": 3}` (answer them late), or both at
once. Faults queue up in the order they were added. stripe-python retries a 500
(and a 409) on its own when `max_network_retries` > 0; it retries a 429 only
because the answer carries `Stripe-Should-Retry: true` — set
`"should_retry": false` on the fault to see a 429 surface as `RateLimitError`
even with retries on.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any


class FaultSpecError(ValueError):
    """A fault description the sandbox cannot act on."""


@dataclass
class Fault:
    status: int | None
    delay_ms: int
    remaining: int
    should_retry: bool | None

    def response(self) -> tuple[dict[str, Any], dict[str, str]]:
        """Return the error body and headers Stripe sends with this status."""
        assert self.status is not None
        headers: dict[str, str] = {}
        if self.should_retry is not None:
            headers["Stripe-Should-Retry"] = "true" if self.should_retry else "false"
        if self.status == 429:
            error = {
                "type": "invalid_request_error",
                "code": "rate_limit",
                "message": "Request rate limit exceeded. You can learn more about rate limits here "
                "https://stripe.com/docs/rate-limits.",
            }
        elif self.status == 409:
            error = {
                "type": "invalid_request_error",
                "code": "lock_timeout",
                "message": "This object cannot be accessed right now because another API request or "
                "Stripe process is currently accessing it.",
            }
        elif self.status >= 500:
            error = {
                "type": "api_error",
                "message": "Something went wrong on Stripe's end. (Injected by the sandbox.)",
            }
        else:
            error = {"type": "invalid_request_error", "message": f"Injected fault: HTTP {self.status}."}
        return {"error": error}, headers


def parse(spec: Mapping[str, Any]) -> Fault:
    """Validate a fault description from JSON."""
    status = spec.get("status")
    delay_ms = spec.get("delay_ms") or 0
    count = spec.get("count", 1)
    should_retry = spec.get("should_retry", True if status == 429 else None)
    if status is not None and (not isinstance(status, int) or not 400 <= status <= 599):
        raise FaultSpecError("status must be an HTTP error status (400-599)")
    if not isinstance(delay_ms, int) or not 0 <= delay_ms <= 60_000:
        raise FaultSpecError("delay_ms must be an integer from 0 to 60000")
    if not isinstance(count, int) or count < 1:
        raise FaultSpecError("count must be a positive integer")
    if status is None and not delay_ms:
        raise FaultSpecError("give a status, a delay_ms, or both")
    if should_retry is not None and not isinstance(should_retry, bool):
        raise FaultSpecError("should_retry must be true, false or null")
    return Fault(status=status, delay_ms=delay_ms, remaining=count, should_retry=should_retry)


class Faults:
    """The queue of pending faults, shared by all request threads."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._queue: deque[Fault] = deque()

    def add(self, spec: Mapping[str, Any]) -> Fault:
        fault = parse(spec)
        with self._lock:
            self._queue.append(fault)
        return fault

    def clear(self) -> None:
        with self._lock:
            self._queue.clear()

    def take(self) -> Fault | None:
        """Consume one use of the oldest fault, or return None when none is pending."""
        with self._lock:
            if not self._queue:
                return None
            fault = self._queue[0]
            fault.remaining -= 1
            if fault.remaining <= 0:
                self._queue.popleft()
            return fault

    def pending(self) -> list[dict[str, Any]]:
        with self._lock:
            return [asdict(fault) for fault in self._queue]
