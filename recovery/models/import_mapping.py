"""The column mapping an organization last confirmed for a file's header."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import JSON, ForeignKey, String, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from recovery.models.base import Base, BigId, UTCDateTime, utcnow


class ImportMapping(Base):
    """Remembered per organization and header, so the next export of the same shape maps itself.

    Keyed by a fingerprint of the normalised header rather than the header text:
    a Stripe export has ~50 columns, too long for a unique index on every backend.
    """

    __tablename__ = "import_mapping"
    __table_args__ = (UniqueConstraint("organization_id", "fingerprint"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    organization_id: Mapped[int] = mapped_column(ForeignKey("organization.id"))
    fingerprint: Mapped[str] = mapped_column(String(64))
    # {"transaction_ref": "id", "amount": "amount", ...}: target field → normalised column name.
    mapping: Mapped[dict[str, str]] = mapped_column(JSON, default=dict)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow, onupdate=utcnow)
