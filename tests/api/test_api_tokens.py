"""API tokens: the command line, the service rules, the dashboard page and Bearer authentication."""

from __future__ import annotations

import hashlib
import re
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import select

from recovery.audit import Actor
from recovery.models import ApiToken, AuditEvent, Transaction, utcnow
from recovery.tokens import services
from tests.conftest import PASSWORD, bearer, csrf_token

TOKEN_RE = re.compile(r"^rcv_[A-Za-z0-9_-]{43}$")


def tokens(db: Any) -> list[ApiToken]:
    db.session.expire_all()
    return list(db.session.scalars(select(ApiToken).order_by(ApiToken.id)))


def audit_events(db: Any, action: str) -> list[AuditEvent]:
    return list(db.session.scalars(select(AuditEvent).where(AuditEvent.action == action)))


# --- command line ------------------------------------------------------------------


@pytest.fixture
def run(app) -> Any:
    runner = app.test_cli_runner()
    return lambda *args: runner.invoke(args=list(args))


def test_cli_prints_the_token_once_and_stores_only_its_hash(run, db, make_org, client):
    org = make_org(slug="acme")

    result = run("create-api-token", "--org", "ACME", "--role", "operator", "--name", "Billing")

    assert result.exit_code == 0, result.output
    raw = result.stdout.strip()
    assert TOKEN_RE.match(raw), "only the token on stdout"
    assert "will not be shown again" in result.stderr
    [token] = tokens(db)
    assert (token.organization_id, token.name, token.role) == (org.id, "Billing", "operator")
    assert token.token_hash == hashlib.sha256(raw.encode()).hexdigest()
    assert token.prefix == raw[:12]
    assert token.expires_at is None
    assert raw not in repr([getattr(token, c.key) for c in ApiToken.__table__.columns]), (
        "the plaintext is not stored"
    )
    [event] = audit_events(db, "api_token_created")
    assert (event.organization_id, event.target_id, event.actor_label) == (
        org.id,
        str(token.id),
        "command line",
    )
    assert client.get("/v1/transactions", headers=bearer(raw)).status_code == 200


def test_cli_expiry_in_days(run, db, make_org):
    make_org(slug="acme")

    result = run("create-api-token", "--org", "acme", "--role", "viewer", "--expires-days", "30")

    assert result.exit_code == 0, result.output
    [token] = tokens(db)
    assert timedelta(days=29, hours=23) < token.expires_at - utcnow() <= timedelta(days=30)
    assert token.name == "CLI token"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--org", "nope", "--role", "viewer"), "No organization with slug 'nope'"),
        (("--org", "acme", "--role", "superuser"), "'superuser' is not one of"),
        (("--org", "acme", "--role", "viewer", "--name", "  "), "Give the token a name"),
        (("--org", "acme", "--role", "viewer", "--name", "x" * 101), "at most 100 characters"),
        (("--org", "acme", "--role", "viewer", "--expires-days", "0"), "--expires-days"),
    ],
)
def test_cli_refusals(run, db, make_org, args, message):
    make_org(slug="acme")

    result = run("create-api-token", *args)

    assert result.exit_code == 2
    assert message in result.output
    assert tokens(db) == []


# --- service rules -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("by", "role", "allowed"),
    [
        ("owner", "owner", True),
        ("owner", "viewer", True),
        ("admin", "admin", True),
        ("admin", "operator", True),
        ("admin", "owner", False),
        ("operator", "viewer", False),
        ("viewer", "viewer", False),
    ],
)
def test_users_create_tokens_up_to_their_own_role(db, make_user, by, role, allowed):
    user = make_user(role=by)
    actor = Actor.for_user(user)

    if allowed:
        token, raw = services.create_token(
            db.session, user.organization_id, "Mine", role, created_by=user, actor=actor
        )
        assert (token.role, token.created_by_user_id) == (role, user.id)
        assert TOKEN_RE.match(raw)
    else:
        with pytest.raises(services.TokenRefused) as refused:
            services.create_token(
                db.session, user.organization_id, "Mine", role, created_by=user, actor=actor
            )
        assert refused.value.field == "role"


def test_a_user_cannot_create_tokens_for_another_organization(db, make_user, make_org):
    user = make_user(role="owner")

    with pytest.raises(services.TokenRefused, match="another organization"):
        services.create_token(
            db.session, make_org().id, "Theirs", "viewer", created_by=user, actor=Actor.for_user(user)
        )


@pytest.mark.parametrize(
    ("name", "role", "expires_at", "field", "message"),
    [
        ("", "viewer", None, "name", "Give the token a name"),
        ("x" * 101, "viewer", None, "name", "at most 100 characters (got 101)"),
        ("ok", "root", None, "role", "Role must be one of: viewer, operator, admin, owner."),
        ("ok", "viewer", utcnow() - timedelta(seconds=1), "expires_days", "in the future"),
    ],
)
def test_create_token_refusals(db, make_org, name, role, expires_at, field, message):
    org = make_org()

    with pytest.raises(services.TokenRefused) as refused:
        services.create_token(
            db.session, org.id, name, role, created_by=None, actor=Actor.system(org.id), expires_at=expires_at
        )

    assert message in str(refused.value)
    assert refused.value.field == field


def test_tokens_are_unique_and_listed_per_organization(db, make_org, make_token):
    org, other = make_org(), make_org()
    _, raw1 = make_token(org=org, name="one")
    _, raw2 = make_token(org=org, name="two")
    make_token(org=other, name="theirs")

    assert raw1 != raw2
    assert [t.name for t in services.list_tokens(db.session, org.id)] == ["two", "one"]


def test_authenticate(db, make_token):
    token, raw = make_token()
    now = utcnow()

    assert services.authenticate(db.session, raw, now) == token
    assert token.last_used_at == now
    # Within a minute the timestamp stays, so reading costs no write.
    assert services.authenticate(db.session, raw, now + timedelta(seconds=59)) == token
    assert token.last_used_at == now
    assert services.authenticate(db.session, raw, now + timedelta(seconds=61)) == token
    assert token.last_used_at == now + timedelta(seconds=61)

    assert services.authenticate(db.session, raw[:-1] + ("A" if raw[-1] != "A" else "B"), now) is None
    assert services.authenticate(db.session, "not a token", now) is None
    token.expires_at = now + timedelta(hours=1)
    assert services.authenticate(db.session, raw, now + timedelta(hours=1)) is None
    token.expires_at = None
    services.revoke_token(db.session, token, by=None, actor=Actor.system(token.organization_id))
    assert services.authenticate(db.session, raw, now) is None


def test_revoke_is_audited_once(db, make_token):
    token, _ = make_token()
    actor = Actor.system(token.organization_id)

    assert services.revoke_token(db.session, token, by=None, actor=actor) is True
    assert services.revoke_token(db.session, token, by=None, actor=actor) is False

    [event] = audit_events(db, "api_token_revoked")
    assert event.target_id == str(token.id)
    assert event.details["name"] == "Test token"


# --- dashboard page --------------------------------------------------------------------


def create_on_page(client: Any, **overrides: str) -> Any:
    data = {"name": "Billing system", "role": "operator", "expires_days": "", **overrides}
    return client.post("/settings/api-tokens", data=data)


def shown_token(html: str) -> str | None:
    match = re.search(r'id="new-token"[^>]*value="(rcv_[^"]+)"', html)
    return match.group(1) if match else None


@pytest.mark.parametrize("role", ["admin", "owner"])
def test_owners_and_admins_create_see_and_revoke_tokens(client, db, signed_in, make_token, role):
    user = signed_in(role)
    theirs, _ = make_token(name="Their secret integration")

    response = create_on_page(client, expires_days="7")

    assert response.status_code == 201
    page = response.get_data(as_text=True)
    raw = shown_token(page)
    assert raw and TOKEN_RE.match(raw)
    assert 'data-copy="#new-token"' in page
    assert "will not be shown again" in page
    [token] = [t for t in tokens(db) if t.organization_id == user.organization_id]
    assert (token.name, token.role, token.created_by_user_id) == ("Billing system", "operator", user.id)
    assert token.expires_at is not None

    listing = client.get("/settings/api-tokens").get_data(as_text=True)
    assert shown_token(listing) is None, "the token is shown once"
    assert raw not in listing
    assert f"{token.prefix}…" in listing
    assert "Billing system" in listing
    assert theirs.name not in listing

    response = client.post(f"/settings/api-tokens/{token.id}/revoke", follow_redirects=True)
    assert response.status_code == 200
    assert "is revoked" in response.get_data(as_text=True)
    db.session.refresh(token)
    assert token.revoked_at is not None
    assert client.get("/v1/transactions", headers=bearer(raw)).status_code == 401
    [event] = audit_events(db, "api_token_revoked")
    assert (event.actor_user_id, event.target_id) == (user.id, str(token.id))


def test_admins_cannot_create_or_revoke_owner_tokens(client, db, signed_in, make_token):
    user = signed_in("admin")
    owners, _ = make_token(org=user.organization, role="owner", name="Owner's")

    response = create_on_page(client, role="owner")
    page = client.get("/settings/api-tokens").get_data(as_text=True)
    revoked = client.post(f"/settings/api-tokens/{owners.id}/revoke", follow_redirects=True)

    assert response.status_code == 422
    assert len(tokens(db)) == 1
    assert f"/settings/api-tokens/{owners.id}/revoke" not in page
    assert "You cannot revoke tokens with the owner role" in revoked.get_data(as_text=True)
    db.session.refresh(owners)
    assert owners.revoked_at is None


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"name": ""}, "Give the token a name"),
        ({"expires_days": "0"}, "Use 1 to 3650 days"),
        ({"expires_days": "soon"}, "Not a valid integer value"),
    ],
)
def test_page_shows_what_is_wrong(client, db, signed_in, overrides, message):
    signed_in("owner")

    response = create_on_page(client, **overrides)

    assert response.status_code == 422
    assert message in response.get_data(as_text=True)
    assert shown_token(response.get_data(as_text=True)) is None
    assert tokens(db) == []


@pytest.mark.parametrize("role", ["viewer", "operator"])
@pytest.mark.parametrize(
    ("method", "url"),
    [
        ("GET", "/settings/api-tokens"),
        ("POST", "/settings/api-tokens"),
        ("POST", "/settings/api-tokens/{id}/revoke"),
    ],
)
def test_viewers_and_operators_are_refused(client, db, signed_in, make_token, role, method, url):
    user = signed_in(role)
    token, _ = make_token(org=user.organization, role="viewer")

    response = client.open(url.format(id=token.id), method=method, data={"name": "x", "role": "viewer"})

    assert response.status_code == 403
    assert len(tokens(db)) == 1
    assert tokens(db)[0].revoked_at is None


def test_another_organizations_token_cannot_be_revoked(client, db, signed_in, make_token):
    signed_in("owner")
    theirs, _ = make_token()

    assert client.post(f"/settings/api-tokens/{theirs.id}/revoke").status_code == 404
    assert tokens(db)[0].revoked_at is None


@pytest.mark.parametrize("role", ["viewer", "operator", "admin", "owner"])
def test_nav_link_is_shown_only_to_owners_and_admins(client, signed_in, role):
    signed_in(role)

    page = client.get("/transactions").get_data(as_text=True)

    assert ('href="/settings/api-tokens"' in page) == (role in ("admin", "owner"))


class TestCsrf:
    @pytest.fixture
    def app_config(self) -> dict[str, Any]:
        return {"WTF_CSRF_ENABLED": True}

    def test_create_and_revoke_need_the_csrf_token(self, client, db, make_user, make_token):
        user = make_user(role="owner")
        login_page = client.get("/login").get_data(as_text=True)
        client.post(
            "/login", data={"email": user.email, "password": PASSWORD, "csrf_token": csrf_token(login_page)}
        )
        existing, _ = make_token(org=user.organization)

        assert create_on_page(client).status_code == 400
        assert client.post(f"/settings/api-tokens/{existing.id}/revoke").status_code == 400
        assert len(tokens(db)) == 1
        assert tokens(db)[0].revoked_at is None

        token = csrf_token(client.get("/settings/api-tokens").get_data(as_text=True))
        assert create_on_page(client, csrf_token=token).status_code == 201
        assert (
            client.post(f"/settings/api-tokens/{existing.id}/revoke", data={"csrf_token": token}).status_code
            == 302
        )
        assert len(tokens(db)) == 2
        assert tokens(db)[0].revoked_at is not None


# --- Bearer authentication ------------------------------------------------------------------


def assert_401(response: Any, message: str) -> None:
    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"].startswith("Bearer")
    error = response.json["error"]
    assert error["type"] == "unauthorized"
    assert message in error["message"]


@pytest.mark.parametrize(
    ("header", "message"),
    [
        (None, "This API needs a token"),
        ("", "This API needs a token"),
        ("Basic dXNlcjpwYXNz", "must be `Bearer <token>`"),
        ("Bearer", "must be `Bearer <token>`"),
        ("Bearer a b", "must be `Bearer <token>`"),
        ("Bearer sk_test_123", "not a Recovery API token"),
        ("Bearer rcv_" + "A" * 43, "not recognised"),
    ],
)
def test_missing_malformed_and_unknown_tokens_get_401(client, make_token, header, message):
    make_token()
    headers = {"Authorization": header} if header is not None else {}

    for method, url in (
        ("GET", "/v1/transactions"),
        ("POST", "/v1/transactions"),
        ("GET", "/v1/transactions/X"),
    ):
        assert_401(client.open(url, method=method, headers=headers, json={}), message)


def test_revoked_and_expired_tokens_get_401(client, db, make_token):
    revoked, revoked_raw = make_token()
    services.revoke_token(db.session, revoked, by=None, actor=Actor.system(revoked.organization_id))
    expired, expired_raw = make_token(expires_at=utcnow() + timedelta(hours=1))
    expired.expires_at = utcnow() - timedelta(seconds=1)
    db.session.commit()

    assert_401(client.get("/v1/transactions", headers=bearer(revoked_raw)), "has been revoked")
    assert_401(client.get("/v1/transactions", headers=bearer(expired_raw)), "has expired")


def test_the_scheme_is_case_insensitive_and_use_is_recorded(client, db, make_token):
    token, raw = make_token(role="viewer")

    response = client.get("/v1/transactions", headers={"Authorization": f"bearer {raw}"})

    assert response.status_code == 200
    db.session.expire_all()
    assert db.session.get(ApiToken, token.id).last_used_at is not None


def test_a_session_is_no_substitute_for_a_token(client, signed_in):
    signed_in("owner")

    assert_401(client.get("/v1/transactions"), "This API needs a token")


def test_low_role_gets_403(client, db, make_token):
    _, raw = make_token(role="viewer")

    response = client.post("/v1/transactions", headers=bearer(raw), json={"transaction_ref": "T-1"})

    assert response.status_code == 403
    assert response.json == {
        "error": {
            "type": "forbidden",
            "message": "This API token's role (viewer) cannot do this; it needs operator or above.",
        }
    }
    assert db.session.query(Transaction).count() == 0


def test_a_token_sees_only_its_own_organization(client, make_org, make_token, make_transaction):
    mine, theirs = make_org(), make_org()
    _, raw = make_token(org=mine, role="owner")
    make_transaction(org=theirs, transaction_ref="THEIRS-1")
    make_transaction(org=mine, transaction_ref="MINE-1")

    assert client.get("/v1/transactions/THEIRS-1", headers=bearer(raw)).json == {
        "error": {"type": "not_found", "message": "Transaction not found"}
    }
    listed = client.get("/v1/transactions", headers=bearer(raw)).json
    assert [t["transaction_ref"] for t in listed["data"]] == ["MINE-1"]
    assert client.get("/v1/transactions?q=THEIRS-1", headers=bearer(raw)).json["data"] == []


def test_audit_events_name_the_token(client, db, make_token):
    token, raw = make_token(name="Billing system")

    response = client.post(
        "/v1/transactions",
        headers=bearer(raw),
        json={"transaction_ref": "API-1", "amount": 5000, "currency": "usd"},
        environ_base={"REMOTE_ADDR": "198.51.100.7"},
    )

    assert response.status_code == 201
    [event] = audit_events(db, "transaction.created")
    assert (event.actor_api_token_id, event.actor_user_id) == (token.id, None)
    assert event.actor_label == "API token Billing system"
    assert event.ip_address == "198.51.100.7"
    assert event.details == {"source": "api"}
