"""Holding a transaction for review, and the queue staff work through.

Held by a rule (`hold_for_review`) or at the end of a campaign that ends that
way; staff approve (start a campaign) or dismiss it, each audited.
"""

from __future__ import annotations

from datetime import datetime

from recovery import audit
from recovery.audit import Actor
from recovery.models import Transaction
from recovery.models.base import DbSession

HELD = "held"
APPROVED = "approved"
DISMISSED = "dismissed"


def hold(session: DbSession, transaction: Transaction, actor: Actor, *, reason: str, now: datetime) -> bool:
    """Put the transaction in the review queue; False if it is there already."""
    if transaction.review_status == HELD:
        return False
    transaction.review_status = HELD
    transaction.review_reason = reason[:500]
    transaction.held_at = now
    audit.record(
        session,
        actor,
        "transaction.held_for_review",
        transaction_id=transaction.id,
        target_type="transaction",
        target_id=transaction.id,
        at=now,
        summary=f"Held for review: {reason}",
    )
    return True
