"""Manage an organization's staff: change role, deactivate (invitations: recovery/users/invites.py).

Rules: only owners grant or touch the owner role; nobody changes their own
role or deactivates themselves; an organization always keeps an active owner.
"""

from __future__ import annotations

from sqlalchemy import func, select

from recovery import audit
from recovery.audit import Actor
from recovery.auth.services import find_user_by_email
from recovery.models import Role, User
from recovery.models.base import DbSession
from recovery.refusals import Refused
from recovery.transactions.validation import clean_email

MIN_PASSWORD = 12


class UserRefused(Refused):
    """The change is not allowed; the message says why, `field` which input it concerns."""

    field: str

    def __init__(self, message: str, field: str = "email") -> None:
        super().__init__(message, field=field)


def check_password_strength(password: str) -> str:
    if len(password) < MIN_PASSWORD:
        raise UserRefused(f"The password must have at least {MIN_PASSWORD} characters.", "password")
    if len(password) > 256:
        raise UserRefused("The password must have at most 256 characters.", "password")
    return password


def check_can_grant(by: User, role: Role) -> None:
    if role == Role.OWNER and not by.has_role(Role.OWNER):
        raise UserRefused("Only an owner can make someone an owner.", "role")


def create_user(
    session: DbSession, organization_id: int, email: str, password: str, role: Role | str, name: str = ""
) -> User:
    """Add a user with a password (CLI, demo); raise UserRefused for a used email, weak password, bad role.

    Staff invite people from the Users page instead (recovery/users/invites.py).
    """
    try:
        email = clean_email(email) or ""
    except ValueError as error:
        raise UserRefused(str(error)) from None
    if not email:
        raise UserRefused("An email address is required.")
    try:
        role = Role(role)
    except ValueError:
        raise UserRefused(f"Role must be one of: {', '.join(r.value for r in Role)}.", "role") from None
    if find_user_by_email(session, email) is not None:
        raise UserRefused(f"{email} already has an account.")
    user = User(organization_id=organization_id, email=email, name=name.strip()[:200], role=role.value)
    user.set_password(check_password_strength(password))
    session.add(user)
    session.flush()
    return user


def _active_owners(session: DbSession, organization_id: int) -> int:
    return (
        session.scalar(
            select(func.count()).where(
                User.organization_id == organization_id,
                User.role == Role.OWNER.value,
                User.is_active.is_(True),
                User.password_hash.is_not(None),  # an invited owner has not accepted yet
            )
        )
        or 0
    )


def check_can_manage(by: User, target: User) -> None:
    if target.id == by.id:
        raise UserRefused("You cannot change your own role or access.")
    if target.role == Role.OWNER and not by.has_role(Role.OWNER):
        raise UserRefused("Only an owner can change another owner.")


def change_role(session: DbSession, by: User, actor: Actor, target: User, role: str) -> None:
    try:
        new_role = Role(role)
    except ValueError:
        raise UserRefused("Unknown role.") from None
    check_can_manage(by, target)
    check_can_grant(by, new_role)
    if target.role == new_role:
        return
    if (
        target.role == Role.OWNER
        and target.is_active
        and _active_owners(session, target.organization_id) <= 1
    ):
        raise UserRefused("The organization must keep at least one active owner.")
    old = target.role
    target.role = new_role.value
    audit.record(
        session,
        actor,
        "user.role_changed",
        target_type="user",
        target_id=target.id,
        email=target.email,
        old=old,
        new=new_role.value,
    )


def set_active(session: DbSession, by: User, actor: Actor, target: User, active: bool) -> None:
    check_can_manage(by, target)
    if target.is_active == active:
        return
    if not active and target.role == Role.OWNER and _active_owners(session, target.organization_id) <= 1:
        raise UserRefused("The organization must keep at least one active owner.")
    target.is_active = active
    if not active:
        target.end_sessions()
    action = "user.reactivated" if active else "user.deactivated"
    audit.record(session, actor, action, target_type="user", target_id=target.id, email=target.email)
