"""Start recoveries by themselves: for failed payments imported from Stripe, when the organization asks."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select

from recovery import audit
from recovery.audit import Actor
from recovery.logs import get_logger
from recovery.models import Organization, RecoveryAttempt, Transaction, TransactionSource, TransactionStatus
from recovery.models.base import DbSession
from recovery.recoveries.refusals import RecoveryRefused
from recovery.rules.starting import start_by_rules

log = get_logger("recovery.recoveries")

ACTOR_LABEL = "Automatic recovery"


@dataclass(frozen=True)
class AutoStart:
    """What happened: `outcome` is started, off, not_failed, already_started, refused or missing.

    Or held / not_recovered: the organization's rules held the failure for
    review or said not to recover it (`reason` says why).
    """

    outcome: str
    attempt: RecoveryAttempt | None = None
    reason: str | None = None


def auto_start(session: DbSession, transaction_id: int, *, now: datetime) -> AutoStart:
    """Start the transaction's recovery as the organization's rules say, if it has auto-start on.

    Safe to run twice: a transaction that has had any recovery, or is no longer
    failed, is left alone. A refusal (no usable contact, excluded failure code)
    is put on the transaction's timeline, not raised. The first send is placed
    once the caller's commit makes the recovery true.
    """
    transaction = session.get(Transaction, transaction_id, with_for_update=True)
    if transaction is None:
        return AutoStart("missing")
    organization = session.get(Organization, transaction.organization_id)
    assert organization is not None
    if not organization.auto_start_recoveries or transaction.source != TransactionSource.STRIPE:
        return AutoStart("off")
    if transaction.status != TransactionStatus.FAILED:
        return AutoStart("not_failed")
    earlier = session.scalar(
        select(RecoveryAttempt.id).where(RecoveryAttempt.transaction_id == transaction.id)
    )
    if earlier is not None:
        return AutoStart("already_started")
    actor = Actor.system(organization.id, ACTOR_LABEL)
    try:
        with session.begin_nested():
            started = start_by_rules(session, transaction, actor, now=now)
    except RecoveryRefused as refused:
        audit.record(
            session,
            actor,
            "recovery.auto_start_refused",
            transaction_id=transaction.id,
            target_type="transaction",
            target_id=transaction.id,
            reason=refused.message,
        )
        log.info("recovery_auto_start_refused", transaction_id=transaction.id, reason=refused.message)
        return AutoStart("refused", reason=refused.message)
    if started.attempt is None:
        assert started.decision is not None
        log.info("recovery_auto_start_ruled", transaction_id=transaction.id, outcome=started.outcome)
        return AutoStart(started.outcome, reason=started.decision.reason)
    log.info("recovery_auto_started", transaction_id=transaction.id, attempt_id=started.attempt.id)
    return AutoStart("started", started.attempt)
