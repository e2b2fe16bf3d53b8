"""Staff authentication, free of Flask's request."""

from __future__ import annotations

from sqlalchemy import func, select
from werkzeug.security import check_password_hash, generate_password_hash

from recovery.models import User, utcnow
from recovery.models.base import DbSession

# Checked when the email is unknown so that a miss costs as long as a hit.
_DUMMY_HASH = generate_password_hash("not-a-real-password")


def find_user_by_email(session: DbSession, email: str) -> User | None:
    email = email.strip().lower()
    return session.scalar(select(User).where(func.lower(User.email) == email))


def authenticate(session: DbSession, email: str, password: str) -> User | None:
    """Return the active user with this email and password, else None."""
    user = find_user_by_email(session, email)
    if user is None:
        check_password_hash(_DUMMY_HASH, password)
        return None
    if not user.check_password(password) or not user.is_active:
        return None
    user.last_login_at = utcnow()
    return user
