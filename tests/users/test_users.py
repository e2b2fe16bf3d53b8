"""Owners and admins manage their organization's users; every change is audited."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import select

from recovery.audit import Actor
from recovery.models import AuditEvent, User
from recovery.users import services
from tests.conftest import PASSWORD, login

NEW_PASSWORD = "a long enough password"


def audit_events(db: Any, organization_id: int, action: str | None = None) -> list[AuditEvent]:
    query = select(AuditEvent).where(AuditEvent.organization_id == organization_id)
    if action:
        query = query.where(AuditEvent.action == action)
    return list(db.session.scalars(query.order_by(AuditEvent.id)))


def reload(db: Any, user: User) -> User:
    db.session.expire_all()
    return db.session.get(User, user.id)


def invite(client: Any, **overrides: str) -> Any:
    data = {
        "email": "new.person@example.com",
        "name": "New Person",
        "role": "operator",
    }
    return client.post("/users", data={**data, **overrides})


def change_role(client: Any, user: User, role: str) -> Any:
    return client.post(f"/users/{user.id}/role", data={"role": role}, follow_redirects=True)


def set_active(client: Any, user: User, active: bool) -> Any:
    return client.post(
        f"/users/{user.id}/active", data={"active": "1" if active else "0"}, follow_redirects=True
    )


# --- who may manage users --------------------------------------------------------

USER_ACTIONS = [
    ("GET", "/users", None),
    ("POST", "/users", {"email": "new.person@example.com", "role": "viewer"}),
    ("POST", "/users/{target}/role", {"role": "admin"}),
    ("POST", "/users/{target}/active", {"active": "0"}),
]


@pytest.mark.parametrize("role", ["viewer", "operator"])
@pytest.mark.parametrize(("method", "url", "data"), USER_ACTIONS)
def test_viewers_and_operators_are_refused(client, db, signed_in, make_user, role, method, url, data):
    user = signed_in(role)
    target = make_user(org=user.organization, role="viewer")

    response = client.open(url.format(target=target.id), method=method, data=data)

    assert response.status_code == 403
    target = reload(db, target)
    assert (target.role, target.is_active) == ("viewer", True)
    assert db.session.query(User).filter_by(email="new.person@example.com").count() == 0
    assert audit_events(db, user.organization_id) == audit_events(db, user.organization_id, "user.signed_in")


@pytest.mark.parametrize("role", ["admin", "owner"])
def test_admins_and_owners_see_their_organizations_users_only(client, signed_in, make_user, role):
    user = signed_in(role)
    colleague = make_user(org=user.organization, role="viewer", email="colleague@example.com")
    stranger = make_user(role="owner", email="stranger@example.com")

    response = client.get("/users")

    assert response.status_code == 200
    page = response.get_data(as_text=True)
    assert colleague.email in page
    assert user.email in page
    assert stranger.email not in page
    assert f"/users/{colleague.id}/role" in page
    assert f"/users/{user.id}/role" not in page, "no controls for oneself"


# --- invite ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("overrides", "field", "message"),
    [
        ({"email": ""}, "email", "This field is required."),
        ({"email": "not-an-email"}, "email", "email"),
        ({"email": "taken@example.com"}, "email", "taken@example.com already has an account."),
        ({"email": "TAKEN@example.com"}, "email", "taken@example.com already has an account."),
        ({"email": "elsewhere@example.com"}, "email", "elsewhere@example.com already has an account."),
        ({"email": "x" * 250 + "@example.com"}, "email", "254"),
        ({"name": "Eve\u202egnp.exe"}, "name", "U+202E"),
        ({"role": "superuser"}, "role", "Not a valid choice"),
        ({"role": "owner"}, "role", "Only an owner can make someone an owner."),
        ({"name": "n" * 201}, "name", "200"),
    ],
)
def test_invalid_invites_are_refused_next_to_the_field(
    client, db, signed_in, make_user, overrides, field, message
):
    admin = signed_in("admin")
    make_user(org=admin.organization, email="taken@example.com")
    make_user(email="elsewhere@example.com")  # another organization: emails are global
    users_before = db.session.query(User).count()

    response = invite(client, **overrides)

    assert response.status_code == 422
    page = response.get_data(as_text=True)
    error = page.split(f'<p class="error" id="{field}-error">', 1)
    assert len(error) == 2, f"no error shown at {field}"
    assert message in error[1].split("</p>", 1)[0]
    assert db.session.query(User).count() == users_before
    assert audit_events(db, admin.organization_id, "user.invited") == []


# --- change role ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("by", "old", "new"),
    [
        ("owner", "viewer", "operator"),
        ("owner", "admin", "viewer"),
        ("owner", "admin", "owner"),
        ("owner", "owner", "admin"),  # another owner: the actor stays owner
        ("admin", "viewer", "admin"),
        ("admin", "operator", "viewer"),
    ],
)
def test_role_change_is_saved_and_audited(client, db, signed_in, make_user, by, old, new):
    actor = signed_in(by)
    target = make_user(org=actor.organization, role=old)

    response = change_role(client, target, new)

    assert f"{target.email} is now {new}." in response.get_data(as_text=True)
    assert reload(db, target).role == new
    [event] = audit_events(db, actor.organization_id, "user.role_changed")
    assert event.actor_user_id == actor.id
    assert event.target_id == str(target.id)
    assert event.details == {"email": target.email, "old": old, "new": new}


@pytest.mark.parametrize(
    ("by", "old", "new", "message"),
    [
        ("admin", "operator", "owner", "Only an owner can make someone an owner."),
        ("admin", "owner", "viewer", "Only an owner can change another owner."),
        ("admin", "owner", "owner", "Only an owner can change another owner."),
        ("owner", "viewer", "superuser", "Choose a valid role."),
    ],
)
def test_refused_role_changes_leave_the_user_unchanged(
    client, db, signed_in, make_user, by, old, new, message
):
    actor = signed_in(by)
    target = make_user(org=actor.organization, role=old)

    response = change_role(client, target, new)

    assert response.status_code == 200
    assert message in response.get_data(as_text=True)
    assert reload(db, target).role == old
    assert audit_events(db, actor.organization_id, "user.role_changed") == []


@pytest.mark.parametrize("role", ["admin", "owner"])
def test_nobody_changes_their_own_role_or_access(client, db, signed_in, make_user, role):
    me = signed_in(role)
    make_user(org=me.organization, role="owner")  # so the last-owner rule is not what refuses

    for response in (
        change_role(client, me, "viewer"),
        change_role(client, me, "owner"),
        set_active(client, me, False),
    ):
        assert "You cannot change your own role or access." in response.get_data(as_text=True)

    me = reload(db, me)
    assert (me.role, me.is_active) == (role, True)
    assert audit_events(db, me.organization_id) == audit_events(db, me.organization_id, "user.signed_in")


# --- deactivate and reactivate --------------------------------------------------------


def test_deactivated_user_is_signed_out_and_can_be_reactivated(app, client, db, signed_in, make_user):
    owner = signed_in("owner")
    target = make_user(org=owner.organization, role="operator")
    their_browser = app.test_client()
    assert login(their_browser, target).status_code == 302

    response = set_active(client, target, False)

    assert f"{target.email} is deactivated." in response.get_data(as_text=True)
    assert reload(db, target).is_active is False
    assert their_browser.get("/transactions").status_code == 302
    assert login(their_browser, target).status_code == 403  # right password: told it is deactivated

    response = set_active(client, target, True)

    assert f"{target.email} can sign in again." in response.get_data(as_text=True)
    assert reload(db, target).is_active is True
    assert login(app.test_client(), target).status_code == 302
    actions = [e.action for e in audit_events(db, owner.organization_id) if e.target_id == str(target.id)]
    assert actions == [
        "user.signed_in",
        "user.deactivated",
        "user.sign_in_refused_deactivated",
        "user.reactivated",
        "user.signed_in",
    ]


@pytest.mark.parametrize(("by", "target_role"), [("admin", "owner")])
def test_admin_cannot_deactivate_an_owner(client, db, signed_in, make_user, by, target_role):
    admin = signed_in(by)
    owner = make_user(org=admin.organization, role=target_role)

    response = set_active(client, owner, False)

    assert "Only an owner can change another owner." in response.get_data(as_text=True)
    assert reload(db, owner).is_active is True
    assert audit_events(db, admin.organization_id, "user.deactivated") == []


def test_owner_can_deactivate_another_owner(client, db, signed_in, make_user):
    me = signed_in("owner")
    other = make_user(org=me.organization, role="owner")

    set_active(client, other, False)

    assert reload(db, other).is_active is False
    assert len(audit_events(db, me.organization_id, "user.deactivated")) == 1


# --- the organization keeps an active owner ------------------------------------------------
# Through the pages the acting owner is always another active owner, so these
# run the service directly: a second, deactivated owner acts (as a script might).


@pytest.fixture
def lone_owner(db, make_org, make_user):
    org = make_org()
    owner = make_user(org=org, role="owner")
    inactive_owner = make_user(org=org, role="owner", is_active=False)
    return owner, inactive_owner


def test_last_active_owner_cannot_be_demoted(db, lone_owner):
    owner, other = lone_owner

    with pytest.raises(services.UserRefused, match="at least one active owner"):
        services.change_role(db.session, other, Actor.for_user(other), owner, "admin")

    assert reload(db, owner).role == "owner"


def test_last_active_owner_cannot_be_deactivated(db, lone_owner):
    owner, other = lone_owner

    with pytest.raises(services.UserRefused, match="at least one active owner"):
        services.set_active(db.session, other, Actor.for_user(other), owner, False)

    assert reload(db, owner).is_active is True


def test_an_inactive_owner_can_be_demoted(db, lone_owner):
    owner, other = lone_owner

    services.change_role(db.session, owner, Actor.for_user(owner), other, "viewer")
    db.session.commit()

    assert reload(db, other).role == "viewer"
    assert [e.action for e in audit_events(db, owner.organization_id)] == ["user.role_changed"]


def test_password_hashes_are_salted_and_checked(make_user):
    first, second = make_user(), make_user()
    for user in (first, second):  # the factory shares one precomputed hash
        user.set_password(PASSWORD)

    assert first.password_hash != second.password_hash
    assert first.password_hash.startswith(("scrypt:", "pbkdf2:", "$argon2"))
    assert first.check_password(PASSWORD)
    assert not first.check_password(PASSWORD.upper())


def test_an_owner_invitation_not_yet_accepted_does_not_count_as_an_active_owner(db, lone_owner, make_user):
    owner, other = lone_owner
    invited = make_user(org=owner.organization, role="owner")
    invited.password_hash = None  # invited, not accepted: cannot sign in yet
    db.session.commit()

    with pytest.raises(services.UserRefused, match="at least one active owner"):
        services.change_role(db.session, other, Actor.for_user(other), owner, "admin")

    assert reload(db, owner).role == "owner"
