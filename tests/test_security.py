"""Security across the app: CSRF, roles, organization isolation, login by default, headers, hosts."""

from __future__ import annotations

import io
import re
from collections.abc import Iterator
from typing import Any

import pytest
from flask import Flask, request, url_for
from flask.testing import FlaskClient
from werkzeug.routing import IntegerConverter

from recovery import create_app
from recovery.extensions import db as _db
from recovery.models import AuditEvent, CsvImport, ImportStatus, Transaction, User
from recovery.queue import get_queue
from recovery.security import PUBLIC_ENDPOINTS
from tests.conftest import PASSWORD, base_config, csrf_token, login


def csv_upload(text: str = "transaction_ref,amount,currency\nCSV-1,5000,usd\n") -> dict[str, Any]:
    return {"file": (io.BytesIO(text.encode()), "failed.csv")}


def count(db: Any, model: type) -> int:
    return db.session.query(model).count()


# --- CSRF ----------------------------------------------------------------------


class TestCsrf:
    @pytest.fixture
    def app_config(self) -> dict[str, Any]:
        return {"WTF_CSRF_ENABLED": True}

    @staticmethod
    def sign_in(client: FlaskClient, user: User) -> None:
        token = csrf_token(client.get("/login").get_data(as_text=True))
        response = client.post(
            "/login", data={"email": user.email, "password": PASSWORD, "csrf_token": token}
        )
        assert response.status_code == 302

    @staticmethod
    def assert_refused(response: Any) -> None:
        assert response.status_code == 400
        assert "This form has expired or did not come from this site" in response.get_data(as_text=True)

    def test_login_without_token_is_refused(self, client, make_user):
        user = make_user()

        self.assert_refused(login(client, user))
        assert client.get("/transactions").status_code == 302

        self.sign_in(client, user)
        assert client.get("/transactions").status_code == 200

    def test_token_of_another_session_is_refused(self, app, make_user):
        user = make_user()
        token = csrf_token(app.test_client().get("/login").get_data(as_text=True))

        response = app.test_client().post(
            "/login", data={"email": user.email, "password": PASSWORD, "csrf_token": token}
        )

        self.assert_refused(response)

    def test_logout_without_token_keeps_the_session(self, client, make_user):
        self.sign_in(client, make_user())

        self.assert_refused(client.post("/logout"))
        page = client.get("/transactions")
        assert page.status_code == 200

        client.post("/logout", data={"csrf_token": csrf_token(page.get_data(as_text=True))})
        assert client.get("/transactions").status_code == 302

    def test_create_transaction_needs_the_token(self, client, db, make_user):
        self.sign_in(client, make_user(role="operator"))
        form = {"transaction_ref": "CSRF-1", "amount": "50.00", "currency": "usd"}

        self.assert_refused(client.post("/transactions/new", data=form))
        assert count(db, Transaction) == 0

        token = csrf_token(client.get("/transactions/new").get_data(as_text=True))
        response = client.post("/transactions/new", data={**form, "csrf_token": token})
        assert response.status_code == 302
        assert db.session.query(Transaction).one().transaction_ref == "CSRF-1"

    def test_invite_needs_the_token(self, client, db, make_user):
        self.sign_in(client, make_user(role="admin"))
        form = {"email": "new@example.com", "role": "viewer", "password": "a long enough password"}

        self.assert_refused(client.post("/users", data=form))
        assert db.session.query(User).filter_by(email="new@example.com").count() == 0

        token = csrf_token(client.get("/users").get_data(as_text=True))
        assert client.post("/users", data={**form, "csrf_token": token}).status_code == 302
        assert db.session.query(User).filter_by(email="new@example.com").count() == 1

    def test_every_post_route_refuses_a_missing_token(self, app, client, make_user):
        """A new state-changing route without CSRF protection fails here."""
        self.sign_in(client, make_user())
        exempt = {name for name in _exempt_endpoints(app)}
        checked = 0
        for rule in app.url_map.iter_rules():
            if "POST" not in rule.methods or rule.endpoint in exempt:
                continue
            response = client.post(fill(app, rule))
            assert response.status_code == 400, f"POST {rule.rule} is not CSRF-protected"
            checked += 1
        assert checked >= 7


def _exempt_endpoints(app: Flask) -> Iterator[str]:
    """Endpoints the app exempts from CSRF on purpose (e.g. signed webhooks)."""
    csrf = app.extensions["csrf"]
    for endpoint, view in app.view_functions.items():
        location = f"{view.__module__}.{view.__name__}"
        blueprint = app.blueprints.get(endpoint.rpartition(".")[0])
        if location in csrf._exempt_views or blueprint in csrf._exempt_blueprints:
            yield endpoint


# --- roles -----------------------------------------------------------------------


@pytest.fixture
def own_rows(make_org, make_transaction, db):
    """An organization with a transaction and a failed import to point URLs at."""
    org = make_org()
    transaction = make_transaction(org=org, customer_name="Original Name")
    csv_import = CsvImport(organization_id=org.id, filename="mine.csv", status=ImportStatus.FAILED)
    db.session.add(csv_import)
    db.session.commit()
    return org, transaction, csv_import


VIEWER_REFUSED = [
    ("GET", "/transactions/new", None),
    ("POST", "/transactions/new", {"transaction_ref": "NEW-1", "amount": "50.00", "currency": "usd"}),
    ("GET", "/transactions/{transaction}/edit", None),
    ("POST", "/transactions/{transaction}/edit", {"customer_name": "Changed"}),
    ("POST", "/imports", "csv"),
    ("POST", "/imports/{import}/retry", None),
    ("GET", "/users", None),
]


def request_as(client: FlaskClient, method: str, url: str, data: Any) -> Any:
    if data == "csv":
        return client.post(url, data=csv_upload(), content_type="multipart/form-data")
    return client.open(url, method=method, data=data)


@pytest.mark.parametrize(("method", "url", "data"), VIEWER_REFUSED)
def test_viewer_is_refused_what_changes_things(client, db, signed_in, own_rows, redis_url, method, url, data):
    org, transaction, csv_import = own_rows
    signed_in("viewer", org=org)
    events_before = count(db, AuditEvent)

    response = request_as(
        client, method, url.format(transaction=transaction.id, **{"import": csv_import.id}), data
    )

    assert response.status_code == 403
    assert "Your role does not allow this" in response.get_data(as_text=True)
    db.session.expire_all()
    assert count(db, Transaction) == 1
    assert db.session.get(Transaction, transaction.id).customer_name == "Original Name"
    assert count(db, CsvImport) == 1
    assert count(db, AuditEvent) == events_before
    assert get_queue().count == 0


@pytest.mark.parametrize(
    "url", ["/transactions", "/transactions/{transaction}", "/imports", "/imports/{import}"]
)
def test_viewer_may_read(client, signed_in, own_rows, url):
    org, transaction, csv_import = own_rows
    signed_in("viewer", org=org)

    response = client.get(url.format(transaction=transaction.id, **{"import": csv_import.id}))

    assert response.status_code == 200


def test_operator_may_create_and_edit(client, db, signed_in, own_rows):
    org, transaction, _ = own_rows
    user = signed_in("operator", org=org)

    created = client.post(
        "/transactions/new", data={"transaction_ref": "NEW-1", "amount": "50.00", "currency": "usd"}
    )
    edited = client.post(f"/transactions/{transaction.id}/edit", data={"customer_name": "Changed"})

    assert created.status_code == edited.status_code == 302
    db.session.expire_all()
    assert db.session.get(Transaction, transaction.id).customer_name == "Changed"
    actions = db.session.query(AuditEvent.action).filter_by(actor_user_id=user.id).all()
    assert {a for (a,) in actions} >= {"transaction.created", "transaction.contact_updated"}


@pytest.mark.parametrize("role", ["viewer", "operator", "admin", "owner"])
def test_users_link_is_shown_only_to_those_who_may_use_it(client, signed_in, role):
    signed_in(role)

    page = client.get("/transactions").get_data(as_text=True)

    assert ('href="/users"' in page) == (role in ("admin", "owner"))


# --- organization isolation --------------------------------------------------------

SECRET_REF = "THEIRS-SECRET-REF"
SECRET_EMAIL = "their-customer@secret.example"
SECRET_STAFF = "their-staff@secret.example"
SECRET_FILE = "their-secret-file.csv"


@pytest.fixture
def theirs(make_org, make_user, make_transaction, db) -> dict[str, Any]:
    """Another organization's transaction, import and user."""
    org = make_org(name="Their Merchant")
    transaction = make_transaction(
        org=org, transaction_ref=SECRET_REF, customer_email=SECRET_EMAIL, customer_name="Their Customer"
    )
    csv_import = CsvImport(organization_id=org.id, filename=SECRET_FILE, status=ImportStatus.FAILED)
    db.session.add(csv_import)
    db.session.commit()
    staff = make_user(org=org, role="viewer", email=SECRET_STAFF)
    return {"transaction": transaction.id, "import": csv_import.id, "user": staff.id}


CROSS_ORG = [
    ("GET", "/transactions/{transaction}", None),
    ("GET", "/transactions/{transaction}/edit", None),
    (
        "POST",
        "/transactions/{transaction}/edit",
        {"customer_name": "Hijacked", "customer_email": "x@example.com"},
    ),
    ("GET", f"/transactions/by-ref/{SECRET_REF}", None),
    ("GET", "/imports/{import}", None),
    ("POST", "/imports/{import}/retry", None),
    ("POST", "/users/{user}/role", {"role": "owner"}),
    ("POST", "/users/{user}/active", {"active": "0"}),
]


@pytest.mark.parametrize(("method", "url", "data"), CROSS_ORG)
def test_another_organizations_id_answers_404(client, db, signed_in, theirs, method, url, data):
    signed_in("owner")

    response = client.open(url.format(**theirs), method=method, data=data)

    assert response.status_code == 404
    body = response.get_data(as_text=True)
    for secret in (SECRET_REF, SECRET_EMAIL, SECRET_STAFF, SECRET_FILE, "Their Customer", "Their Merchant"):
        assert secret not in body
    db.session.expire_all()
    transaction = db.session.get(Transaction, theirs["transaction"])
    assert (transaction.customer_name, transaction.customer_email) == ("Their Customer", SECRET_EMAIL)
    staff = db.session.get(User, theirs["user"])
    assert (staff.role, staff.is_active) == ("viewer", True)
    assert db.session.get(CsvImport, theirs["import"]).status == ImportStatus.FAILED
    assert get_queue().count == 0
    assert db.session.query(AuditEvent).filter(AuditEvent.action != "user.signed_in").count() == 0


@pytest.mark.parametrize("url", ["/transactions/{transaction}", "/transactions/by-ref/{ref}"])
def test_own_rows_are_found_by_the_same_urls(client, signed_in, make_transaction, url):
    user = signed_in("viewer")
    transaction = make_transaction(org=user.organization, transaction_ref="MINE-1")

    response = client.get(url.format(transaction=transaction.id, ref="MINE-1"), follow_redirects=True)

    assert response.status_code == 200
    assert "MINE-1" in response.get_data(as_text=True)


def test_the_list_shows_only_the_own_organization(client, signed_in, theirs, make_transaction):
    user = signed_in("viewer")
    make_transaction(org=user.organization, transaction_ref="MINE-1")

    for url in (
        "/transactions",
        f"/transactions?q={SECRET_REF}",
        f"/transactions?q={SECRET_EMAIL}",
        "/imports",
    ):
        body = client.get(url).get_data(as_text=True)
        assert f'/transactions/{theirs["transaction"]}"' not in body
        assert "Their Customer" not in body
        assert SECRET_FILE not in body
    assert "MINE-1" in client.get("/transactions").get_data(as_text=True)


# --- login required by default ------------------------------------------------------


def fill(app: Flask, rule: Any) -> str:
    """A URL for `rule` with placeholder values for its arguments."""
    values = {
        name: 1 if isinstance(converter, IntegerConverter) else "x"
        for name, converter in rule._converters.items()
    }
    with app.test_request_context():
        return url_for(rule.endpoint, **values)


def test_the_public_endpoints_are_an_explicit_short_list():
    # The customer's landing pages after Stripe Checkout: they show, never fulfil.
    # The pay page of a recovery link: its unguessable token is the credential.
    assert {
        "auth.login",
        # A forgotten password and an invitation: the signed link is the credential.
        "auth.forgot_password",
        "auth.reset_password",
        "users.accept_invite",
        # The development outbox of staff emails decides itself who may read it
        # (anyone in development without SMTP, a signed-in admin in production).
        "staffmail.outbox",
        "staffmail.detail",
        "health.healthz",
        "openapi.openapi_json",  # the API's OpenAPI document: no organization's data
        "static",
        "customer.success",
        "customer.cancel",
        "customer.pay",
        "customer.checkout",
        "customer.unsubscribe_confirm",
        "customer.unsubscribe",
        "twilio.status",
        "twilio.inbound",
    } == PUBLIC_ENDPOINTS


def test_every_other_route_sends_anonymous_visitors_to_sign_in(app, client):
    """A new route that forgets protection fails here; API routes answer 401 instead (below)."""
    checked = []
    for rule in app.url_map.iter_rules():
        if rule.endpoint in PUBLIC_ENDPOINTS or rule.rule.startswith("/v1/"):
            continue
        url = fill(app, rule)
        for method in sorted(rule.methods - {"HEAD", "OPTIONS"}):
            response = client.open(url, method=method)
            assert response.status_code == 302, f"{method} {rule.rule} answered {response.status_code}"
            assert response.headers["Location"].startswith("/login?next="), f"{method} {rule.rule}"
            checked.append(f"{method} {rule.rule}")
    assert "GET /transactions" in checked
    assert "GET /users" in checked
    assert "GET /settings/api-tokens" in checked
    assert "POST /logout" in checked


@pytest.mark.parametrize("session", ["anonymous", "signed in"])
def test_every_api_route_needs_a_bearer_token(app, client, signed_in, session):
    """A new /v1/ route that forgets token auth fails here; a staff session is no substitute."""
    if session == "signed in":
        signed_in("owner")
    checked = []
    for rule in app.url_map.iter_rules():
        if rule.endpoint in PUBLIC_ENDPOINTS or not rule.rule.startswith("/v1/"):
            continue
        url = fill(app, rule)
        for method in sorted(rule.methods - {"HEAD", "OPTIONS"}):
            response = client.open(url, method=method, json={})
            assert response.status_code == 401, f"{method} {rule.rule} answered {response.status_code}"
            assert response.headers["WWW-Authenticate"].startswith("Bearer"), f"{method} {rule.rule}"
            assert response.json["error"]["type"] == "unauthorized", f"{method} {rule.rule}"
            checked.append(f"{method} {rule.rule}")
    assert {"GET /v1/transactions", "POST /v1/transactions", "GET /v1/transactions/<transaction_ref>"} <= set(
        checked
    )


@pytest.mark.parametrize("url", ["/login", "/healthz", "/static/css/app.css"])
def test_public_pages_need_no_sign_in(client, url):
    response = client.get(url)
    response.close()

    assert response.status_code == 200


# --- headers, cookies, hosts, proxies -----------------------------------------------------


def csp_directives(response: Any) -> dict[str, list[str]]:
    policy = response.headers["Content-Security-Policy"]
    directives = {}
    for part in policy.split(";"):
        name, *values = part.split()
        directives[name] = values
    return directives


def assert_security_headers(response: Any, hsts: bool = False) -> None:
    csp = csp_directives(response)
    assert "'self'" in csp["default-src"]
    script_src = csp.get("script-src", csp["default-src"])
    assert "'unsafe-inline'" not in script_src
    assert "'unsafe-eval'" not in script_src
    assert csp["frame-ancestors"] == ["'none'"]
    assert response.headers["X-Frame-Options"] == "DENY"
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    assert response.headers["Referrer-Policy"] == "strict-origin-when-cross-origin"
    assert ("Strict-Transport-Security" in response.headers) == hsts


RESPONSES = {
    "login page": ("/login", None, 200),
    "health": ("/healthz", None, 200),
    "anonymous redirect": ("/transactions", None, 302),
    "static file": ("/static/css/app.css", None, 200),
    "refused host": ("/login", {"Host": "evil.example"}, 400),
    "dashboard": ("/transactions", "signed in", 200),
    "not found": ("/transactions/999999", "signed in", 404),
    "unknown url": ("/no-such-page", "signed in", 404),
    "wrong method": ("/logout", "signed in", 405),
    "forbidden": ("/users", "viewer", 403),
}


@pytest.mark.parametrize("name", RESPONSES)
def test_security_headers_on_every_response(client, signed_in, name):
    url, how, status = RESPONSES[name]
    headers = how if isinstance(how, dict) else None
    if how == "signed in":
        signed_in("owner")
    elif how == "viewer":
        signed_in("viewer")

    response = client.get(url, headers=headers)
    response.close()

    assert response.status_code == status
    assert_security_headers(response)


INLINE_SCRIPT = re.compile(r"<script(?![^>]*\bsrc=)[^>]*>|\son[a-z]+\s*=", re.IGNORECASE)


@pytest.mark.parametrize(
    "url",
    [
        "/login",
        "/transactions",
        "/transactions/{id}",
        "/transactions/new",
        "/imports",
        "/users",
        "/settings/api-tokens",
    ],
)
def test_pages_have_no_inline_script(client, signed_in, make_transaction, url):
    """The CSP forbids inline script, so a page relying on it would break."""
    user = signed_in("owner") if url != "/login" else None
    transaction = make_transaction(org=user.organization) if user else None

    page = client.get(url.format(id=transaction.id if transaction else 0)).get_data(as_text=True)

    assert not INLINE_SCRIPT.search(page)


@pytest.mark.parametrize("host", ["localhost", "127.0.0.1", "localhost:5000"])
def test_configured_hosts_are_served(client, host):
    assert client.get("/login", headers={"Host": host}).status_code == 200


@pytest.mark.parametrize("url", ["/login", "/healthz", "/transactions", "/no-such-page"])
def test_other_hosts_are_refused(client, url):
    response = client.get(url, headers={"Host": "evil.example"})

    assert response.status_code == 400
    assert "evil.example" not in response.get_data(as_text=True)


def test_session_cookie_is_httponly_and_lax_outside_production(client, make_user):
    user = make_user()

    response = client.post("/login", data={"email": user.email, "password": PASSWORD, "remember": "y"})

    for name in ("session", "remember_token"):
        cookie = set_cookie(response, name)
        assert "HttpOnly" in cookie
        assert "SameSite=Lax" in cookie
        assert "Secure" not in cookie


def set_cookie(response: Any, name: str) -> list[str]:
    for header in response.headers.getlist("Set-Cookie"):
        if header.startswith(name + "="):
            return [part.strip() for part in header.split(";")]
    raise AssertionError(f"no {name} cookie set")


# Production: a separate app, as `wsgi.py` builds it, on the same test database.

PRODUCTION_URL = "https://recovery.example"


@pytest.fixture
def production_app(app: Flask, database_url: str, redis_url: str) -> Iterator[Flask]:
    config = base_config(database_url, redis_url, APP_ENV="production", BASE_URL=PRODUCTION_URL)
    config["SECRET_KEY"] = "a-real-secret-key-0123456789abcdef"
    del config["WTF_CSRF_ENABLED"]  # production keeps the default: on
    production = create_app(config)
    yield production
    with production.app_context():
        _db.engine.dispose()


def https_client(app: Flask) -> FlaskClient:
    """A browser on the production URL: every request over HTTPS to its host."""
    client = app.test_client()
    original = client.open

    def open_on_production_url(*args: Any, **kwargs: Any) -> Any:
        kwargs.setdefault("base_url", PRODUCTION_URL)
        return original(*args, **kwargs)

    client.open = open_on_production_url  # type: ignore[method-assign]
    return client


def test_production_sends_hsts_and_secure_cookies(production_app, make_user):
    client = https_client(production_app)
    user = make_user()

    page = client.get("/login")
    assert_security_headers(page, hsts=True)
    assert page.headers["Strict-Transport-Security"].startswith("max-age=31536000")

    token = csrf_token(page.get_data(as_text=True))
    response = client.post(
        "/login",
        data={"email": user.email, "password": PASSWORD, "remember": "y", "csrf_token": token},
        headers={"Referer": f"{PRODUCTION_URL}/login"},
    )
    assert response.status_code == 302
    for name in ("session", "remember_token"):
        cookie = set_cookie(response, name)
        assert {"HttpOnly", "Secure", "SameSite=Lax"} <= set(cookie)
    assert client.get("/transactions").status_code == 200
    assert_security_headers(client.get("/transactions/999999"), hsts=True)


def test_production_csrf_check_needs_the_same_origin_referer(production_app, make_user):
    """Why Referrer-Policy is not no-referrer: over HTTPS flask-wtf checks the Referer."""
    client = https_client(production_app)
    user = make_user()
    token = csrf_token(client.get("/login").get_data(as_text=True))
    data = {"email": user.email, "password": PASSWORD, "csrf_token": token}

    assert client.post("/login", data=data).status_code == 400
    assert client.post("/login", data=data, headers={"Referer": "https://evil.example/"}).status_code == 400
    assert client.post("/login", data=data, headers={"Referer": f"{PRODUCTION_URL}/login"}).status_code == 302


@pytest.mark.parametrize(
    ("host", "status"), [("recovery.example", 200), ("localhost", 400), ("127.0.0.1", 400)]
)
def test_production_serves_only_the_base_url_host(production_app, host, status):
    response = production_app.test_client().get("/login", base_url=f"https://{host}")

    assert response.status_code == status


FORWARDED = {
    "X-Forwarded-Proto": "https",
    "X-Forwarded-For": "203.0.113.9",
    "X-Forwarded-Host": "localhost",
}


class TestProxyFix:
    @pytest.fixture
    def probe(self, app: Flask, client: FlaskClient, signed_in: Any) -> FlaskClient:
        app.add_url_rule(
            "/_probe", "probe", lambda: {"scheme": request.scheme, "remote_addr": request.remote_addr}
        )
        signed_in("viewer")
        return client

    @pytest.mark.parametrize("app_config", [{"PROXY_FIX": 1}])
    def test_forwarded_headers_are_honoured_when_enabled(self, probe):
        response = probe.get("/_probe", headers=FORWARDED)

        assert response.json == {"scheme": "https", "remote_addr": "203.0.113.9"}

    def test_forwarded_headers_are_ignored_by_default(self, probe):
        response = probe.get("/_probe", headers=FORWARDED)

        assert response.json == {"scheme": "http", "remote_addr": "127.0.0.1"}

    @pytest.mark.parametrize("app_config", [{"PROXY_FIX": 1}])
    def test_forwarded_host_is_checked_too(self, client):
        response = client.get("/login", headers={"X-Forwarded-Host": "evil.example"})

        assert response.status_code == 400

    @pytest.mark.parametrize("app_config", [{"PROXY_FIX": 1}])
    def test_sign_in_throttle_counts_the_forwarded_client(self, client, make_user):
        users = [make_user() for _ in range(7)]

        def attempt(user: User, client_ip: str) -> int:
            headers = {"X-Forwarded-For": client_ip}
            data = {"email": user.email, "password": "wrong"}
            return client.post(
                "/login", data=data, headers=headers, environ_base={"REMOTE_ADDR": "10.9.9.9"}
            ).status_code

        for user in users[:5]:
            assert attempt(user, "198.51.100.1") == 401
        assert attempt(users[5], "198.51.100.1") == 429
        # The same proxy, another client behind it: not throttled.
        assert attempt(users[6], "198.51.100.2") == 401
