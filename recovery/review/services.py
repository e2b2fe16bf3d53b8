"""Holding a transaction for review, and the queue staff work through.

Held by a rule (`hold_for_review`) or at the end of a campaign that ends that
way; staff approve (start a campaign) or dismiss it, each audited.

This module imports `recoveries.lifecycle` (approve starts a recovery), so
lifecycle must not import it back: a campaign's end holds from its own module.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from sqlalchemy import select

from recovery import audit
from recovery.audit import Actor
from recovery.models import RecoveryAttempt, Transaction
from recovery.models.base import DbSession
from recovery.recoveries import lifecycle
from recovery.refusals import Refused
from recovery.rules.choice import current_version, usable_campaign
from recovery.rules.decision import Decision

HELD = "held"
APPROVED = "approved"
DISMISSED = "dismissed"
# The queue's page shows this many, oldest first; the rest wait for the next page.
PAGE = 100


class ReviewRefused(Refused):
    """The transaction is not in the review queue, or the choice made for it cannot be used."""


def hold(
    session: DbSession,
    transaction: Transaction,
    actor: Actor,
    *,
    reason: str,
    now: datetime,
    decision: Decision | None = None,
) -> bool:
    """Put the transaction in the review queue; False if it is there already.

    `decision`: the rule that held it, named on the timeline.
    """
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
        summary=decision.sentence if decision is not None else f"Held for review: {reason}",
        reason=reason,
        rule_id=decision.rule_id if decision else None,
        rule_name=decision.rule_name if decision else None,
        rule_version=decision.rule_version if decision else None,
    )
    return True


def held(session: DbSession, organization_id: int, *, limit: int = PAGE) -> Sequence[Transaction]:
    """The organization's transactions waiting for review, longest waiting first."""
    return session.scalars(
        select(Transaction)
        .where(Transaction.organization_id == organization_id, Transaction.review_status == HELD)
        .order_by(Transaction.held_at, Transaction.id)
        .limit(limit)
    ).all()


def _held_or_refuse(transaction: Transaction) -> None:
    if transaction.review_status != HELD:
        raise ReviewRefused(
            f"Transaction {transaction.transaction_ref} is not waiting for review.", status=409
        )


def approve(
    session: DbSession, transaction: Transaction, actor: Actor, *, campaign_id: int, now: datetime
) -> RecoveryAttempt:
    """Start the chosen campaign for the held transaction and take it off the queue.

    Refused (and still held) if the campaign is not the organization's or is
    archived, or the start itself is refused (paid meanwhile, no channel...).
    """
    _held_or_refuse(transaction)
    campaign = usable_campaign(session, transaction.organization_id, campaign_id, "campaign_id")
    decision = Decision.chosen(
        campaign.id, f"Approved after review by {actor.label}: campaign “{campaign.name}”."
    )
    started = lifecycle.start_recovery(
        session,
        transaction,
        actor,
        now=now,
        campaign_version=current_version(session, campaign.id),
        decision=decision,
    )
    attempt = started.attempt
    transaction.no_recovery_reason = None
    transaction.review_status = APPROVED
    audit.record(
        session,
        actor,
        "transaction.review_approved",
        transaction_id=transaction.id,
        target_type="transaction",
        target_id=transaction.id,
        at=now,
        campaign_id=campaign.id,
        campaign_name=campaign.name,
        attempt_id=attempt.id,
    )
    return attempt


def dismiss(
    session: DbSession, transaction: Transaction, actor: Actor, *, now: datetime, reason: str
) -> None:
    """Take the held transaction off the queue without starting anything; the reason is kept."""
    _held_or_refuse(transaction)
    text = (reason or "").strip()
    if not text:
        raise ReviewRefused("Say why the transaction is dismissed.", field="reason")
    if len(text) > 500:
        raise ReviewRefused("The reason is longer than 500 characters.", field="reason")
    transaction.review_status = DISMISSED
    transaction.review_reason = text
    audit.record(
        session,
        actor,
        "transaction.review_dismissed",
        transaction_id=transaction.id,
        target_type="transaction",
        target_id=transaction.id,
        at=now,
        reason=text,
    )
