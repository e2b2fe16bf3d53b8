"""Configuration: defaults, then `instance/config.py`, then the environment.

Every setting can come from an environment variable of the same name; the
environment wins so that a Procfile deployment needs no file on disk.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any, Protocol, TypeVar, overload
from urllib.parse import urlsplit

from flask import Flask, current_app

DEFAULT_SECRET_KEY = "dev-insecure-change-me"

# How long a staff sign-in lasts with and without "keep me signed in".
REMEMBER_ME_DURATION = timedelta(days=30)
SIGN_IN_DURATION = timedelta(hours=12)

# Environments: "development" (the demo), "testing" (pytest), "production".
# Production is the default so that a deployment which forgets APP_ENV is strict.
ENVIRONMENTS = ("development", "testing", "production")


class ConfigError(RuntimeError):
    """The configuration cannot run safely; the message says what to change."""


_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


def _bool(key: str, value: str) -> bool:
    word = value.strip().lower()
    if word not in _TRUE | _FALSE:
        raise ConfigError(f"{key} must be true or false (1/0, yes/no, on/off); got {value!r}.")
    return word in _TRUE


def _int(key: str, value: str) -> int:
    try:
        return int(value.strip())
    except ValueError:
        raise ConfigError(f"{key} must be a whole number; got {value!r}.") from None


def defaults(instance_path: str) -> dict[str, Any]:
    """Return the built-in defaults (SPEC.md's Configuration).

    One entry per setting, each with why it is what it is: long because the
    settings are many, not because it does two things.
    """
    sqlite_path = Path(instance_path) / "recovery.sqlite3"
    return {
        "APP_ENV": "production",
        "SECRET_KEY": DEFAULT_SECRET_KEY,
        # Earlier keys, comma-separated, still accepted after a rotation (Flask 3.1's
        # sessions, and the signed success addresses of Payment Links at Stripe).
        "SECRET_KEY_FALLBACKS": "",
        "DATABASE_URL": f"sqlite:///{sqlite_path}",
        "REDIS_URL": "redis://127.0.0.1:6379/0",
        "BASE_URL": "http://127.0.0.1:5000",
        "ALLOWED_HOSTS": "",
        "PROXY_FIX": 0,
        "STRIPE_SECRET_KEY": "",
        "STRIPE_WEBHOOK_SECRET": "",
        # Empty: Stripe itself. The demo and the tests point this at the sandbox.
        "STRIPE_API_BASE": "",
        "STRIPE_CHECKOUT_EXPIRES_MINUTES": 24 * 60,
        "STRIPE_TIMEOUT_SECONDS": 10,
        "STRIPE_MAX_NETWORK_RETRIES": 2,
        # Webhooks (docs/webhooks.md). Stripe signs with a 300 s tolerance in mind.
        "STRIPE_WEBHOOK_TOLERANCE_SECONDS": 300,
        "STRIPE_WEBHOOK_MAX_BYTES": 1024 * 1024,
        # Backoff of a failing processing job (RQ Retry), seconds between tries.
        "STRIPE_WEBHOOK_RETRY_SECONDS": "30,120,600,1800,7200",
        # Pending events one processing job applies (its own first); 1: a job per event.
        "STRIPE_WEBHOOK_BATCH_SIZE": 50,
        # Open sessions older than this are re-read from Stripe by the reconciliation job.
        "STRIPE_RECONCILE_AFTER_MINUTES": 10,
        # The webhook sweeper runs this often and enqueues events pending at least this long.
        "STRIPE_WEBHOOK_SWEEP_SECONDS": 60,
        "MAIL_SERVER": "",
        "MAIL_PORT": 25,
        "MAIL_USE_TLS": False,
        "MAIL_USE_SSL": False,
        # A stalled SMTP server must not hold a send worker for ever (smtplib waits without limit).
        "MAIL_TIMEOUT_SECONDS": 30,
        # A CA bundle (PEM) to verify the SMTP server with instead of the system's, e.g. a private relay's.
        "MAIL_SSL_CA_FILE": "",
        "MAIL_USERNAME": None,
        "MAIL_PASSWORD": None,
        "MAIL_DEFAULT_SENDER": "Recovery <no-reply@localhost>",
        # Emails per SMTP connection before the Postman reconnects (providers cap it); 1: one each.
        "MAIL_MESSAGES_PER_CONNECTION": 100,
        # Attempts one send job handles, over one SMTP connection and three commits.
        "SEND_BATCH_SIZE": 50,
        "TWILIO_ACCOUNT_SID": "",
        "TWILIO_AUTH_TOKEN": "",
        "TWILIO_FROM_NUMBER": "",
        "TWILIO_MESSAGING_SERVICE_SID": "",
        # Empty: Twilio itself. The tests point this at a local fake.
        "TWILIO_API_BASE": "",
        # Twilio drops an SMS still queued after this long: no stale reminder hours later.
        "TWILIO_VALIDITY_SECONDS": 4 * 3600,
        "TWILIO_TIMEOUT_SECONDS": 10,
        "LOGIN_FAILURES_PER_MINUTE": 5,
        # Success pages of Payment Links read the session from Stripe: per client address.
        "SUCCESS_LOOKUPS_PER_MINUTE": 20,
        "CSV_MAX_BYTES": 20 * 1024 * 1024,
        "CSV_INLINE_MAX_ROWS": 2000,
        "CSV_CHUNK_ROWS": 5000,
        "LOG_LEVEL": "INFO",
        "RQ_QUEUES": "default",
        # How often a worker with the scheduler checks that the periodic jobs are placed and a
        # scheduler runs (Redis may have come back empty); idle workers wake this often.
        "WORKER_CHECK_SECONDS": 30,
        # Compiled message catalogues (<locale>/LC_MESSAGES/messages.mo); empty: recovery/translations.
        "TRANSLATIONS_DIR": "",
    }


_INT_KEYS = {
    "MAIL_PORT",
    "MAIL_TIMEOUT_SECONDS",
    "MAIL_MESSAGES_PER_CONNECTION",
    "SEND_BATCH_SIZE",
    "STRIPE_WEBHOOK_BATCH_SIZE",
    "PROXY_FIX",
    "LOGIN_FAILURES_PER_MINUTE",
    "SUCCESS_LOOKUPS_PER_MINUTE",
    "CSV_MAX_BYTES",
    "CSV_INLINE_MAX_ROWS",
    "CSV_CHUNK_ROWS",
    "STRIPE_CHECKOUT_EXPIRES_MINUTES",
    "STRIPE_TIMEOUT_SECONDS",
    "STRIPE_MAX_NETWORK_RETRIES",
    "STRIPE_WEBHOOK_TOLERANCE_SECONDS",
    "STRIPE_WEBHOOK_MAX_BYTES",
    "STRIPE_RECONCILE_AFTER_MINUTES",
    "STRIPE_WEBHOOK_SWEEP_SECONDS",
    "WORKER_CHECK_SECONDS",
    "TWILIO_VALIDITY_SECONDS",
    "TWILIO_TIMEOUT_SECONDS",
}
_BOOL_KEYS = {"MAIL_USE_TLS", "MAIL_USE_SSL"}


def load(instance_path: str, overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """Build the effective configuration; `overrides` (tests) win over everything."""
    config = defaults(instance_path)
    instance_file = Path(instance_path) / "config.py"
    if instance_file.exists():
        namespace: dict[str, Any] = {}
        exec(compile(instance_file.read_text(), str(instance_file), "exec"), namespace)
        config.update({k: v for k, v in namespace.items() if k.isupper()})
    for key in list(config):
        raw = os.environ.get(key)
        if raw is None:
            continue
        if key in _INT_KEYS:
            config[key] = _int(key, raw)
        elif key in _BOOL_KEYS:
            config[key] = _bool(key, raw)
        else:
            config[key] = raw
    config.update(overrides or {})
    return derive(config)


# The `flask` command's own options that take a value (`flask --app wsgi db check`).
_FLASK_VALUE_OPTIONS = frozenset({"-A", "--app", "-e", "--env-file"})


def _schema_command(argv: list[str] | None = None) -> bool:
    """Whether this process is `flask … db …` (upgrade, check, migrate), which reads no secret.

    The SECRET_KEY refusal guards the processes that serve requests; the
    release phase's upgrade and a models-against-migrations check need only
    the database. Flask loads the app before it resolves the command, so the
    command line is the only place that says which one runs.
    """
    argv = sys.argv if argv is None else argv
    program = Path(argv[0]) if argv else Path()
    if program.name != "flask" and not (program.name == "__main__.py" and program.parent.name == "flask"):
        return False
    args = iter(argv[1:])
    for arg in args:
        if arg in _FLASK_VALUE_OPTIONS:
            next(args, None)
        elif not arg.startswith("-"):
            return arg == "db"
    return False


def derive(config: dict[str, Any]) -> dict[str, Any]:
    """Fill in the Flask and extension settings that follow from ours, and validate."""
    env = config["APP_ENV"]
    if env not in ENVIRONMENTS:
        raise ConfigError(f"APP_ENV must be one of {', '.join(ENVIRONMENTS)}; got {env!r}.")
    if env == "production" and config["SECRET_KEY"] in ("", DEFAULT_SECRET_KEY) and not _schema_command():
        raise ConfigError(
            "Refusing to start: SECRET_KEY is unset or the built-in development default. "
            "Set SECRET_KEY to a long random value (python -c 'import secrets; "
            "print(secrets.token_hex(32))') or run with APP_ENV=development."
        )
    _check_stripe(config)
    fallbacks = config["SECRET_KEY_FALLBACKS"]
    words = fallbacks if isinstance(fallbacks, list | tuple) else str(fallbacks).split(",")
    config["SECRET_KEY_FALLBACKS"] = [str(w).strip() for w in words if str(w).strip()]
    secure = env == "production"
    database_url = config["DATABASE_URL"]
    if database_url.startswith("postgres://"):  # Heroku-style URLs
        database_url = "postgresql://" + database_url[len("postgres://") :]
    if database_url.startswith("postgresql://"):
        database_url = "postgresql+psycopg://" + database_url[len("postgresql://") :]
    config["SQLALCHEMY_DATABASE_URI"] = database_url
    config["TESTING"] = env == "testing"
    config["DEBUG"] = False
    config["SESSION_COOKIE_HTTPONLY"] = True
    config["SESSION_COOKIE_SAMESITE"] = "Lax"
    config["SESSION_COOKIE_SECURE"] = secure
    config["REMEMBER_COOKIE_HTTPONLY"] = True
    config["REMEMBER_COOKIE_SAMESITE"] = "Lax"
    config["REMEMBER_COOKIE_SECURE"] = secure
    # Staff sign-ins (recovery/auth/logins.py): "keep me signed in" lasts 30 days,
    # the cookie and its server-side sign-in alike, from sign-in (not renewed by
    # use); otherwise the browser session, and 12 hours at most.
    config["REMEMBER_COOKIE_DURATION"] = REMEMBER_ME_DURATION
    config["REMEMBER_COOKIE_REFRESH_EACH_REQUEST"] = False
    config["SIGN_IN_DURATION"] = SIGN_IN_DURATION
    config["PREFERRED_URL_SCHEME"] = urlsplit(config["BASE_URL"]).scheme or "http"
    config["MAX_CONTENT_LENGTH"] = config["CSV_MAX_BYTES"] + 64 * 1024
    hosts = [h.strip() for h in str(config["ALLOWED_HOSTS"]).split(",") if h.strip()]
    base_host = urlsplit(config["BASE_URL"]).hostname
    if base_host and base_host not in hosts:
        hosts.append(base_host)
    if env != "production":
        hosts += [h for h in ("127.0.0.1", "localhost") if h not in hosts]
    config["TRUSTED_HOSTS"] = hosts
    config["RATELIMIT_STORAGE_URI"] = config["REDIS_URL"]
    # A moving window: "the 6th failure within any minute" is refused. A fixed
    # window would let 5 failures at the end of one window and 5 more at the
    # start of the next through.
    config["RATELIMIT_STRATEGY"] = "moving-window"
    config["RATELIMIT_IN_MEMORY_FALLBACK_ENABLED"] = True
    config["RATELIMIT_SWALLOW_ERRORS"] = True
    config["RATELIMIT_HEADERS_ENABLED"] = True
    config["RATELIMIT_KEY_PREFIX"] = "recovery-limits"
    config["MAIL_SUPPRESS_SEND"] = not config["MAIL_SERVER"]
    return config


def _check_stripe(config: dict[str, Any]) -> None:
    # Stripe's own limits: a Checkout Session lives 30 minutes to 24 hours.
    minutes = int(config["STRIPE_CHECKOUT_EXPIRES_MINUTES"])
    if not 30 <= minutes <= 24 * 60:
        raise ConfigError(f"STRIPE_CHECKOUT_EXPIRES_MINUTES must be 30 to 1440 (24 h); got {minutes}.")
    # A worker or request must never hang on Stripe for long: 10 s per try at most.
    timeout = int(config["STRIPE_TIMEOUT_SECONDS"])
    if not 1 <= timeout <= 10:
        raise ConfigError(f"STRIPE_TIMEOUT_SECONDS must be 1 to 10; got {timeout}.")
    retries = int(config["STRIPE_MAX_NETWORK_RETRIES"])
    if not 0 <= retries <= 5:
        raise ConfigError(f"STRIPE_MAX_NETWORK_RETRIES must be 0 to 5; got {retries}.")
    _check_webhooks(config)


def _check_webhooks(config: dict[str, Any]) -> None:
    # 0 would make stripe-python skip the timestamp check: every captured request replayable forever.
    tolerance = int(config["STRIPE_WEBHOOK_TOLERANCE_SECONDS"])
    if not 1 <= tolerance <= 3600:
        raise ConfigError(
            f"STRIPE_WEBHOOK_TOLERANCE_SECONDS must be 1 to 3600 (Stripe's is 300); got {tolerance}."
        )
    max_bytes = int(config["STRIPE_WEBHOOK_MAX_BYTES"])
    if not 64 * 1024 <= max_bytes <= 16 * 1024 * 1024:
        raise ConfigError(f"STRIPE_WEBHOOK_MAX_BYTES must be 65536 to 16777216; got {max_bytes}.")
    raw = config["STRIPE_WEBHOOK_RETRY_SECONDS"]
    words = raw if isinstance(raw, list | tuple) else str(raw).split(",")
    try:
        intervals = [int(str(w).strip()) for w in words if str(w).strip()]
    except ValueError:
        intervals = []
    if not intervals or any(i < 0 for i in intervals):
        raise ConfigError(
            "STRIPE_WEBHOOK_RETRY_SECONDS must be a comma-separated list of seconds, "
            f"e.g. 30,120,600; got {raw!r}."
        )
    config["STRIPE_WEBHOOK_RETRY_INTERVALS"] = intervals
    for key in ("STRIPE_RECONCILE_AFTER_MINUTES", "LOGIN_FAILURES_PER_MINUTE", "SUCCESS_LOOKUPS_PER_MINUTE"):
        # A rate limit of 0 would refuse every request it guards.
        if int(config[key]) < 1:
            raise ConfigError(f"{key} must be at least 1.")


@dataclass(frozen=True)
class Settings:
    """The typed settings of the app's plumbing (queue, worker, sweepers, imports, logs).

    A feature with settings of its own keeps its own dataclass (StripeSettings,
    MessagingSettings); `settings(kind)` builds any of them once per app.
    """

    app_env: str
    base_url: str
    database_uri: str
    redis_url: str
    # Reverse proxies in front of the app whose X-Forwarded-* headers are believed (0: none).
    proxy_hops: int
    trusted_hosts: tuple[str, ...]
    queues: tuple[str, ...]
    worker_check_seconds: int
    send_batch_size: int
    webhook_sweep_seconds: int
    webhook_batch_size: int
    webhook_retry_intervals: tuple[int, ...]
    reconcile_after_minutes: int
    csv_max_bytes: int
    csv_chunk_rows: int
    log_level: str

    @property
    def is_production(self) -> bool:
        return self.app_env == "production"

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> Settings:
        return cls(
            app_env=str(config["APP_ENV"]),
            base_url=str(config["BASE_URL"]),
            database_uri=str(config["SQLALCHEMY_DATABASE_URI"]),
            proxy_hops=int(config["PROXY_FIX"] or 0),
            trusted_hosts=tuple(config["TRUSTED_HOSTS"] or ()),
            redis_url=str(config["REDIS_URL"]),
            queues=tuple(name.strip() for name in str(config["RQ_QUEUES"]).split(",") if name.strip()),
            worker_check_seconds=int(config["WORKER_CHECK_SECONDS"]),
            send_batch_size=max(1, int(config["SEND_BATCH_SIZE"])),
            webhook_sweep_seconds=max(1, int(config["STRIPE_WEBHOOK_SWEEP_SECONDS"])),
            webhook_batch_size=int(config["STRIPE_WEBHOOK_BATCH_SIZE"]),
            webhook_retry_intervals=tuple(config["STRIPE_WEBHOOK_RETRY_INTERVALS"]),
            reconcile_after_minutes=int(config["STRIPE_RECONCILE_AFTER_MINUTES"]),
            csv_max_bytes=int(config["CSV_MAX_BYTES"]),
            csv_chunk_rows=int(config["CSV_CHUNK_ROWS"]),
            log_level=str(config["LOG_LEVEL"]),
        )


class _FromConfig(Protocol):
    @classmethod
    def from_config(cls, config: Mapping[str, Any], /) -> Any: ...


S = TypeVar("S", bound=_FromConfig)


@overload
def settings(kind: None = None, app: Flask | None = None) -> Settings: ...


@overload
def settings(kind: type[S], app: Flask | None = None) -> S: ...


def settings(kind: type[Any] | None = None, app: Flask | None = None) -> Any:
    """The app's `kind` settings (`kind.from_config(app.config)`; default `Settings`), built once and kept.

    Built once per app, in `app.extensions`, rather than on every call: the
    configuration does not change once the app is made (tests that change it
    build a new app, or call `forget_settings`).
    """
    kind = kind or Settings
    app = app or current_app
    built: dict[type[Any], Any] = app.extensions.setdefault("recovery_settings", {})
    found = built.get(kind)
    if found is None:
        found = built[kind] = kind.from_config(app.config)
    return found


def forget_settings(app: Flask) -> None:
    """Drop the built settings, so the next read sees `app.config` as it is now (tests)."""
    app.extensions.pop("recovery_settings", None)
