"""Admins invite by email; the invitee chooses a password from a signed, expiring link and is signed in."""

from __future__ import annotations

import re
from typing import Any

import pytest
from itsdangerous import URLSafeTimedSerializer
from sqlalchemy import select

from recovery.auth.reset import Signer, reset_token
from recovery.models import AuditEvent, StaffEmail, User
from recovery.users.invites import invite_token
from tests.conftest import PASSWORD as STAFF_PASSWORD
from tests.conftest import login
from tests.fixtures.fakes import providers_config, smtp_server

__all__ = ["smtp_server"]

PASSWORD = "the invitee's own passphrase"
LINK_RE = re.compile(r"http://localhost(/users/invitation/\S+)")


@pytest.fixture
def app_config(request: pytest.FixtureRequest) -> dict[str, Any]:
    smtp = request.getfixturevalue("smtp_server") if "smtp_server" in request.fixturenames else None
    return providers_config(smtp, None)


def invite(client: Any, **overrides: str) -> Any:
    data = {"email": "new.person@example.com", "name": "New Person", "role": "operator", **overrides}
    return client.post("/users", data=data, follow_redirects=True)


def find(db: Any, email: str = "new.person@example.com") -> User | None:
    db.session.expire_all()
    return db.session.scalar(select(User).where(User.email == email))


def latest_link(db: Any) -> str:
    db.session.expire_all()
    email = db.session.scalars(select(StaffEmail).order_by(StaffEmail.id.desc())).first()
    assert email is not None
    match = LINK_RE.search(email.body_text)
    assert match, email.body_text
    return match.group(1)


def accept(
    client: Any, link: str, password: str = PASSWORD, confirm: str | None = None, name: str = ""
) -> Any:
    return client.post(link, data={"name": name, "password": password, "confirm": confirm or password})


def pending(db: Any, make_user: Any, **overrides: Any) -> User:
    """A user invited and not yet accepted (make_user always sets a password)."""
    user = make_user(**overrides)
    user.password_hash = None
    db.session.commit()
    return user


def actions(db: Any, organization_id: int) -> list[str]:
    return list(
        db.session.scalars(
            select(AuditEvent.action)
            .where(AuditEvent.organization_id == organization_id)
            .order_by(AuditEvent.id)
        )
    )


@pytest.mark.parametrize(("by", "role"), [("admin", "operator"), ("admin", "admin"), ("owner", "owner")])
def test_invitee_sets_the_password_and_is_signed_in(app, client, db, signed_in, by, role):
    admin = signed_in(by)

    page = invite(client, email="  New.Person@Example.com ", role=role).get_data(as_text=True)

    assert "Invitation for new.person@example.com is in the staff outbox" in page
    assert "invited" in page and "Send again" in page
    user = find(db)
    assert user is not None
    assert (user.organization_id, user.role, user.name, user.password_hash) == (
        admin.organization_id,
        role,
        "New Person",
        None,
    )
    assert user.invited_at is not None
    assert login(app.test_client(), user, PASSWORD).status_code == 401, "no sign-in before accepting"

    invitee = app.test_client()
    link = latest_link(db)
    form = invitee.get(link)
    assert form.status_code == 200
    assert admin.organization.name in form.get_data(as_text=True)
    response = accept(invitee, link, name="Nina Person")

    assert response.status_code == 302
    assert invitee.get("/transactions").status_code == 200
    user = find(db)
    assert user.name == "Nina Person" and user.password_hash
    assert login(app.test_client(), user, PASSWORD).status_code == 302
    assert actions(db, admin.organization_id)[1:4] == [
        "user.invited",
        "user.invitation_accepted",
        "user.signed_in",
    ]
    again = app.test_client().get(link)
    assert again.status_code == 400
    assert "already accepted" in again.get_data(as_text=True)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"role": "owner"}, "Only an owner can make someone an owner."),
        ({"email": "taken@example.com"}, "taken@example.com already has an account."),
        ({"email": "elsewhere@example.com"}, "elsewhere@example.com already has an account."),
        ({"email": "pending@example.com"}, "pending@example.com is already invited."),
        ({"email": "not-an-email"}, "email"),
        ({"role": "superuser"}, "Not a valid choice"),
        ({"name": "Eve\u202egnp.exe"}, "U+202E"),
    ],
)
def test_refused_invites_say_why_and_create_nothing(client, db, signed_in, make_user, overrides, message):
    admin = signed_in("admin")
    make_user(org=admin.organization, email="taken@example.com")
    make_user(email="elsewhere@example.com")
    pending(db, make_user, org=admin.organization, email="pending@example.com")
    users = db.session.query(User).count()
    emails = db.session.query(StaffEmail).count()

    response = invite(client, **overrides)

    assert response.status_code == 422
    assert message in response.get_data(as_text=True)
    assert db.session.query(User).count() == users
    assert db.session.query(StaffEmail).count() == emails


def test_sending_again_replaces_the_link_and_withdrawing_ends_it(app, client, db, signed_in):
    admin = signed_in("admin")
    invite(client)
    user = find(db)
    first = latest_link(db)

    page = client.post(f"/users/{user.id}/invitation/resend", follow_redirects=True).get_data(as_text=True)
    second = latest_link(db)

    assert "A new invitation for new.person@example.com" in page
    assert first != second
    old = app.test_client().get(first)
    assert old.status_code == 400 and "A newer invitation was sent" in old.get_data(as_text=True)
    assert app.test_client().get(second).status_code == 200

    page = client.post(f"/users/{user.id}/invitation/revoke", follow_redirects=True).get_data(as_text=True)

    assert "The invitation for new.person@example.com is withdrawn" in page
    assert find(db) is None
    gone = app.test_client().post(second, data={"password": PASSWORD, "confirm": PASSWORD})
    assert gone.status_code == 400 and "withdrawn" in gone.get_data(as_text=True)
    assert db.session.scalars(select(StaffEmail.user_id)).all() == [None, None]
    assert actions(db, admin.organization_id)[1:] == [
        "user.invited",
        "user.invitation_resent",
        "user.invitation_revoked",
    ]
    assert invite(client).status_code == 200, "the address can be invited again"


def test_an_accepted_users_invitation_cannot_be_resent_or_withdrawn(client, db, signed_in, make_user):
    admin = signed_in("admin")
    member = make_user(org=admin.organization, role="viewer")

    for action in ("resend", "revoke"):
        page = client.post(f"/users/{member.id}/invitation/{action}", follow_redirects=True).get_data(
            as_text=True
        )
        assert "has already accepted the invitation" in page
    assert find(db, member.email) is not None


@pytest.mark.parametrize("action", ["resend", "revoke"])
def test_another_organizations_invitation_is_not_found(client, db, signed_in, make_user, action):
    signed_in("owner")
    stranger = pending(db, make_user, email="theirs@example.com")

    response = client.post(f"/users/{stranger.id}/invitation/{action}")

    assert response.status_code == 404
    assert find(db, "theirs@example.com").session_version == 0


def test_an_admin_cannot_resend_or_withdraw_an_owners_invitation(client, db, signed_in, make_user):
    admin = signed_in("admin")
    pending_owner = pending(db, make_user, org=admin.organization, role="owner")

    page = client.post(f"/users/{pending_owner.id}/invitation/revoke", follow_redirects=True)

    assert "Only an owner can change another owner." in page.get_data(as_text=True)
    assert find(db, pending_owner.email) is not None


@pytest.mark.parametrize(
    ("make_token", "message"),
    [
        (lambda app, user: "garbage", "not valid: it may have been cut off"),
        (lambda app, user: invite_token(Signer.from_config(app.config), user)[:-2], "cut off"),
        (
            lambda app, user: URLSafeTimedSerializer("wrong key", salt="recovery.invitation").dumps(
                {"u": user.id}
            ),
            "cut off",
        ),
        (lambda app, user: reset_token(Signer.from_config(app.config), user), "cut off"),  # a reset link
        (
            lambda app, user: URLSafeTimedSerializer(
                app.config["SECRET_KEY"], salt="recovery.invitation"
            ).dumps({"u": "1; DROP TABLE user", "v": 0}),
            "withdrawn",
        ),
    ],
)
def test_bad_invitation_links_get_a_clear_error_and_change_nothing(
    app, client, db, make_user, make_token, message
):
    user = pending(db, make_user)
    token = make_token(app, user)

    for response in (client.get(f"/users/invitation/{token}"), accept(client, f"/users/invitation/{token}")):
        assert response.status_code == 400
        assert message in response.get_data(as_text=True)
    assert find(db, user.email).password_hash is None


def test_an_expired_invitation_says_so(app, client, db, make_user):
    from itsdangerous import TimestampSigner

    class Past(TimestampSigner):
        def get_timestamp(self) -> int:
            import time

            return int(time.time()) - 7 * 24 * 3600 - 1

    user = pending(db, make_user)
    token = URLSafeTimedSerializer(app.config["SECRET_KEY"], salt="recovery.invitation", signer=Past).dumps(
        {"u": user.id, "v": 0}
    )

    response = client.get(f"/users/invitation/{token}")

    assert response.status_code == 400
    assert "This invitation has expired" in response.get_data(as_text=True)


@pytest.mark.parametrize(
    ("password", "confirm", "name", "field", "message"),
    [
        ("short", "short", "", "password", "at least 12 characters"),
        (PASSWORD, "not the same at all", "", "confirm", "not the same"),
        ("", "", "", "password", "This field is required."),
        (PASSWORD, PASSWORD, "Eve\u202egnp.exe", "name", "U+202E"),
        (PASSWORD, PASSWORD, "n" * 201, "name", "200"),
    ],
)
def test_refused_acceptance_keeps_the_invitation(
    app, client, db, signed_in, password, confirm, name, field, message
):
    signed_in("admin")
    invite(client)
    link = latest_link(db)
    invitee = app.test_client()

    response = invitee.post(link, data={"name": name, "password": password, "confirm": confirm})

    assert response.status_code == 422
    error = response.get_data(as_text=True).split(f'<p class="error" id="{field}-error">', 1)
    assert len(error) == 2 and message in error[1].split("</p>", 1)[0]
    assert find(db).password_hash is None
    assert accept(invitee, link).status_code == 302, "the link still works"


def test_the_invitation_goes_out_over_smtp(app, client, db, signed_in, smtp_server):
    admin = signed_in("owner")

    page = invite(client).get_data(as_text=True)

    assert "Invitation sent to new.person@example.com." in page
    [received] = smtp_server.to("new.person@example.com")
    assert received["Subject"] == f"{admin.email} invited you to {admin.organization.name} on Recovery"
    body = received.get_body(preferencelist=("plain",)).get_content()
    link = LINK_RE.search(body)
    assert link
    assert accept(app.test_client(), link.group(1)).status_code == 302


def test_a_failed_send_keeps_the_invitation_and_says_so(app, client, db, signed_in, smtp_server):
    signed_in("owner")
    smtp_server.refuse("new.person@example.com", "550 5.1.1 No such user")

    page = invite(client).get_data(as_text=True)

    assert "is saved, but its email could not be sent (SMTP 550" in page
    assert find(db) is not None
    [stored] = db.session.scalars(select(StaffEmail)).all()
    assert (stored.status, stored.body_text) == ("failed", "")


def test_signed_in_the_staff_outbox_shows_an_admin_only_whom_they_could_manage(app, db, make_org, make_user):
    from recovery.staffmail.services import compose

    org = make_org()
    admin = make_user(org=org, role="admin")
    owner = make_user(org=org, role="owner", email="the.owner@example.com")
    viewer = make_user(org=org, role="viewer", email="the.viewer@example.com")
    operator = make_user(org=org, role="operator")
    stranger = make_user(role="viewer", email="stranger@example.com")
    for user in (owner, viewer, stranger):
        email = compose(db.session, user, "password_reset", f"Reset for {user.email}", "link")
        email.provider = "outbox"
    db.session.commit()

    as_admin, as_operator = app.test_client(), app.test_client()
    login(as_admin, admin, STAFF_PASSWORD)
    login(as_operator, operator, STAFF_PASSWORD)
    page = as_admin.get("/outbox/staff").get_data(as_text=True)

    assert "Reset for the.viewer@example.com" in page
    assert "the.owner@example.com" not in page, "an admin could take over an owner's account"
    assert "stranger@example.com" not in page
    owners_email = db.session.scalar(
        select(StaffEmail).where(StaffEmail.recipient == "the.owner@example.com")
    )
    assert as_admin.get(f"/outbox/staff/{owners_email.id}").status_code == 404
    assert as_operator.get("/outbox/staff").status_code == 403
