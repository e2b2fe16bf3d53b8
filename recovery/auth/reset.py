"""Forgotten passwords: a signed, expiring, single-use link by email, and setting the new password.

The link carries the user's id and a digest of their current password hash,
signed with SECRET_KEY (itsdangerous). Setting a password changes the hash,
so a used link, or any link older than the latest password change, is
refused with nothing stored per link.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from itsdangerous import BadSignature, SignatureExpired, URLSafeTimedSerializer

from recovery import audit
from recovery.auth.services import find_user_by_email
from recovery.models import StaffEmail, StaffEmailKind, User
from recovery.models.base import DbSession
from recovery.staffmail import services as staffmail
from recovery.users.services import UserRefused, check_password_strength

RESET_MAX_AGE = timedelta(hours=1)
_SALT = "recovery.password-reset"


class ResetRefused(UserRefused):
    """The reset link cannot be used (expired, used, altered) or the new password is refused."""


@dataclass(frozen=True)
class Signer:
    """What signs and checks links: the app's secret key and its earlier ones."""

    secret_key: str
    fallbacks: tuple[str, ...] = ()

    def serializer(self, salt: str) -> URLSafeTimedSerializer:
        # itsdangerous signs with the last key and accepts any of them.
        return URLSafeTimedSerializer([*self.fallbacks, self.secret_key], salt=salt)

    @classmethod
    def from_config(cls, config: Any) -> Signer:
        return cls(str(config["SECRET_KEY"]), tuple(config.get("SECRET_KEY_FALLBACKS") or ()))


def _hash_digest(user: User) -> str:
    return hashlib.sha256((user.password_hash or "").encode()).hexdigest()[:32]


def reset_token(signer: Signer, user: User) -> str:
    return str(signer.serializer(_SALT).dumps({"u": user.id, "p": _hash_digest(user)}))


def request_reset(
    session: DbSession, signer: Signer, email_address: str, base_url: str, ip_address: str | None
) -> StaffEmail | None:
    """Write the reset email for the account with this address, if one may reset; else None.

    Only an active user with a password gets one: a deactivated account's
    admin reactivates it, and an invitee's link is the invitation. The caller
    answers the same either way.
    """
    user = find_user_by_email(session, email_address)
    if user is None or not user.is_active or user.is_invited:
        return None
    link = f"{base_url.rstrip('/')}/reset-password/{reset_token(signer, user)}"
    minutes = int(RESET_MAX_AGE.total_seconds() // 60)
    text = (
        f"Hello {user.name or user.email},\n\n"
        f"Someone (we hope you) asked to reset the password of {user.email} on Recovery "
        f"for {user.organization.name}.\n\n"
        f"Choose a new password here within {minutes} minutes:\n{link}\n\n"
        "The link works once. If you did not ask for it, ignore this email: your password stays as it is.\n"
    )
    email = staffmail.compose(
        session, user, StaffEmailKind.PASSWORD_RESET, "Reset your Recovery password", text
    )
    audit.record(
        session,
        audit.Actor.for_user(user, ip_address),
        "user.password_reset_requested",
        target_type="user",
        target_id=user.id,
    )
    return email


def user_for_token(session: DbSession, signer: Signer, token: str) -> User:
    """The user a reset link is for, if it is still good; else ResetRefused saying why."""
    try:
        data = signer.serializer(_SALT).loads(token, max_age=int(RESET_MAX_AGE.total_seconds()))
    except SignatureExpired:
        raise ResetRefused(
            "This reset link has expired: links work for one hour. Ask for a new one."
        ) from None
    except BadSignature:
        raise ResetRefused(
            "This reset link is not valid: it may have been cut off. Ask for a new one."
        ) from None
    user_id = data.get("u") if isinstance(data, dict) else None
    user = session.get(User, user_id) if isinstance(user_id, int) and 0 < user_id < 2**63 else None
    if user is None or not user.is_active or user.is_invited:
        raise ResetRefused("This reset link is not valid any more. Ask for a new one.")
    if data.get("p") != _hash_digest(user):
        raise ResetRefused(
            "This reset link was already used, or the password has changed since. Ask for a new one."
        )
    return user


def reset_password(
    session: DbSession, signer: Signer, token: str, password: str, ip_address: str | None
) -> User:
    """Set the new password of the link's user and end every sign-in they had; the caller commits."""
    user = user_for_token(session, signer, token)
    user.set_password(check_password_strength(password))  # ends every sign-in
    audit.record(
        session,
        audit.Actor.for_user(user, ip_address),
        "user.password_reset",
        target_type="user",
        target_id=user.id,
    )
    return user
