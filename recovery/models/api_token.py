"""A Bearer token for the JSON API: one organization, one role, revocable."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import ForeignKey, String
from sqlalchemy.orm import Mapped, mapped_column

from recovery.models.base import Base, BigId, UTCDateTime, utcnow
from recovery.models.user import Role


class ApiToken(Base):
    __tablename__ = "api_token"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    organization_id: Mapped[int] = mapped_column(ForeignKey("organization.id"), index=True)
    name: Mapped[str] = mapped_column(String(100))
    role: Mapped[str] = mapped_column(String(16))
    # SHA-256 of the secret: tokens are long random strings, so a fast hash is
    # enough and lets every API request find its token with one index lookup.
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    # The first characters of the token, shown in the dashboard to tell tokens apart.
    prefix: Mapped[str] = mapped_column(String(16))
    created_by_user_id: Mapped[int | None] = mapped_column(ForeignKey("user.id"))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    last_used_at: Mapped[datetime | None] = mapped_column(UTCDateTime())

    def is_usable(self, now: datetime) -> bool:
        """Whether the token may authenticate a request at `now`."""
        if self.revoked_at is not None:
            return False
        return self.expires_at is None or self.expires_at > now

    def has_role(self, role: Role | str) -> bool:
        return Role(self.role).at_least(role)

    def __repr__(self) -> str:
        return f"<ApiToken {self.prefix}… {self.role}>"
