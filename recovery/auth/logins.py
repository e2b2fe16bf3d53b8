"""Sign-ins (UserLogin rows): start one, check it on every request, end one or all.

flask-login's id, which the session and the remember cookie carry, is
`<user id>.<session_version>.<login id>.<nonce>` (User.get_id). A request is
signed in only while its sign-in row is neither ended nor expired, its nonce
matches and the user's session_version is unchanged; so signing out ends a
copied cookie too, server-side. Ids of the old `<user id>.<version>` form are
simply refused: those users sign in again.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from datetime import datetime, timedelta

from sqlalchemy import select
from ua_parser import parse as parse_user_agent

from recovery import audit
from recovery.models import User, UserLogin, utcnow
from recovery.models.base import DbSession

_MAX_ID = 2**63 - 1  # past BIGINT the lookup would be a database error, not a miss
_MAX_NONCE = 64


def _digest(nonce: str) -> str:
    """Store only the nonce's SHA-256: a read of the table opens no session."""
    return hashlib.sha256(nonce.encode()).hexdigest()


def start_login(
    session: DbSession,
    user: User,
    *,
    remember: bool,
    lifetime: timedelta,
    ip_address: str | None,
    user_agent: str | None,
    now: datetime | None = None,
) -> UserLogin:
    """Record a sign-in of `user` that lasts `lifetime`, and attach it so `user.get_id()` carries it."""
    now = now or utcnow()
    nonce = secrets.token_urlsafe(32)
    login = UserLogin(
        user_id=user.id,
        nonce=_digest(nonce),
        is_remembered=remember,
        created_at=now,
        expires_at=now + lifetime,
        ip_address=(ip_address or "")[:64] or None,
        user_agent=(user_agent or "")[:300] or None,
    )
    session.add(login)
    session.flush()
    user.current_login, user.current_nonce = login, nonce
    return login


def _parse(session_id: str) -> tuple[int, int, int, str] | None:
    parts = session_id.split(".")
    if len(parts) != 4:
        return None
    user_id, version, login_id, nonce = parts
    if not (user_id.isdigit() and version.isdigit() and login_id.isdigit()):
        return None
    if not 0 < len(nonce) <= _MAX_NONCE or int(user_id) > _MAX_ID or int(login_id) > _MAX_ID:
        return None
    return int(user_id), int(version), int(login_id), nonce


def load_signed_in(session: DbSession, session_id: str, now: datetime | None = None) -> User | None:
    """Return the active user whose sign-in `session_id` names and is still current, else None.

    Runs on every request: one query (user, sign-in and organization together).
    """
    parsed = _parse(session_id)
    if parsed is None:
        return None
    user_id, version, login_id, nonce = parsed
    row = session.execute(
        select(User, UserLogin)
        .join(UserLogin, UserLogin.user_id == User.id)
        .where(User.id == user_id, UserLogin.id == login_id)
    ).one_or_none()
    if row is None:
        return None
    user, login = row
    current = (
        user.is_active
        and (user.session_version or 0) == version
        and login.ended_at is None
        and login.expires_at > (now or utcnow())
        and hmac.compare_digest(login.nonce, _digest(nonce))
    )
    if not current:
        return None
    user.current_login, user.current_nonce = login, nonce
    return user


def end_login(login: UserLogin, now: datetime | None = None) -> None:
    """End one sign-in: its session and remember cookies open nothing from now on. Safe to run twice."""
    if login.ended_at is None:
        login.ended_at = now or utcnow()


def active_logins(session: DbSession, user: User, now: datetime | None = None) -> list[UserLogin]:
    """The user's sign-ins that are neither ended nor expired, newest first."""
    return list(
        session.scalars(
            select(UserLogin)
            .where(
                UserLogin.user_id == user.id,
                UserLogin.ended_at.is_(None),
                UserLogin.expires_at > (now or utcnow()),
            )
            .order_by(UserLogin.created_at.desc(), UserLogin.id.desc())
        )
    )


def sign_out_everywhere(session: DbSession, user: User, actor: audit.Actor) -> int:
    """End every sign-in of `user`, this one included, and bump its session_version.

    Return how many sign-ins were open.
    """
    ended = len(active_logins(session, user))
    user.end_sessions()
    audit.record(
        session,
        actor,
        "user.signed_out_everywhere",
        target_type="user",
        target_id=user.id,
        sessions=ended,
    )
    return ended


def device_label(user_agent: str | None) -> str:
    """A sign-in's device as a person names it ("Chrome 131 on Windows", "Mobile Safari on iPhone").

    ua-parser's rules (Browserscope's, kept current by the package): user
    agents are too many and too odd for hand-written matching.
    """
    if not user_agent:
        return "Unknown device"
    parsed = parse_user_agent(user_agent)
    browser = parsed.user_agent
    name = browser.family if browser and browser.family != "Other" else "Unknown browser"
    if browser and browser.major:
        name += f" {browser.major}"
    device = parsed.device.family if parsed.device and parsed.device.family not in ("Other", "Spider") else ""
    system = parsed.os.family if parsed.os and parsed.os.family != "Other" else ""
    where = device if device and device not in ("Mac", "Generic Smartphone") else system
    return f"{name} on {where}" if where else name
