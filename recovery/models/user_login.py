"""One sign-in of a staff member on one device: ended by signing out, server-side."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import ForeignKey, String
from sqlalchemy.orm import Mapped, mapped_column

from recovery.models.base import Base, BigId, UTCDateTime, utcnow


class UserLogin(Base):
    """Checked on every request: a copied session or remember cookie dies with its row's `ended_at`."""

    __tablename__ = "user_login"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("user.id"), index=True)
    # Random, and part of the cookie's id: a login's row id alone opens nothing.
    nonce: Mapped[str] = mapped_column(String(64))
    is_remembered: Mapped[bool] = mapped_column(default=False)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime())
    ended_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    ip_address: Mapped[str | None] = mapped_column(String(64))
    user_agent: Mapped[str | None] = mapped_column(String(300))
