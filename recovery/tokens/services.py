"""API tokens: create, list, revoke, and authenticate a Bearer token.

Plain functions over a SQLAlchemy session; callers commit. The plaintext token
exists only in the return value of `create_token`: the database keeps its
SHA-256, so a leaked database does not leak working tokens.
"""

from __future__ import annotations

import hashlib
import re
import secrets
from datetime import datetime, timedelta

from sqlalchemy import select

from recovery import audit
from recovery.audit import Actor
from recovery.models import ApiToken, Role, User
from recovery.models.base import DbSession, utcnow
from recovery.refusals import Refused

TOKEN_PREFIX = "rcv_"
# secrets.token_urlsafe(32) is 43 characters of URL-safe base64 (256 bits).
_TOKEN = re.compile(r"^rcv_[A-Za-z0-9_-]{43}$")
# Enough to tell tokens apart on the dashboard (8 random characters), far too
# little to help guess the other 35.
DISPLAY_PREFIX_LENGTH = 12
NAME_MAX = 100
MAX_EXPIRES_DAYS = 3650
# `last_used_at` is for people ("used 3 minutes ago"), so a minute's precision
# is enough and spares the database a write on every API request.
LAST_USED_RESOLUTION = timedelta(minutes=1)


class TokenRefused(Refused):
    """The token cannot be created or revoked as asked; `field` names the input concerned."""

    field: str

    def __init__(self, message: str, field: str = "name") -> None:
        super().__init__(message, field=field)


class InvalidToken(Exception):
    """A presented token that does not authenticate; the message says why, for its holder."""


def hash_token(raw: str) -> str:
    return hashlib.sha256(raw.encode()).hexdigest()


def generate_token() -> str:
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def expiry_after(days: int | None, now: datetime | None = None) -> datetime | None:
    """The expiry `days` from now (None: never), refusing a number outside 1..MAX_EXPIRES_DAYS."""
    if days is None:
        return None
    if not 1 <= days <= MAX_EXPIRES_DAYS:
        raise TokenRefused(
            f"Expiry must be between 1 and {MAX_EXPIRES_DAYS} days (or empty for no expiry).",
            "expires_days",
        )
    return (now or utcnow()) + timedelta(days=days)


def _clean_role(role: Role | str) -> Role:
    try:
        return Role(role)
    except ValueError:
        raise TokenRefused(f"Role must be one of: {', '.join(r.value for r in Role)}.", "role") from None


def _check_can_manage(by: User | None, organization_id: int, role: Role, doing: str) -> None:
    """Only owners and admins manage tokens, and only up to their own role. None is the CLI."""
    if by is None:
        return
    if by.organization_id != organization_id:
        raise TokenRefused("That token belongs to another organization.", "role")
    if not by.has_role(Role.ADMIN):
        raise TokenRefused("Only owners and admins can manage API tokens.", "role")
    if not by.has_role(role):
        raise TokenRefused(f"You cannot {doing} tokens with the {role.value} role: above yours.", "role")


def create_token(
    session: DbSession,
    organization_id: int,
    name: str,
    role: Role | str,
    *,
    created_by: User | None,
    actor: Actor,
    expires_at: datetime | None = None,
) -> tuple[ApiToken, str]:
    """Add a token; return it with its plaintext, which is never available again."""
    name = (name or "").strip()
    if not name:
        raise TokenRefused("Give the token a name, e.g. the system that will use it.")
    if len(name) > NAME_MAX:
        raise TokenRefused(f"The name must have at most {NAME_MAX} characters (got {len(name)}).")
    clean_role = _clean_role(role)
    _check_can_manage(created_by, organization_id, clean_role, "create")
    if expires_at is not None and expires_at <= utcnow():
        raise TokenRefused("The expiry must be in the future.", "expires_days")
    raw = generate_token()
    token = ApiToken(
        organization_id=organization_id,
        name=name,
        role=clean_role.value,
        token_hash=hash_token(raw),
        prefix=raw[:DISPLAY_PREFIX_LENGTH],
        created_by_user_id=created_by.id if created_by else None,
        expires_at=expires_at,
    )
    session.add(token)
    session.flush()
    audit.record(
        session,
        actor,
        "api_token_created",
        target_type="api_token",
        target_id=token.id,
        name=token.name,
        role=token.role,
        prefix=token.prefix,
        expires_at=expires_at.isoformat() if expires_at else None,
    )
    return token, raw


def revoke_token(
    session: DbSession, token: ApiToken, *, by: User | None, actor: Actor, now: datetime | None = None
) -> bool:
    """Revoke the token; return False if it already was (safe to run twice)."""
    _check_can_manage(by, token.organization_id, Role(token.role), "revoke")
    if token.revoked_at is not None:
        return False
    token.revoked_at = now or utcnow()
    audit.record(
        session,
        actor,
        "api_token_revoked",
        target_type="api_token",
        target_id=token.id,
        name=token.name,
        role=token.role,
        prefix=token.prefix,
    )
    return True


def list_tokens(session: DbSession, organization_id: int) -> list[ApiToken]:
    """The organization's tokens, newest first, revoked ones included (they explain audit entries)."""
    return list(
        session.scalars(
            select(ApiToken)
            .where(ApiToken.organization_id == organization_id)
            .order_by(ApiToken.created_at.desc(), ApiToken.id.desc())
        )
    )


def get_for_org(session: DbSession, organization_id: int, token_id: int) -> ApiToken | None:
    return session.scalar(
        select(ApiToken).where(ApiToken.id == token_id, ApiToken.organization_id == organization_id)
    )


def verify_token(session: DbSession, raw_token: str, now: datetime) -> ApiToken:
    """The usable token for `raw_token`, or InvalidToken saying why.

    The reasons are safe to tell: only someone holding the secret learns that
    it was revoked or expired, and an unknown token is just unknown, whatever
    organization might have had it.
    """
    if not _TOKEN.match(raw_token or ""):
        raise InvalidToken(
            f"That is not a Recovery API token: tokens start with {TOKEN_PREFIX} followed by "
            "43 characters. Create one under Settings → API tokens."
        )
    token = session.scalar(select(ApiToken).where(ApiToken.token_hash == hash_token(raw_token)))
    if token is None:
        raise InvalidToken("This API token is not recognised. Check that it was copied whole.")
    if token.revoked_at is not None:
        raise InvalidToken("This API token has been revoked. Ask an owner or admin for a new one.")
    if not token.is_usable(now):
        raise InvalidToken("This API token has expired. Ask an owner or admin for a new one.")
    return token


def mark_used(token: ApiToken, now: datetime) -> bool:
    """Record the use at most once per LAST_USED_RESOLUTION; return whether it changed."""
    if token.last_used_at is not None and now - token.last_used_at < LAST_USED_RESOLUTION:
        return False
    token.last_used_at = now
    return True


def authenticate(session: DbSession, raw_token: str, now: datetime) -> ApiToken | None:
    """The usable token for `raw_token` (its use recorded), or None if unknown, revoked or expired."""
    try:
        token = verify_token(session, raw_token, now)
    except InvalidToken:
        return None
    mark_used(token, now)
    return token
