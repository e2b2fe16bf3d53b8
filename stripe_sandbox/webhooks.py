"""Sign events like Stripe and deliver them to every endpoint from a background thread.

Deliveries are rows in SQLite, so a restart resumes them. They go out in the
order their events were created; a failed one (connection error or non-2xx)
waits `base * 2**(attempt-1)` seconds, capped at an hour, for up to
`webhook_max_attempts` tries, while later ones proceed — Stripe does not
guarantee order either.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from typing import Any

from stripe_sandbox.config import Config
from stripe_sandbox.store import Store

log = logging.getLogger("stripe_sandbox.webhooks")

MAX_RETRY_DELAY = 3600.0
TIMEOUT_SECONDS = 10
# The background thread also runs periodic chores (session expiry) this often.
TICK_SECONDS = 1.0


def sign(payload: str, secret: str, timestamp: int) -> str:
    """Return the `Stripe-Signature` header for this payload: `t=<unix>,v1=<hmac-sha256 hex>`."""
    mac = hmac.new(secret.encode(), f"{timestamp}.{payload}".encode(), hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={mac}"


def endpoints(config: Config, store: Store) -> list[tuple[str, str]]:
    """Every endpoint an event goes to: the configured URLs, then those added at runtime."""
    configured = [(url, config.webhook_secret) for url in config.webhook_urls]
    added = [(url, secret) for url, secret in store.endpoints() if url not in config.webhook_urls]
    return configured + added


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    # Stripe counts a 3xx answer as a failed delivery; it does not follow it.
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


_opener = urllib.request.build_opener(_NoRedirect)


def post(url: str, payload: str, signature: str) -> tuple[int | None, str | None]:
    """POST one event; return (status, error) — status None when no answer came."""
    request = urllib.request.Request(
        url,
        data=payload.encode(),
        method="POST",
        headers={
            "Content-Type": "application/json; charset=utf-8",
            "Stripe-Signature": signature,
            "User-Agent": "Stripe/1.0 (+https://stripe.com/docs/webhooks)",
        },
    )
    try:
        with _opener.open(request, timeout=TIMEOUT_SECONDS) as response:
            response.read()
            return int(response.status), None
    except urllib.error.HTTPError as error:
        with error:
            return error.code, f"HTTP {error.code}"
    except (OSError, ValueError) as error:
        return None, f"{type(error).__name__}: {error}"


class Dispatcher:
    """The delivery thread: sends due deliveries, then sleeps until the next one or the next tick."""

    def __init__(self, config: Config, store: Store, chore: Callable[[], None] | None = None) -> None:
        self.config = config
        self.store = store
        self.chore = chore
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="sandbox-webhooks", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread:
            self._thread.join(timeout=TIMEOUT_SECONDS + 1)

    def wake(self) -> None:
        self._wake.set()

    def _run(self) -> None:
        last_chore = 0.0
        while not self._stop.is_set():
            try:
                if self.chore and time.monotonic() - last_chore >= TICK_SECONDS:
                    last_chore = time.monotonic()
                    self.chore()
                wait = self.deliver_due()
            except Exception:  # the thread must outlive any one bad delivery or chore
                log.exception("webhook thread error")
                wait = TICK_SECONDS
            self._wake.wait(timeout=min(wait, TICK_SECONDS))
            self._wake.clear()

    def deliver_due(self) -> float:
        """Deliver every due delivery; return seconds until the next one is due."""
        while not self._stop.is_set():
            due = self.store.next_delivery()
            if due is None:
                return TICK_SECONDS
            seq, event_id, url, secret, attempts, next_at = due
            if next_at > time.time():
                return next_at - time.time()
            self._attempt(seq, event_id, url, secret, attempts)
        return 0.0

    def _attempt(self, seq: int, event_id: str, url: str, secret: str, attempts: int) -> None:
        event = self.store.get(event_id, "event")
        if event is None:  # wiped by a reset meanwhile
            self.store.record_attempt(
                seq, state="failed", attempts=attempts, next_at=0, status=None, error="event gone"
            )
            return
        payload = json.dumps(event, indent=2)
        # Signed with the real time, not the sandbox clock: receivers check it against theirs.
        status, error = post(url, payload, sign(payload, secret, int(time.time())))
        attempts += 1
        if status is not None and 200 <= status < 300:
            self.store.record_attempt(
                seq, state="delivered", attempts=attempts, next_at=0, status=status, error=None
            )
            self._settled(event_id)
            log.info("webhook %s %s -> %s (attempt %d)", event["type"], url, status, attempts)
            return
        if attempts >= self.config.webhook_max_attempts:
            state, next_at = "failed", 0.0
            self._settled(event_id)
        else:
            delay = min(self.config.webhook_retry_base_seconds * 2 ** (attempts - 1), MAX_RETRY_DELAY)
            state, next_at = "pending", time.time() + delay
        self.store.record_attempt(
            seq, state=state, attempts=attempts, next_at=next_at, status=status, error=error
        )
        log.warning("webhook %s %s failed: %s (attempt %d, %s)", event["type"], url, error, attempts, state)

    def _settled(self, event_id: str) -> None:
        with self.store.transaction():
            event = self.store.get(event_id, "event")
            if event is not None:
                event["pending_webhooks"] = max(event["pending_webhooks"] - 1, 0)
                self.store.put(event)
