"""Staff authentication, free of Flask's request."""

from __future__ import annotations

from sqlalchemy import func, select
from werkzeug.security import check_password_hash, generate_password_hash

from recovery.models import User, utcnow
from recovery.models.base import DbSession
from recovery.refusals import Refused

# Checked when the email is unknown so that a miss costs as long as a hit.
_DUMMY_HASH = generate_password_hash("not-a-real-password")


def find_user_by_email(session: DbSession, email: str) -> User | None:
    email = email.strip().lower()
    return session.scalar(select(User).where(func.lower(User.email) == email))


class AccountDeactivated(Refused):
    """The email and password are right but the account is deactivated.

    Said only after the right password: to anyone else a deactivated account
    looks like any wrong email or password.
    """

    status = 403

    def __init__(self, organization_name: str) -> None:
        super().__init__(
            f"This account is deactivated; ask an admin of {organization_name} to reactivate it.",
            field="password",
        )


def authenticate(session: DbSession, email: str, password: str) -> User | None:
    """Return the active user with this email and password, else None.

    Raise AccountDeactivated when the password is right but the account is off.
    """
    user = find_user_by_email(session, email)
    if user is None or user.password_hash is None:
        # Unknown, or invited and not accepted: hash all the same, so a miss costs as long as a hit.
        check_password_hash(_DUMMY_HASH, password)
        return None
    if not user.check_password(password):
        return None
    if not user.is_active:
        raise AccountDeactivated(user.organization.name)
    user.last_login_at = utcnow()
    return user
