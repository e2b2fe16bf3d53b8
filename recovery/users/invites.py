"""Invitations: an admin names the person and role, the invitee chooses their own password.

The invited user exists from the start with no password (they cannot sign
in) and `invited_at` set. The emailed link is signed with SECRET_KEY and
carries the user's id and session_version: sending the invitation again bumps
the version, so only the newest link works; accepting sets a password, after
which no invitation link works; revoking deletes the user.
"""

from __future__ import annotations

from datetime import timedelta

from itsdangerous import BadSignature, SignatureExpired
from sqlalchemy import update

from recovery import audit
from recovery.auth.reset import Signer
from recovery.auth.services import find_user_by_email
from recovery.models import Role, StaffEmail, StaffEmailKind, User, utcnow
from recovery.models.base import DbSession
from recovery.staffmail import services as staffmail
from recovery.transactions.validation import clean_email, clean_text
from recovery.users.services import UserRefused, check_can_grant, check_can_manage, check_password_strength

INVITE_MAX_AGE = timedelta(days=7)
_SALT = "recovery.invitation"


class InviteRefused(UserRefused):
    """The invitation link cannot be used (expired, replaced, accepted, revoked, altered)."""


def invite_token(signer: Signer, user: User) -> str:
    return str(signer.serializer(_SALT).dumps({"u": user.id, "v": user.session_version or 0}))


def _clean_name(name: str) -> str:
    try:
        return clean_text(name, "customer_name") or ""
    except ValueError as error:
        raise UserRefused(str(error), "name") from None


def _compose(session: DbSession, signer: Signer, user: User, by: User, base_url: str) -> StaffEmail:
    link = f"{base_url.rstrip('/')}/users/invitation/{invite_token(signer, user)}"
    inviter = by.name or by.email
    text = (
        f"Hello {user.name or user.email},\n\n"
        f"{inviter} invited you to {user.organization.name} on Recovery, as {user.role}.\n\n"
        f"Choose your password here within {INVITE_MAX_AGE.days} days:\n{link}\n\n"
        "If you did not expect this, ignore this email: nothing happens without you.\n"
    )
    subject = f"{inviter} invited you to {user.organization.name} on Recovery"
    return staffmail.compose(session, user, StaffEmailKind.INVITATION, subject, text)


def invite(
    session: DbSession,
    signer: Signer,
    by: User,
    actor: audit.Actor,
    email: str,
    name: str,
    role: str,
    base_url: str,
) -> StaffEmail:
    """Create the invited user and the invitation email; the caller commits, then sends it."""
    try:
        new_role = Role(role)
    except ValueError:
        raise UserRefused(f"Role must be one of: {', '.join(r.value for r in Role)}.", "role") from None
    check_can_grant(by, new_role)
    try:
        address = clean_email(email) or ""
    except ValueError as error:
        raise UserRefused(str(error)) from None
    if not address:
        raise UserRefused("An email address is required.")
    existing = find_user_by_email(session, address)
    if existing is not None:
        if existing.organization_id == by.organization_id and existing.is_invited:
            raise UserRefused(f"{address} is already invited. Send the invitation again from the list below.")
        raise UserRefused(f"{address} already has an account.")
    user = User(
        organization_id=by.organization_id,
        email=address,
        name=_clean_name(name),
        role=new_role.value,
        password_hash=None,
        invited_at=utcnow(),
    )
    session.add(user)
    session.flush()
    session.refresh(user, ["organization"])
    audit.record(
        session,
        actor,
        "user.invited",
        target_type="user",
        target_id=user.id,
        email=user.email,
        role=user.role,
    )
    return _compose(session, signer, user, by, base_url)


def _check_pending(by: User, target: User) -> None:
    check_can_manage(by, target)
    if not target.is_invited:
        raise UserRefused(f"{target.email} has already accepted the invitation.")


def resend(
    session: DbSession, signer: Signer, by: User, actor: audit.Actor, target: User, base_url: str
) -> StaffEmail:
    """A fresh invitation email; every earlier link stops working. The caller commits, then sends it."""
    _check_pending(by, target)
    target.session_version = (target.session_version or 0) + 1
    target.invited_at = utcnow()
    audit.record(
        session, actor, "user.invitation_resent", target_type="user", target_id=target.id, email=target.email
    )
    return _compose(session, signer, target, by, base_url)


def revoke(session: DbSession, by: User, actor: audit.Actor, target: User) -> None:
    """Withdraw a pending invitation: the user goes, and the email address is free to invite again."""
    _check_pending(by, target)
    audit.record(
        session, actor, "user.invitation_revoked", target_type="user", target_id=target.id, email=target.email
    )
    # SQLite enforces no ON DELETE SET NULL without its foreign-key pragma: say it here.
    session.execute(update(StaffEmail).where(StaffEmail.user_id == target.id).values(user_id=None))
    session.delete(target)


def user_for_token(session: DbSession, signer: Signer, token: str) -> User:
    """The invited user a link is for, if it is still good; else InviteRefused saying why."""
    try:
        data = signer.serializer(_SALT).loads(token, max_age=int(INVITE_MAX_AGE.total_seconds()))
    except SignatureExpired:
        raise InviteRefused(
            f"This invitation has expired: links work for {INVITE_MAX_AGE.days} days. "
            "Ask the admin who invited you to send it again."
        ) from None
    except BadSignature:
        raise InviteRefused(
            "This invitation link is not valid: it may have been cut off. Copy the whole link from the email."
        ) from None
    user_id = data.get("u") if isinstance(data, dict) else None
    user = session.get(User, user_id) if isinstance(user_id, int) and 0 < user_id < 2**63 else None
    if user is None:
        raise InviteRefused("This invitation was withdrawn. Ask an admin of your organization for a new one.")
    if not user.is_invited:
        raise InviteRefused("This invitation was already accepted: sign in with your email and password.")
    if data.get("v") != (user.session_version or 0):
        raise InviteRefused("A newer invitation was sent since this one: use the link in the latest email.")
    if not user.is_active:
        raise InviteRefused(f"This account is deactivated; ask an admin of {user.organization.name}.")
    return user


def accept(
    session: DbSession, signer: Signer, token: str, name: str, password: str, ip_address: str | None
) -> User:
    """Set the invitee's name and password; the caller commits and signs them in."""
    user = user_for_token(session, signer, token)
    cleaned = _clean_name(name)
    user.set_password(check_password_strength(password))
    user.name = cleaned or user.name
    audit.record(
        session,
        audit.Actor.for_user(user, ip_address),
        "user.invitation_accepted",
        target_type="user",
        target_id=user.id,
        email=user.email,
    )
    return user
