"""The sandbox's settings, read once from the environment."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

# The API version the sandbox "account" is pinned to; events carry it.
API_VERSION = "2026-10-28.endive"


@dataclass(frozen=True)
class Config:
    host: str = "127.0.0.1"
    port: int = 12111
    database: str = "instance/stripe-sandbox.sqlite3"
    api_key: str = "sk_test_sandbox"
    webhook_urls: tuple[str, ...] = ()
    webhook_secret: str = "whsec_sandbox"
    public_url: str = "http://127.0.0.1:12111"
    webhook_retry_base_seconds: float = 1.0
    webhook_max_attempts: int = 8
    faults: list[dict[str, Any]] = field(default_factory=list)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Config:
        env = os.environ if env is None else env
        port = int(env.get("SANDBOX_PORT") or 12111)
        faults = json.loads(env["SANDBOX_FAULTS"]) if env.get("SANDBOX_FAULTS") else []
        return cls(
            host=env.get("SANDBOX_HOST") or "127.0.0.1",
            port=port,
            database=env.get("SANDBOX_DATABASE") or "instance/stripe-sandbox.sqlite3",
            api_key=env.get("SANDBOX_API_KEY") or "sk_test_sandbox",
            webhook_urls=tuple(
                u.strip() for u in env.get("SANDBOX_WEBHOOK_URLS", "").split(",") if u.strip()
            ),
            webhook_secret=env.get("SANDBOX_WEBHOOK_SECRET") or "whsec_sandbox",
            public_url=(env.get("SANDBOX_PUBLIC_URL") or f"http://127.0.0.1:{port}").rstrip("/"),
            webhook_retry_base_seconds=float(env.get("SANDBOX_WEBHOOK_RETRY_BASE_SECONDS") or 1.0),
            faults=faults if isinstance(faults, list) else [faults],
        )
