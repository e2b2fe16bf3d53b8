"""Forgot password: a signed, expiring, single-use link by email; the same answer for every address."""

from __future__ import annotations

import hashlib
import re
import time
from typing import Any

import pytest
from itsdangerous import TimestampSigner, URLSafeTimedSerializer
from sqlalchemy import select

from recovery.auth.reset import Signer, reset_token
from recovery.models import AuditEvent, StaffEmail, User, UserLogin
from recovery.queue import get_queue
from recovery.users.invites import invite_token
from tests.conftest import PASSWORD, login
from tests.fixtures.fakes import providers_config, smtp_server

__all__ = ["smtp_server"]

NEW_PASSWORD = "a fresh long passphrase"
LINK_RE = re.compile(r"http://localhost/reset-password/(\S+)")


@pytest.fixture
def app_config(request: pytest.FixtureRequest) -> dict[str, Any]:
    smtp = request.getfixturevalue("smtp_server") if "smtp_server" in request.fixturenames else None
    return providers_config(smtp, None)


def ask(client: Any, email: str, ip: str = "127.0.0.1") -> Any:
    return client.post("/forgot-password", data={"email": email}, environ_base={"REMOTE_ADDR": ip})


def staff_emails(db: Any) -> list[StaffEmail]:
    db.session.expire_all()
    return list(db.session.scalars(select(StaffEmail).order_by(StaffEmail.id)))


def link_of(email: StaffEmail) -> str:
    match = LINK_RE.search(email.body_text)
    assert match, email.body_text
    return "/reset-password/" + match.group(1)


def actions(db: Any, organization_id: int) -> list[str]:
    return list(
        db.session.scalars(
            select(AuditEvent.action)
            .where(AuditEvent.organization_id == organization_id)
            .order_by(AuditEvent.id)
        )
    )


def signer(app: Any) -> Signer:
    return Signer.from_config(app.config)


# --- asking for a link ---------------------------------------------------------------------


@pytest.mark.parametrize("case", ["unknown", "deactivated", "invited"])
def test_the_answer_is_the_same_whether_or_not_the_account_may_reset(
    app, client, db, make_user, rq_worker, case
):
    """Same status, same page, same work in the request (one job), for an address that gets nothing."""
    make_user(email="real@example.com")
    other = make_user(email="other@example.com")
    if case == "deactivated":
        other.is_active = False
    elif case == "invited":
        other.password_hash = None
    db.session.commit()
    address = "nobody@example.com" if case == "unknown" else "other@example.com"

    real = ask(client, "real@example.com")
    queued_after_real = get_queue().count
    unknown = ask(client, address)

    assert real.status_code == unknown.status_code == 200
    strip = re.compile(r"(real|nobody|other)@example\.com")
    assert strip.sub("X", real.get_data(as_text=True)) == strip.sub("X", unknown.get_data(as_text=True))
    assert "If <bdi>X</bdi> has an account here" in strip.sub("X", real.get_data(as_text=True))
    assert (queued_after_real, get_queue().count) == (1, 2), "each answer only enqueues one job"
    assert staff_emails(db) == [], "the request itself looks nothing up and writes nothing"

    rq_worker()

    [email] = staff_emails(db)
    assert email.recipient == "real@example.com"
    assert email.subject == "Reset your Recovery password"


def test_reset_link_sets_the_password_signs_in_and_signs_out_everywhere_else(
    app, client, db, make_user, rq_worker
):
    user = make_user(email="dana@example.com")
    elsewhere = app.test_client()
    assert login(elsewhere, user).status_code == 302

    assert ask(client, "  Dana@Example.com ").status_code == 200
    rq_worker()
    [email] = staff_emails(db)
    assert (email.provider, email.status, email.user_id) == ("outbox", "sent", user.id)
    link = link_of(email)
    assert "works once" in email.body_text and "60 minutes" in email.body_text

    form = client.get(link)
    assert form.status_code == 200
    assert "dana@example.com" in form.get_data(as_text=True)
    response = client.post(link, data={"password": NEW_PASSWORD, "confirm": NEW_PASSWORD})

    assert response.status_code == 302
    assert response.headers["Location"] == "/transactions"
    assert client.get("/transactions").status_code == 200, "signed in with the new password"
    assert elsewhere.get("/transactions").status_code == 302, "the other device is signed out"
    assert login(app.test_client(), user, PASSWORD).status_code == 401
    assert login(app.test_client(), user, NEW_PASSWORD).status_code == 302
    assert actions(db, user.organization_id) == [
        "user.signed_in",
        "user.password_reset_requested",
        "user.password_reset",
        "user.signed_in",
        "user.signed_in",
    ]
    # Single use: the same link again is refused and changes nothing.
    again = app.test_client().post(
        link, data={"password": "another passphrase!", "confirm": "another passphrase!"}
    )
    assert again.status_code == 400
    assert "already used" in again.get_data(as_text=True)
    assert login(app.test_client(), user, NEW_PASSWORD).status_code == 302


def test_a_link_stops_working_when_the_password_changes_otherwise(app, client, db, make_user):
    user = make_user()
    link = "/reset-password/" + reset_token(signer(app), user)
    user.set_password("changed by the account page")
    db.session.commit()

    response = client.get(link)

    assert response.status_code == 400
    assert "already used, or the password has changed since" in response.get_data(as_text=True)


class _Past(TimestampSigner):
    """Signs as if it were an hour and a second ago: the link someone would hold after waiting."""

    def get_timestamp(self) -> int:
        return int(time.time()) - 3601


def forged(app: Any, payload: Any, *, key: str | None = None, salt: str = "recovery.password-reset") -> str:
    return str(URLSafeTimedSerializer(key or app.config["SECRET_KEY"], salt=salt).dumps(payload))


@pytest.mark.parametrize(
    ("make_link", "message"),
    [
        (lambda app, user: "expired", "has expired"),
        (lambda app, user: "not-a-token", "not valid: it may have been cut off"),
        (lambda app, user: reset_token(signer(app), user)[:-3], "not valid: it may have been cut off"),
        (lambda app, user: forged(app, {"u": user.id, "p": "x"}, key="another-key"), "not valid"),
        (lambda app, user: forged(app, {"u": user.id, "p": "x"}), "already used"),
        (lambda app, user: forged(app, {"u": 2**70, "p": "x"}), "not valid any more"),
        (lambda app, user: forged(app, ["list"]), "not valid any more"),
        (lambda app, user: invite_token(signer(app), user), "not valid"),  # an invitation is no reset link
        (lambda app, user: "x" * 3000, "not valid"),
    ],
)
def test_bad_links_get_a_clear_error_and_change_nothing(app, client, db, make_user, make_link, message):
    user = make_user()
    token = make_link(app, user)
    if token == "expired":
        payload = {"u": user.id, "p": hashlib.sha256(user.password_hash.encode()).hexdigest()[:32]}
        past = URLSafeTimedSerializer(app.config["SECRET_KEY"], salt="recovery.password-reset", signer=_Past)
        token = str(past.dumps(payload))
    before = user.password_hash

    shown = client.get(f"/reset-password/{token}")
    posted = client.post(f"/reset-password/{token}", data={"password": NEW_PASSWORD, "confirm": NEW_PASSWORD})

    for response in (shown, posted):
        assert response.status_code == 400
        page = response.get_data(as_text=True)
        assert message in page
        assert 'href="/forgot-password"' in page, "a way to ask for a new link"
    db.session.expire_all()
    assert db.session.get(User, user.id).password_hash == before
    assert db.session.scalar(select(UserLogin)) is None


@pytest.mark.parametrize(
    ("password", "confirm", "field", "message"),
    [
        ("short", "short", "password", "at least 12 characters"),
        (NEW_PASSWORD, "something else entirely", "confirm", "not the same"),
        ("", "", "password", "This field is required."),
        ("p" * 257, "p" * 257, "password", "256"),
    ],
)
def test_a_refused_new_password_keeps_the_old_one_and_the_link(
    app, client, db, make_user, password, confirm, field, message
):
    user = make_user()
    link = "/reset-password/" + reset_token(signer(app), user)

    response = client.post(link, data={"password": password, "confirm": confirm})

    assert response.status_code == 422
    error = response.get_data(as_text=True).split(f'<p class="error" id="{field}-error">', 1)
    assert len(error) == 2 and message in error[1].split("</p>", 1)[0]
    assert login(app.test_client(), user, PASSWORD).status_code == 302, "the old password still works"
    retry = client.post(link, data={"password": NEW_PASSWORD, "confirm": NEW_PASSWORD})
    assert retry.status_code == 302, "the link still works after a refused try"


# --- limits ----------------------------------------------------------------------------------


def test_requests_are_limited_per_address_and_per_client(app, client, db, make_user):
    make_user(email="erin@example.com")
    for n in range(5):
        assert ask(client, "erin@example.com", ip=f"10.0.0.{n}").status_code == 200
    per_address = ask(client, "ERIN@example.com", ip="10.0.0.9")
    for n in range(4):
        assert ask(client, f"someone{n}@example.com", ip="10.0.1.1").status_code == 200
    assert ask(client, "fifth@example.com", ip="10.0.1.1").status_code == 200
    per_client = ask(client, "sixth@example.com", ip="10.0.1.1")

    assert per_address.status_code == per_client.status_code == 429
    assert "Too many reset links were asked for this address" in per_client.get_data(as_text=True)
    assert get_queue().count == 10


@pytest.mark.parametrize("email", ["", "not an email", "x" * 250 + "@example.com"])
def test_bad_addresses_are_refused_at_the_field(client, email):
    response = client.post("/forgot-password", data={"email": email})

    assert response.status_code == 400
    assert '<p class="error" id="email-error">' in response.get_data(as_text=True)
    assert get_queue().count == 0


# --- the mail path ------------------------------------------------------------------------------


def test_over_smtp_the_email_arrives_and_its_link_is_not_kept(
    app, client, db, make_user, rq_worker, smtp_server
):
    user = make_user(email="sam@example.com")

    ask(client, "sam@example.com")
    rq_worker()

    [received] = smtp_server.to("sam@example.com")
    assert received["Subject"] == "Reset your Recovery password"
    assert received["List-Unsubscribe"] is None, "a staff email is no marketing list"
    assert received["Message-ID"].startswith("<recovery-staff-")
    body = received.get_body(preferencelist=("plain",)).get_content()
    link = LINK_RE.search(body)
    assert link
    [stored] = staff_emails(db)
    assert (stored.provider, stored.status, stored.body_text) == ("smtp", "sent", "")
    # The development outbox does not exist when email leaves over SMTP.
    assert client.get("/outbox/staff").status_code == 404
    response = client.post(
        "/reset-password/" + link.group(1), data={"password": NEW_PASSWORD, "confirm": NEW_PASSWORD}
    )
    assert response.status_code == 302
    assert login(app.test_client(), user, NEW_PASSWORD).status_code == 302


def test_the_development_outbox_shows_staff_emails_without_signing_in(app, client, db, make_user, rq_worker):
    make_user(email="dev@example.com")
    ask(client, "dev@example.com")
    rq_worker()
    [email] = staff_emails(db)

    listing = client.get("/outbox/staff")
    detail = client.get(f"/outbox/staff/{email.id}")

    assert listing.status_code == 200 and "dev@example.com" in listing.get_data(as_text=True)
    assert detail.status_code == 200
    assert link_of(email) in detail.get_data(as_text=True)
    assert 'href="/outbox/staff"' in ask(client, "dev@example.com").get_data(as_text=True)


@pytest.mark.parametrize("app_config", [{"APP_ENV": "production", "SECRET_KEY": "s" * 40}])
def test_in_production_the_staff_outbox_needs_a_signed_in_admin(client):
    response = client.get("/outbox/staff")

    assert response.status_code == 302
    assert response.headers["Location"].startswith("/login")
