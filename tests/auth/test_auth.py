"""Staff sign-in and sign-out: passwords, deactivation, server-side sessions, throttling, `next`."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime
from typing import Any
from urllib.parse import urlencode

import pytest
from flask.testing import FlaskClient
from flask_login.utils import encode_cookie
from redis import Redis
from sqlalchemy import select

from recovery.audit import Actor
from recovery.models import AuditEvent, User, UserLogin, utcnow
from recovery.users.services import set_active
from tests.conftest import PASSWORD, csrf_token, login

DASHBOARD = "/transactions"


def signed_in_user_id(client: FlaskClient) -> str | None:
    with client.session_transaction() as session:
        return session.get("_user_id")


def session_login(client: FlaskClient, db: Any) -> UserLogin:
    """The sign-in row the client's session names (`<user>.<version>.<login>.<nonce>`)."""
    session_id = signed_in_user_id(client)
    assert session_id is not None
    login_id = int(session_id.split(".")[2])
    row = db.session.get(UserLogin, login_id)
    assert row is not None
    return row


def can_see_dashboard(client: FlaskClient) -> bool:
    response = client.get(DASHBOARD)
    assert response.status_code in (200, 302)
    return response.status_code == 200


def post_login(client: FlaskClient, email: str, password: str, ip: str = "127.0.0.1", query: str = "") -> Any:
    return client.post(
        "/login" + query,
        data={"email": email, "password": password},
        environ_base={"REMOTE_ADDR": ip},
    )


def audit_actions(db: Any, organization_id: int) -> list[str]:
    return list(
        db.session.scalars(
            select(AuditEvent.action)
            .where(AuditEvent.organization_id == organization_id)
            .order_by(AuditEvent.id)
        )
    )


# --- passwords ---------------------------------------------------------------


def test_good_password_signs_in_and_lands_on_the_dashboard(client, db, make_user):
    user = make_user(role="viewer")

    response = login(client, user)

    assert response.status_code == 302
    assert response.headers["Location"] == DASHBOARD
    assert session_login(client, db).user_id == user.id
    assert can_see_dashboard(client)
    db.session.refresh(user)
    assert user.last_login_at is not None
    assert audit_actions(db, user.organization_id) == ["user.signed_in"]


def test_email_is_matched_without_regard_to_case_or_spaces(client, db, make_user):
    user = make_user(email="casey@example.com")

    response = post_login(client, "  Casey@EXAMPLE.com ", PASSWORD)

    assert response.status_code == 302
    assert session_login(client, db).user_id == user.id


def test_login_page_has_labelled_fields(client):
    page = client.get("/login").get_data(as_text=True)

    assert '<label for="email">Email</label>' in page
    assert '<label for="password">Password</label>' in page


@pytest.mark.parametrize(
    "case", ["wrong password", "unknown email", "deactivated user, wrong password", "invited, not accepted"]
)
def test_refused_sign_in_answers_401_with_a_message_at_the_password(client, db, make_user, case):
    user = make_user(email="dana@example.com")
    email, password = "dana@example.com", PASSWORD
    if case == "wrong password":
        password = "not the password"
    elif case == "unknown email":
        email = "nobody@example.com"
    elif case == "invited, not accepted":
        user.password_hash = None
        db.session.commit()
    else:
        # Deactivated: said only to whoever knows the password (test below); otherwise the generic answer.
        user.is_active = False
        db.session.commit()
        password = "not the password"

    response = post_login(client, email, password)

    assert response.status_code == 401
    page = response.get_data(as_text=True)
    assert '<p class="error" id="password-error">The email or password is not right.</p>' in page
    assert 'aria-describedby="password-error"' in page
    assert f'value="{email}"' in page, "the email stays filled in"
    assert signed_in_user_id(client) is None
    assert not can_see_dashboard(client)
    assert audit_actions(db, user.organization_id) == []


def test_deactivated_user_is_told_so_only_after_the_right_password(client, db, make_org, make_user):
    org = make_org(name="Kaffee & Co")
    user = make_user(org=org, email="dana@example.com", is_active=False)

    wrong = post_login(client, "dana@example.com", "not the password")
    right = post_login(client, "Dana@Example.com", PASSWORD)

    assert wrong.status_code == 401
    assert "deactivated" not in wrong.get_data(as_text=True)
    assert "The email or password is not right." in wrong.get_data(as_text=True)
    assert right.status_code == 403
    page = right.get_data(as_text=True)
    assert "This account is deactivated; ask an admin of Kaffee &amp; Co to reactivate it." in page
    assert "The email or password is not right." not in page
    assert signed_in_user_id(client) is None
    assert not can_see_dashboard(client)
    assert audit_actions(db, user.organization_id) == ["user.sign_in_refused_deactivated"]


@pytest.mark.parametrize(
    ("data", "field"),
    [
        ({"email": "", "password": PASSWORD}, "email"),
        ({"email": "dana@example.com", "password": ""}, "password"),
        ({"email": "x" * 250 + "@example.com", "password": PASSWORD}, "email"),
    ],
)
def test_incomplete_form_answers_400_with_the_field_marked(client, make_user, data, field):
    make_user(email="dana@example.com")

    response = client.post("/login", data=data)

    assert response.status_code == 400
    assert f'id="{field}-error"' in response.get_data(as_text=True)
    assert signed_in_user_id(client) is None


def test_user_deactivated_after_sign_in_loses_the_session(client, db, make_user):
    user = make_user()
    assert login(client, user).status_code == 302
    assert can_see_dashboard(client)

    user.is_active = False
    db.session.commit()

    response = client.get(DASHBOARD)
    assert response.status_code == 302
    assert response.headers["Location"].startswith("/login")


def test_remember_me_cookie_stops_working_after_deactivation(client, db, make_user):
    user = make_user()
    client.post("/login", data={"email": user.email, "password": PASSWORD, "remember": "y"})
    assert client.get_cookie("remember_token") is not None
    client.delete_cookie("session")  # a new browser session, only the remember cookie left
    assert can_see_dashboard(client)

    user.is_active = False
    db.session.commit()
    client.delete_cookie("session")

    assert not can_see_dashboard(client)


def test_reactivation_does_not_revive_sessions_from_before(client, db, make_user):
    user = make_user()
    client.post("/login", data={"email": user.email, "password": PASSWORD, "remember": "y"})
    assert can_see_dashboard(client)

    owner = make_user(org=user.organization)
    actor = Actor.for_user(owner)
    set_active(db.session, owner, actor, user, False)
    set_active(db.session, owner, actor, user, True)
    db.session.commit()

    assert not can_see_dashboard(client)  # the session cookie
    client.delete_cookie("session")
    assert not can_see_dashboard(client)  # the remember cookie
    assert login(client, user).status_code == 302
    assert can_see_dashboard(client)


def test_a_new_password_ends_other_sessions(client, db, make_user):
    user = make_user()
    assert login(client, user).status_code == 302

    user.set_password("a brand new passphrase")
    db.session.commit()

    assert not can_see_dashboard(client)


def test_a_forged_session_id_is_refused(client, db, make_user):
    user = make_user()
    assert login(client, user).status_code == 302
    real = signed_in_user_id(client)
    user_id, version, login_id, nonce = real.split(".")
    forged_ids = [
        str(user.id),
        f"{user.id}.7",
        f"{user.id}.0",  # the id of before server-side sign-ins: users sign in again
        "x.0",
        "",
        f"{user_id}.{version}.{login_id}",
        f"{user_id}.{version}.{login_id}.{nonce[:-1]}",
        f"{user_id}.{version}.{login_id}.{nonce}x",
        f"{user_id}.{int(version) + 1}.{login_id}.{nonce}",
        f"{int(user_id) + 1}.{version}.{login_id}.{nonce}",
        f"{user_id}.{version}.{int(login_id) + 1}.{nonce}",
        f"{user_id}.{version}.{2**64}.{nonce}",  # past BIGINT: no database error
        f"{user_id}.{version}.{login_id}.{nonce}.{nonce}",
        f"{user_id}.-1.{login_id}.{nonce}",
    ]
    for forged in forged_ids:
        with client.session_transaction() as session:
            session["_user_id"] = forged
            session["_fresh"] = True
        assert not can_see_dashboard(client), forged
    with client.session_transaction() as session:
        session["_user_id"] = real
    assert can_see_dashboard(client)


def test_sign_out_is_a_post_and_ends_the_session(client, signed_in):
    signed_in("viewer")

    assert client.get("/logout").status_code == 405
    assert can_see_dashboard(client)

    response = client.post("/logout")

    assert response.status_code == 302
    assert response.headers["Location"] == "/login"
    assert signed_in_user_id(client) is None
    assert not can_see_dashboard(client)


def test_sign_out_is_audited(client, db, signed_in):
    user = signed_in("viewer")

    client.post("/logout")

    assert audit_actions(db, user.organization_id) == ["user.signed_in", "user.signed_out"]


def test_signed_in_user_visiting_login_goes_to_the_dashboard(client, signed_in):
    signed_in("viewer")

    response = client.get("/login")

    assert response.status_code == 302
    assert response.headers["Location"] == DASHBOARD


# --- server-side sign-ins: a copied cookie dies with its sign-in ------------------


LAPTOP = "Mozilla/5.0 (X11; Linux x86_64; rv:133.0) Gecko/20100101 Firefox/133.0"
PHONE = (
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_2 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko)"
    " Version/17.2 Mobile/15E148 Safari/604.1"
)


def remember_login(client: FlaskClient, user: User, agent: str = LAPTOP) -> Any:
    return client.post(
        "/login",
        data={"email": user.email, "password": PASSWORD, "remember": "y"},
        headers={"User-Agent": agent},
    )


def cookie_alone(app: Any, name: str, value: str) -> FlaskClient:
    """A fresh browser holding only one copied cookie."""
    browser = app.test_client()
    browser.set_cookie(name, value)
    return browser


def copied_cookies(client: FlaskClient) -> dict[str, str]:
    cookies = {name: client.get_cookie(name) for name in ("session", "remember_token")}
    assert all(cookies.values()), cookies
    return {name: cookie.value for name, cookie in cookies.items()}


def test_copied_cookies_open_nothing_after_sign_out(app, client, make_user):
    user = make_user()
    assert remember_login(client, user).status_code == 302
    copies = copied_cookies(client)
    for name, value in copies.items():  # each copy alone opens the dashboard while signed in
        assert can_see_dashboard(cookie_alone(app, name, value)), name

    assert client.post("/logout").status_code == 302

    for name, value in copies.items():
        response = cookie_alone(app, name, value).get(DASHBOARD)
        assert response.status_code == 302, f"the copied {name} cookie still opens the dashboard"
        assert response.headers["Location"].startswith("/login")


def test_sign_out_ends_that_sign_in_in_the_database(client, db, make_user):
    user = make_user()
    assert remember_login(client, user).status_code == 302
    row = session_login(client, db)
    assert row.ended_at is None and row.is_remembered

    client.post("/logout")

    db.session.refresh(row)
    assert row.ended_at is not None


def test_signing_out_on_one_device_leaves_the_other_signed_in(app, make_user):
    user = make_user()
    laptop, phone = app.test_client(), app.test_client()
    assert remember_login(laptop, user).status_code == 302
    assert remember_login(phone, user, agent=PHONE).status_code == 302
    phone_remember = copied_cookies(phone)["remember_token"]

    laptop.post("/logout")

    assert not can_see_dashboard(laptop)
    assert can_see_dashboard(phone)
    assert can_see_dashboard(cookie_alone(app, "remember_token", phone_remember))


def test_sign_out_everywhere_ends_every_device(app, db, make_user):
    user = make_user()
    laptop, phone = app.test_client(), app.test_client()
    assert remember_login(laptop, user).status_code == 302
    assert remember_login(phone, user, agent=PHONE).status_code == 302
    phone_copies = copied_cookies(phone)
    version = user.session_version

    page = laptop.get("/account/sessions").get_data(as_text=True)
    assert "Firefox 133 on Linux" in page and "Mobile Safari 17 on iPhone" in page
    assert page.count('<span class="badge">this device</span>') == 1
    assert 'Firefox 133 on Linux <span class="badge">this device</span>' in page

    response = laptop.post("/account/sessions/sign-out-everywhere")

    assert response.status_code == 302
    assert response.headers["Location"] == "/login"
    assert not can_see_dashboard(laptop)
    assert not can_see_dashboard(phone)
    for name, value in phone_copies.items():
        assert not can_see_dashboard(cookie_alone(app, name, value)), name
    db.session.refresh(user)
    assert user.session_version == version + 1
    assert db.session.scalar(select(UserLogin).where(UserLogin.ended_at.is_(None))) is None
    assert audit_actions(db, user.organization_id)[-1] == "user.signed_out_everywhere"
    # Signing in again works, and the sessions page starts afresh.
    assert login(laptop, user).status_code == 302
    assert laptop.get("/account/sessions").get_data(as_text=True).count("this device") == 1


@pytest.mark.parametrize("app_config", [{"WTF_CSRF_ENABLED": True}])
def test_sign_out_everywhere_is_a_post_with_a_csrf_token(app, make_user):
    user = make_user()
    browser = app.test_client()
    token = csrf_token(browser.get("/login").get_data(as_text=True))
    browser.post("/login", data={"email": user.email, "password": PASSWORD, "csrf_token": token})

    assert browser.get("/account/sessions/sign-out-everywhere").status_code == 405
    assert browser.post("/account/sessions/sign-out-everywhere").status_code == 400
    assert can_see_dashboard(browser)
    page = browser.get("/account/sessions").get_data(as_text=True)
    assert 'href="/account"' in page, "the account menu links to the account page"
    account = browser.get("/account").get_data(as_text=True)
    assert 'href="/account/sessions"' in account, "the account page links to the sessions page"
    browser.post("/account/sessions/sign-out-everywhere", data={"csrf_token": csrf_token(page)})
    assert not can_see_dashboard(browser)


def expires_in(response: Any, name: str) -> timedelta | None:
    for header in response.headers.getlist("Set-Cookie"):
        if header.startswith(name + "="):
            for part in header.split(";"):
                key, _, value = part.strip().partition("=")
                if key.lower() == "expires":
                    return parsedate_to_datetime(value) - datetime.now(UTC)
            return None
    raise AssertionError(f"no {name} cookie set")


def test_remember_me_lasts_30_days_cookie_and_sign_in_alike(client, db, make_user):
    response = remember_login(client, make_user())

    lasts = expires_in(response, "remember_token")
    assert lasts is not None
    assert timedelta(days=30) - timedelta(minutes=1) < lasts <= timedelta(days=30)
    row = session_login(client, db)
    assert row.expires_at - row.created_at == timedelta(days=30)


def test_without_remember_me_the_sign_in_lasts_the_browser_session_and_12_hours(client, db, make_user):
    response = login(client, make_user())

    assert expires_in(response, "session") is None, "a browser-session cookie"
    assert "remember_token" not in str(response.headers)
    row = session_login(client, db)
    assert not row.is_remembered
    assert row.expires_at - row.created_at == timedelta(hours=12)


def test_an_expired_sign_in_is_refused(app, client, db, make_user):
    assert remember_login(client, make_user()).status_code == 302
    copies = copied_cookies(client)
    row = session_login(client, db)
    row.expires_at = utcnow() - timedelta(seconds=1)
    db.session.commit()

    assert not can_see_dashboard(client)
    assert not can_see_dashboard(cookie_alone(app, "remember_token", copies["remember_token"]))


def test_a_tampered_remember_cookie_is_refused(app, client, make_user):
    """Even a remember cookie signed with our key opens nothing without the sign-in's nonce."""
    user = make_user()
    assert remember_login(client, user).status_code == 302
    real = signed_in_user_id(client)
    user_id, version, login_id, nonce = real.split(".")
    tampered = f"{user_id}.{version}.{login_id}.{'A' * len(nonce)}"

    assert can_see_dashboard(cookie_alone(app, "remember_token", encode_cookie(real)))
    assert not can_see_dashboard(cookie_alone(app, "remember_token", encode_cookie(tampered)))


@pytest.mark.parametrize("old_id", ["{user}.0", "{user}", "{user}.0.junk"])
def test_a_cookie_from_before_server_side_sign_ins_is_simply_refused(app, db, make_user, old_id):
    user = make_user()
    session_id = old_id.format(user=user.id)

    for browser in (app.test_client(), cookie_alone(app, "remember_token", encode_cookie(session_id))):
        if not browser.get_cookie("remember_token"):
            with browser.session_transaction() as session:
                session["_user_id"] = session_id
                session["_fresh"] = True
        response = browser.get(DASHBOARD)
        assert response.status_code == 302
        assert response.headers["Location"].startswith("/login")
        assert login(browser, user).status_code == 302  # signing in again works


def test_a_new_password_ends_every_sign_in(client, db, make_user):
    user = make_user()
    assert remember_login(client, user).status_code == 302

    user.set_password("a brand new passphrase")
    db.session.commit()

    assert not can_see_dashboard(client)
    assert db.session.scalar(select(UserLogin).where(UserLogin.ended_at.is_(None))) is None


# --- throttling (Flask-Limiter on the real Redis) -----------------------------


def test_sixth_failure_for_one_account_is_refused_from_any_address(client, app, make_user, redis_url):
    user = make_user(email="erin@example.com")
    for n in range(1, 6):
        assert post_login(client, "erin@example.com", "wrong", ip=f"10.0.0.{n}").status_code == 401

    # Another address, a differently written email: still the same account.
    response = post_login(client, "ERIN@example.com ", "wrong", ip="10.0.0.6")
    assert response.status_code == 429
    assert "Too many failed sign-in attempts" in response.get_data(as_text=True)
    assert int(response.headers["Retry-After"]) > 0
    # While throttled, even the right password is refused.
    assert post_login(client, user.email, PASSWORD, ip="10.0.0.7").status_code == 429
    assert signed_in_user_id(client) is None
    # Other accounts are not affected.
    other = make_user()
    assert post_login(client, other.email, PASSWORD, ip="10.0.0.8").status_code == 302
    # The counters live in Redis, shared by every web worker.
    assert Redis.from_url(redis_url).keys("*recovery-limits*")


def test_sixth_failure_from_one_address_is_refused_for_any_account(client, make_user):
    users = [make_user() for _ in range(7)]
    for user in users[:5]:
        assert post_login(client, user.email, "wrong", ip="10.1.1.1").status_code == 401

    assert post_login(client, users[5].email, "wrong", ip="10.1.1.1").status_code == 429
    assert post_login(client, "nobody@example.com", "wrong", ip="10.1.1.1").status_code == 429
    # Another address may still try.
    assert post_login(client, users[6].email, "wrong", ip="10.1.1.2").status_code == 401


def test_successful_sign_ins_do_not_count_as_failures(app, make_user):
    user = make_user()

    def attempt(password: str) -> int:
        return post_login(app.test_client(), user.email, password, ip="10.2.2.2").status_code

    for _ in range(4):
        assert attempt("wrong") == 401
    for _ in range(3):
        assert attempt(PASSWORD) == 302
    assert attempt("wrong") == 401  # the 5th failure
    assert attempt("wrong") == 429  # the 6th


def test_incomplete_forms_do_not_count_as_failures(client, make_user):
    user = make_user()
    for _ in range(6):
        assert client.post("/login", data={"email": user.email, "password": ""}).status_code == 400

    assert login(client, user).status_code == 302


# --- where sign-in leads: `next` -----------------------------------------------

EVIL_NEXT = [
    "//evil.example",
    "///evil.example",
    "\\\\evil.example",
    "/\\evil.example",
    "\\/evil.example",
    "https://evil.example",
    "http:evil.example",
    "HTTPS://evil.example/transactions",
    "javascript:alert(1)",
    " //evil.example",
    "/\t/evil.example",
    "/\r\n/evil.example",
    "%2F%2Fevil.example",
    "evil.example",
    "transactions",
]

# Percent-encoded in the query string itself: decoded once by the server.
EVIL_RAW_QUERIES = [
    "next=%2F%2Fevil.example",
    "next=%5C%5Cevil.example",
    "next=%2F%5Cevil.example",
    "next=https%3A%2F%2Fevil.example",
    "next=%2F%09%2Fevil.example",
    "next=javascript%3Aalert(1)",
    "next=%252F%252Fevil.example",
]


@pytest.mark.parametrize("target", EVIL_NEXT)
@pytest.mark.parametrize("carrier", ["query", "form"])
def test_next_outside_the_app_lands_on_the_dashboard(client, make_user, target, carrier):
    user = make_user()
    if carrier == "query":
        response = post_login(client, user.email, PASSWORD, query="?" + urlencode({"next": target}))
    else:
        response = client.post("/login", data={"email": user.email, "password": PASSWORD, "next": target})

    assert response.status_code == 302
    assert response.headers["Location"] == DASHBOARD


@pytest.mark.parametrize("raw_query", EVIL_RAW_QUERIES)
def test_encoded_next_outside_the_app_lands_on_the_dashboard(client, make_user, raw_query):
    user = make_user()

    response = post_login(client, user.email, PASSWORD, query="?" + raw_query)

    assert response.headers["Location"] == DASHBOARD


@pytest.mark.parametrize("target", ["//evil.example", "https://evil.example", "javascript:alert(1)"])
def test_signed_in_user_with_bad_next_lands_on_the_dashboard(client, signed_in, target):
    signed_in("viewer")

    response = client.get("/login?" + urlencode({"next": target}))

    assert response.headers["Location"] == DASHBOARD


def test_next_inside_the_app_is_followed_through_the_login_page(client, make_user):
    user = make_user()

    bounced = client.get("/transactions?status=failed")
    assert bounced.status_code == 302
    login_url = bounced.headers["Location"]
    assert login_url.startswith("/login?next=")
    page = client.get(login_url).get_data(as_text=True)
    assert 'name="next" type="hidden" value="/transactions?status=failed"' in page

    response = client.post(login_url, data={"email": user.email, "password": PASSWORD})
    assert response.headers["Location"] == "/transactions?status=failed"

    client.post("/logout")
    response = client.post(
        "/login", data={"email": user.email, "password": PASSWORD, "next": "/transactions?status=failed"}
    )
    assert response.headers["Location"] == "/transactions?status=failed"


def test_failed_sign_in_keeps_next_for_the_next_try(client, make_user):
    user = make_user()

    response = client.post(
        "/login?next=%2Fimports", data={"email": user.email, "password": "wrong", "next": "/imports"}
    )

    assert response.status_code == 401
    assert 'name="next" type="hidden" value="/imports"' in response.get_data(as_text=True)


@pytest.mark.parametrize(
    ("user_agent", "label"),
    [
        (
            "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko)"
            " Chrome/131.0.0.0 Safari/537.36",
            "Chrome 131 on Windows",
        ),
        (
            "Mozilla/5.0 (iPhone; CPU iPhone OS 17_2 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko)"
            " Version/17.2 Mobile/15E148 Safari/604.1",
            "Mobile Safari 17 on iPhone",
        ),
        (None, "Unknown device"),
        ("", "Unknown device"),
        ("\x00<script>", "Unknown browser"),
    ],
)
def test_a_sign_in_names_its_device_as_a_person_would(user_agent, label) -> None:
    from recovery.auth.logins import device_label

    assert device_label(user_agent) == label


@pytest.mark.parametrize("app_config", [{"LOGIN_FAILURES_PER_MINUTE": 100}])
def test_a_refusal_costs_as_long_whether_or_not_the_email_has_a_password(client, db, make_user):
    """An unknown email, or an invitation not yet accepted, still checks a password hash.

    Without it the answer would come in ~1 ms instead of a hash's ~50: the
    timing would tell which addresses have accounts. Medians, with a wide
    margin, so a busy machine does not make it flaky.
    """
    make_user(email="known@example.com")
    invited = make_user(email="invited@example.com")
    invited.password_hash = None
    db.session.commit()

    def median_seconds(email: str) -> float:
        times = []
        for n in range(5):
            started = time.perf_counter()
            assert post_login(client, email, "wrong password", ip=f"10.9.0.{n}").status_code == 401
            times.append(time.perf_counter() - started)
        return sorted(times)[2]

    known = median_seconds("known@example.com")

    assert median_seconds("nobody@example.com") > known * 0.3
    assert median_seconds("invited@example.com") > known * 0.3
