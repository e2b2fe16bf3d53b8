"""A staff member changes their own name or password."""

from __future__ import annotations

from recovery import audit
from recovery.models import User
from recovery.models.base import DbSession
from recovery.transactions.validation import clean_text
from recovery.users.services import UserRefused, check_password_strength


def change_name(session: DbSession, user: User, actor: audit.Actor, name: str) -> bool:
    """Set the user's own name; return whether it changed."""
    try:
        # A person's name, held to the same rules as a customer's (no control or bidi tricks, 200 at most).
        cleaned = clean_text(name, "customer_name") or ""
    except ValueError as error:
        raise UserRefused(str(error), "name") from None
    if cleaned == user.name:
        return False
    old, user.name = user.name, cleaned
    audit.record(
        session, actor, "user.name_changed", target_type="user", target_id=user.id, old=old, new=cleaned
    )
    return True


def change_password(session: DbSession, user: User, actor: audit.Actor, current: str, new: str) -> None:
    """Set a new password after checking the current one; every sign-in ends (the caller starts a new one)."""
    if not user.check_password(current):
        raise UserRefused("The current password is not right.", "current")
    if new == current:
        raise UserRefused("The new password is the same as the current one.", "password")
    user.set_password(check_password_strength(new))
    audit.record(session, actor, "user.password_changed", target_type="user", target_id=user.id)
