"""Run the sandbox as a subprocess and drive its control API: for tests, demos and scripts.

with SandboxProcess(Path("/tmp/sandbox.sqlite3")) as sandbox:
    client = stripe.StripeClient(sandbox.api_key, base_addresses={"api": sandbox.base_url})
    ...
    sandbox.pay(session.id, "4242 4242 4242 4242")
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType
from typing import IO, Any

ROOT = Path(__file__).resolve().parents[1]


class SandboxError(RuntimeError):
    """The sandbox process did not start, or a control call failed."""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class SandboxProcess:
    """One `python -m stripe_sandbox` on a free port, over its own SQLite file."""

    def __init__(
        self,
        database: Path,
        *,
        api_key: str = "sk_test_sandbox",
        webhook_secret: str = "whsec_sandbox",
        webhook_retry_base_seconds: float = 1.0,
        port: int | None = None,
        env: Mapping[str, str] | None = None,
        startup_timeout: float = 15.0,
    ) -> None:
        self.database = Path(database)
        self.api_key = api_key
        self.webhook_secret = webhook_secret
        self.webhook_retry_base_seconds = webhook_retry_base_seconds
        self.port = port or free_port()
        self.extra_env = dict(env or {})
        self.startup_timeout = startup_timeout
        self.log_path = self.database.with_suffix(".log")
        self._process: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    # --- process ---

    def start(self) -> None:
        """Start the server and wait until it answers; raise SandboxError with its log if it does not."""
        env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
            "SANDBOX_HOST": "127.0.0.1",
            "SANDBOX_PORT": str(self.port),
            "SANDBOX_DATABASE": str(self.database),
            "SANDBOX_API_KEY": self.api_key,
            "SANDBOX_WEBHOOK_SECRET": self.webhook_secret,
            "SANDBOX_WEBHOOK_RETRY_BASE_SECONDS": str(self.webhook_retry_base_seconds),
            "SANDBOX_PUBLIC_URL": self.base_url,
            **self.extra_env,
        }
        self.database.parent.mkdir(parents=True, exist_ok=True)
        self._log = self.log_path.open("ab")
        self._process = subprocess.Popen(
            [sys.executable, "-m", "stripe_sandbox"],
            cwd=ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                break
            try:
                self._control("GET", "/_sandbox/health")
                return
            except (OSError, SandboxError):
                time.sleep(0.1)
        self.stop()
        raise SandboxError(f"no answer on {self.base_url}; log:\n{self.log()[-2000:]}")

    def stop(self) -> None:
        if self._process is not None:
            self._process.terminate()
            try:
                self._process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
            self._process = None
        if self._log is not None:
            self._log.close()
            self._log = None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def __enter__(self) -> SandboxProcess:
        self.start()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    # --- control API ---

    def _control(self, method: str, path: str, payload: dict[str, Any] | None = None) -> Any:
        data = json.dumps(payload).encode() if payload is not None else None
        request = urllib.request.Request(
            self.base_url + path, data=data, method=method, headers={"Content-Type": "application/json"}
        )
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                return json.loads(response.read())
        except urllib.error.HTTPError as error:
            with error:
                raise SandboxError(f"{method} {path}: HTTP {error.code} {error.read().decode()}") from None

    def reset(self) -> None:
        """Forget every object, key, runtime webhook endpoint, delivery, fault and clock offset."""
        self._control("POST", "/_sandbox/reset")

    def fault(
        self,
        status: int | None = None,
        count: int = 1,
        delay_ms: int | None = None,
        should_retry: bool | None = None,
    ) -> None:
        """Make the next `count` /v1 requests answer `status` and/or wait `delay_ms`."""
        spec: dict[str, Any] = {"count": count}
        if status is not None:
            spec["status"] = status
        if delay_ms is not None:
            spec["delay_ms"] = delay_ms
        if should_retry is not None:
            spec["should_retry"] = should_retry
        self._control("POST", "/_sandbox/faults", spec)

    def clear_faults(self) -> None:
        self._control("DELETE", "/_sandbox/faults")

    def add_webhook_endpoint(self, url: str, secret: str | None = None) -> None:
        """Deliver every later event to `url` too, signed with `secret` (default: the sandbox's)."""
        self._control(
            "POST", "/_sandbox/webhook_endpoints", {"url": url, "secret": secret or self.webhook_secret}
        )

    def pay(self, session_id: str, card: str = "4242424242424242", **fields: str) -> dict[str, Any]:
        """Pay a Checkout Session with a test card; return the session, or `{"error": ...}` on a decline."""
        body = urllib.parse.urlencode({"card": card, **fields}).encode()
        request = urllib.request.Request(
            f"{self.base_url}/v1/test_helpers/checkout/sessions/{session_id}/pay",
            data=body,
            method="POST",
            headers={"Authorization": f"Bearer {self.api_key}"},
        )
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                result: dict[str, Any] = json.loads(response.read())
        except urllib.error.HTTPError as error:
            with error:
                result = json.loads(error.read())
        return result

    def requests(self) -> list[dict[str, Any]]:
        """The /v1 requests received since the last reset, oldest first (method, path, key, status)."""
        found: list[dict[str, Any]] = self._control("GET", "/_sandbox/requests")["requests"]
        return found

    def deliveries(self) -> list[dict[str, Any]]:
        found: list[dict[str, Any]] = self._control("GET", "/_sandbox/deliveries")["deliveries"]
        return found

    def advance_clock(self, seconds: float) -> int:
        """Move the sandbox's clock forward (expiring due sessions); return its new unix time."""
        now: int = self._control("POST", "/_sandbox/clock", {"advance_seconds": seconds})["now"]
        return now
