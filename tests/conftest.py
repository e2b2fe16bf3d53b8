"""Fixtures: an app per database backend, a clean database per test, real Redis and RQ.

Every test that uses `app` runs twice: on SQLite and on PostgreSQL
(`TEST_DATABASE_URL`, default a database on 127.0.0.1:5432, created if missing).
Redis is `TEST_REDIS_URL` (default 127.0.0.1:6379, database 15). A missing
service skips its tests with the reason printed; with CI=true it fails them.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterator
from itertools import count
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import pytest
import sqlalchemy as sa
from flask import Flask, g
from flask.testing import FlaskClient
from flask_migrate import upgrade
from redis import Redis
from redis.exceptions import RedisError
from werkzeug.security import generate_password_hash

from recovery import create_app
from recovery.audit import Actor
from recovery.extensions import db as _db
from recovery.models import ApiToken, Base, Organization, Role, Transaction, User
from recovery.tokens.services import create_token

pytest_plugins = [
    "tests.fixtures.browser",  # Chromium, live server and tab fixtures for the browser tests
    "tests.fixtures.webhooks",  # stored events, the `recovering` transaction, reading back what a job did
    "tests.fixtures.payments",  # `token_for` an organization and role, the Stripe sandbox's view
    "tests.fixtures.workers",  # `rq_worker`: a real RQ worker in burst mode
]

IN_CI = os.environ.get("CI", "").lower() == "true"
PG_URL = os.environ.get("TEST_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/recovery_test")
REDIS_URL = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/15")
PASSWORD = "correct horse battery"
PASSWORD_HASH = generate_password_hash(PASSWORD)


def missing(what: str) -> None:
    """Skip on a developer's machine, fail in CI: a missing service is never silent there."""
    if IN_CI:
        pytest.fail(f"{what} (CI=true: required)", pytrace=False)
    pytest.skip(what)


def _worker_suffix() -> str:
    worker = os.environ.get("PYTEST_XDIST_WORKER", "")
    return f"_{worker}" if worker else ""


def _ensure_pg_database(url: str) -> str | None:
    """Create the test database if missing; return an error message if PostgreSQL is down."""
    target = sa.make_url(url.replace("postgresql://", "postgresql+psycopg://", 1))
    target = target.set(database=(target.database or "recovery_test") + _worker_suffix())
    admin = sa.create_engine(target.set(database="postgres"), isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            exists = conn.scalar(
                sa.text("SELECT 1 FROM pg_database WHERE datname = :n"), {"n": target.database}
            )
            if not exists:
                conn.execute(sa.text(f'CREATE DATABASE "{target.database}"'))
    except sa.exc.OperationalError as error:
        return f"PostgreSQL not reachable at {url}: {str(error).splitlines()[0]}"
    finally:
        admin.dispose()
    return target.render_as_string(hide_password=False)


@pytest.fixture(scope="session", params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path_factory.mktemp('db') / 'test.sqlite3'}"
    result = _ensure_pg_database(PG_URL)
    if result is None or not result.startswith("postgresql"):
        missing(result or "PostgreSQL not reachable")
    return result  # type: ignore[return-value]


@pytest.fixture(scope="session")
def redis_url() -> str:
    """The test Redis; each xdist worker gets its own database number below the base one."""
    parts = urlsplit(REDIS_URL)
    base = int(parts.path.strip("/") or 0)
    worker = os.environ.get("PYTEST_XDIST_WORKER", "gw0")
    database = max(base - int(worker.removeprefix("gw") or 0), 0)
    redis_url = urlunsplit(parts._replace(path=f"/{database}"))
    try:
        Redis.from_url(redis_url, socket_connect_timeout=1).ping()
    except RedisError as error:
        missing(f"Redis not reachable at {redis_url}: {error}")
    return redis_url


def base_config(database_url: str, redis_url: str, **overrides: Any) -> dict[str, Any]:
    return {
        "APP_ENV": "testing",
        "SECRET_KEY": "test-secret",
        "DATABASE_URL": database_url,
        "REDIS_URL": redis_url,
        "BASE_URL": "http://localhost",
        "WTF_CSRF_ENABLED": False,
        "LOG_LEVEL": "WARNING",
        **overrides,
    }


_migrated: set[str] = set()


@pytest.fixture
def app_config() -> dict[str, Any]:
    """Override in a test module (or parametrize) to change the app's settings."""
    return {}


@pytest.fixture
def app(database_url: str, redis_url: str, app_config: dict[str, Any]) -> Iterator[Flask]:
    app = create_app(base_config(database_url, redis_url, **app_config))

    # The test keeps one app context open and test requests reuse it, so
    # flask-login's per-request cache (g._login_user) would leak one request's
    # user into the next; forget it after each request, as production does.
    @app.teardown_request
    def forget_user(_error: BaseException | None) -> None:
        g.pop("_login_user", None)

    with app.app_context():
        if database_url not in _migrated:
            # Tests run on the schema the migrations build, not on create_all().
            _reset_schema()
            upgrade()
            _migrated.add(database_url)
        Redis.from_url(redis_url).flushdb()
        yield app
        _db.session.remove()
        _truncate()


def _reset_schema() -> None:
    engine = _db.engine
    with engine.begin() as conn:
        if engine.dialect.name == "postgresql":
            conn.execute(sa.text("DROP SCHEMA public CASCADE; CREATE SCHEMA public"))
        else:
            for table in reversed(Base.metadata.sorted_tables):
                conn.execute(sa.text(f'DROP TABLE IF EXISTS "{table.name}"'))
            conn.execute(sa.text("DROP TABLE IF EXISTS alembic_version"))


def _truncate() -> None:
    engine = _db.engine
    tables = [t.name for t in Base.metadata.sorted_tables]
    with engine.begin() as conn:
        if engine.dialect.name == "postgresql":
            names = ", ".join(f'"{t}"' for t in tables)
            conn.execute(sa.text(f"TRUNCATE {names} RESTART IDENTITY CASCADE"))
        else:
            for name in reversed(tables):
                conn.execute(sa.text(f'DELETE FROM "{name}"'))
    engine.dispose()


@pytest.fixture
def db(app: Flask) -> Any:
    return _db


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    return app.test_client()


_ids = count(1)


@pytest.fixture
def make_org(db: Any) -> Callable[..., Organization]:
    def make(**overrides: Any) -> Organization:
        n = next(_ids)
        # Quiet hours off unless a test asks: sends "now" must not depend on the hour the suite runs.
        values = {
            "slug": f"org-{n}",
            "name": f"Merchant {n}",
            "timezone": "UTC",
            "quiet_hours": "",
            **overrides,
        }
        organization = Organization(**values)
        db.session.add(organization)
        db.session.commit()
        return organization

    return make


@pytest.fixture
def make_user(db: Any, make_org: Callable[..., Organization]) -> Callable[..., User]:
    def make(org: Organization | None = None, role: Role | str = Role.OWNER, **overrides: Any) -> User:
        org = org or make_org()
        n = next(_ids)
        email = overrides.pop("email", f"user{n}@example.com")
        user = User(organization_id=org.id, email=email, role=Role(role).value, **overrides)
        user.password_hash = PASSWORD_HASH  # scrypt once per run, not once per user
        db.session.add(user)
        db.session.commit()
        return user

    return make


@pytest.fixture
def make_transaction(db: Any, make_org: Callable[..., Organization]) -> Callable[..., Transaction]:
    def make(org: Organization | None = None, **overrides: Any) -> Transaction:
        org = org or make_org()
        n = next(_ids)
        values: dict[str, Any] = {
            "transaction_ref": f"TXN-{n:06d}",
            "amount": 5000,
            "currency": "usd",
            "customer_email": f"customer{n}@example.com",
            "failure_code": "card_declined",
            **overrides,
        }
        transaction = Transaction(organization_id=org.id, **values)
        db.session.add(transaction)
        db.session.commit()
        return transaction

    return make


@pytest.fixture
def org(make_org: Callable[..., Organization]) -> Organization:
    """The merchant most tests work for; a test module that needs other settings defines its own `org`."""
    return make_org(name="Acme Shop")


@pytest.fixture
def make_token(db: Any, make_org: Callable[..., Organization]) -> Callable[..., tuple[ApiToken, str]]:
    """An API token (made by the command line) and its plaintext, for `bearer(raw)`."""

    def make(
        org: Organization | None = None,
        role: Role | str = Role.OPERATOR,
        name: str = "Test token",
        **overrides: Any,
    ) -> tuple[ApiToken, str]:
        org = org or make_org()
        token, raw = create_token(
            db.session, org.id, name, role, created_by=None, actor=Actor.system(org.id), **overrides
        )
        db.session.commit()
        return token, raw

    return make


def bearer(raw_token: str) -> dict[str, str]:
    """Request headers that authenticate with an API token."""
    return {"Authorization": f"Bearer {raw_token}"}


def login(client: FlaskClient, user: User, password: str = PASSWORD) -> Any:
    return client.post("/login", data={"email": user.email, "password": password})


@pytest.fixture
def signed_in(client: FlaskClient, make_user: Callable[..., User]) -> Callable[..., User]:
    """Sign the client in as a new user of the given role (and organization)."""

    def sign_in(role: Role | str = Role.OWNER, org: Organization | None = None) -> User:
        user = make_user(org=org, role=role)
        response = login(client, user)
        assert response.status_code == 302, response.data
        return user

    return sign_in


CSRF_RE = re.compile(r'name="csrf_token" type="hidden" value="([^"]+)"|name="csrf_token" value="([^"]+)"')


def csrf_token(html: str) -> str:
    match = CSRF_RE.search(html)
    assert match, "no CSRF token on the page"
    return match.group(1) or match.group(2)


# --- Stripe sandbox ---


@pytest.fixture(scope="session")
def stripe_sandbox(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """A real `python -m stripe_sandbox` on a free port for the whole run (see stripe_sandbox/harness.py).

    Yields a `SandboxProcess`: `base_url`, `api_key`, `webhook_secret`, and `reset()`,
    `fault(status=None, count=1, delay_ms=None)`, `add_webhook_endpoint(url, secret)`,
    `pay(session_id, card)`, `requests()`, `deliveries()`, `advance_clock(seconds)`.
    """
    from stripe_sandbox.harness import SandboxError, SandboxProcess

    sandbox = SandboxProcess(
        tmp_path_factory.mktemp("stripe-sandbox") / "sandbox.sqlite3", webhook_retry_base_seconds=0.2
    )
    try:
        sandbox.start()
    except SandboxError as error:
        missing(f"Stripe sandbox did not start: {error}")
    yield sandbox
    sandbox.stop()


@pytest.fixture
def stripe_client(stripe_sandbox: Any) -> Any:
    """A StripeClient talking to the sandbox over HTTP, on a freshly reset sandbox."""
    import stripe

    stripe_sandbox.reset()
    return stripe.StripeClient(
        stripe_sandbox.api_key, base_addresses={"api": stripe_sandbox.base_url}, max_network_retries=2
    )
