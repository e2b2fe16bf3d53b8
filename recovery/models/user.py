"""A staff member of one organization, with a role."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum

from sqlalchemy import ForeignKey, String, UniqueConstraint, update
from sqlalchemy.orm import Mapped, mapped_column, object_session, relationship
from werkzeug.security import check_password_hash, generate_password_hash

from recovery.models.base import Base, BigId, UTCDateTime, utcnow
from recovery.models.organization import Organization
from recovery.models.user_login import UserLogin


class Role(StrEnum):
    """Staff roles, weakest first; each role can do everything the ones before it can."""

    VIEWER = "viewer"
    OPERATOR = "operator"
    ADMIN = "admin"
    OWNER = "owner"

    @property
    def rank(self) -> int:
        return list(Role).index(self)

    def at_least(self, other: Role | str) -> bool:
        return self.rank >= Role(other).rank


class User(Base):
    __tablename__ = "user"
    # Emails are unique per organization; sign-in takes the email alone, so the
    # CLI and invite service also refuse an email already used anywhere.
    __table_args__ = (UniqueConstraint("email", name="uq_user_email"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    organization_id: Mapped[int] = mapped_column(ForeignKey("organization.id"), index=True)
    email: Mapped[str] = mapped_column(String(254))
    name: Mapped[str] = mapped_column(String(200), default="")
    # None while an invitation is pending: nobody can sign in until the invitee sets one.
    password_hash: Mapped[str | None] = mapped_column(String(255))
    # When the latest invitation email was sent (None: created with a password, e.g. by the CLI).
    invited_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    role: Mapped[str] = mapped_column(String(16), default=Role.VIEWER.value)
    is_active: Mapped[bool] = mapped_column(default=True)
    # Part of the session id: bumping it ends every session and remember cookie
    # issued before (deactivation, password change).
    session_version: Mapped[int] = mapped_column(default=0, server_default="0")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    last_login_at: Mapped[datetime | None] = mapped_column(UTCDateTime())

    organization: Mapped[Organization] = relationship(lazy="joined")

    # flask-login protocol, kept here so the model needs no Flask import.
    @property
    def is_authenticated(self) -> bool:
        return True

    @property
    def is_anonymous(self) -> bool:
        return False

    # The sign-in this request runs under and its nonce, set by
    # recovery.auth.logins (at sign-in, and from the cookie on each request);
    # never stored on the user. flask-login's id carries them. (Plain
    # annotations: __allow_unmapped__ lets the ORM leave them alone.)
    __allow_unmapped__ = True
    current_login: UserLogin | None = None
    current_nonce: str | None = None

    def get_id(self) -> str:
        """Return flask-login's id: `<user id>.<session_version>.<login id>.<nonce>`.

        The session and the remember cookie carry it; recovery.auth.logins
        checks every part on each request, so ending the sign-in or bumping the
        version makes both cookies worthless.
        """
        if self.current_login is None or not self.current_nonce:
            raise RuntimeError("No sign-in attached to the user: start one with recovery.auth.logins.")
        return f"{self.id}.{self.session_version or 0}.{self.current_login.id}.{self.current_nonce}"

    def end_sessions(self) -> None:
        """Invalidate every session and remember cookie issued so far, and end every sign-in."""
        self.session_version = (self.session_version or 0) + 1
        session = object_session(self)
        if session is not None and self.id is not None:
            session.execute(
                update(UserLogin)
                .where(UserLogin.user_id == self.id, UserLogin.ended_at.is_(None))
                .values(ended_at=utcnow())
            )

    def set_password(self, password: str) -> None:
        if self.password_hash:
            self.end_sessions()
        self.password_hash = generate_password_hash(password)

    def check_password(self, password: str) -> bool:
        if self.password_hash is None:
            return False
        return check_password_hash(self.password_hash, password)

    @property
    def is_invited(self) -> bool:
        """Whether the user was invited and has not yet set a password (cannot sign in)."""
        return self.password_hash is None

    def has_role(self, role: Role | str) -> bool:
        return Role(self.role).at_least(role)

    def __repr__(self) -> str:
        return f"<User {self.email} {self.role}>"
