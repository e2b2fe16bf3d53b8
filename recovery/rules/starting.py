"""Start a recovery the way the organization's rules say: a campaign, nothing, or the review queue.

Every start made without an explicit campaign or schedule comes here: the
automatic start of a Stripe failure, a CSV import's "start recoveries", the
API without `campaign_id` or `schedule`, a bulk start. An organization with no
rules gets today's start (its own schedule), unchanged.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime

from recovery import audit
from recovery.audit import Actor
from recovery.models import Campaign, RecoveryAttempt, RuleAction, Transaction, TransactionStatus
from recovery.models.base import DbSession
from recovery.recoveries import lifecycle
from recovery.recoveries.refusals import AlreadyActive, RecoveryRefused
from recovery.review import services as review
from recovery.rules.choice import CurrentVersions, current_version, usable_campaign
from recovery.rules.decision import Decision
from recovery.rules.services import LoadedRule, decide_with, load_rules


@dataclass(frozen=True)
class RuleStart:
    """What the start did: an attempt (a campaign or the schedule), or none (not recovered, held).

    `decision` is None when the organization has no rules.
    """

    attempt: RecoveryAttempt | None
    decision: Decision | None

    @property
    def outcome(self) -> str:
        """started, not_recovered or held."""
        if self.attempt is not None:
            return "started"
        assert self.decision is not None
        return "held" if self.decision.action == RuleAction.HOLD_FOR_REVIEW else "not_recovered"


def start_by_rules(
    session: DbSession,
    transaction: Transaction,
    actor: Actor,
    *,
    now: datetime,
    channels: Sequence[str] | None = None,
    allow_fallback: bool | None = None,
    rules: Sequence[LoadedRule] | None = None,
    versions: CurrentVersions | None = None,
) -> RuleStart:
    """Decide by the rules (`rules`: loaded already, for a batch) and do what the matching rule says.

    `versions`: the campaigns' current versions, kept for a batch.

    Raises RecoveryRefused as `lifecycle.start_recovery` does (paid, closed,
    running already, no channel...), for every action alike: a rule never
    holds or marks a transaction that could not be started anyway.
    """
    loaded = load_rules(session, transaction.organization_id) if rules is None else rules
    decision = decide_with(loaded, transaction, now=now)
    if decision is None:
        started = lifecycle.start_recovery(
            session, transaction, actor, now=now, channels=channels, allow_fallback=allow_fallback
        )
        return RuleStart(started.attempt, None)
    if decision.action == RuleAction.START_CAMPAIGN:
        assert decision.campaign_id is not None
        return RuleStart(
            start_campaign(
                session,
                transaction,
                actor,
                decision,
                now=now,
                channels=channels,
                allow_fallback=allow_fallback,
                versions=versions,
            ),
            decision,
        )
    _refuse_unstartable(session, transaction)
    if decision.action == RuleAction.HOLD_FOR_REVIEW:
        review.hold(session, transaction, actor, reason=decision.reason or "", now=now, decision=decision)
    else:
        not_recovered(session, transaction, actor, decision, now=now)
    return RuleStart(None, decision)


def start_campaign(
    session: DbSession,
    transaction: Transaction,
    actor: Actor,
    decision: Decision,
    *,
    now: datetime,
    channels: Sequence[str] | None = None,
    allow_fallback: bool | None = None,
    versions: CurrentVersions | None = None,
) -> RecoveryAttempt:
    """Start the decision's campaign at its current version; the attempt records the rule."""
    assert decision.campaign_id is not None
    if versions is None:
        version = current_version(session, decision.campaign_id)
    else:
        version = versions.get(decision.campaign_id)
    started = lifecycle.start_recovery(
        session,
        transaction,
        actor,
        now=now,
        channels=channels,
        allow_fallback=allow_fallback,
        campaign_version=version,
        decision=decision,
    )
    if transaction.no_recovery_reason:
        transaction.no_recovery_reason = None
    return started.attempt


def start_chosen(
    session: DbSession,
    transaction: Transaction,
    actor: Actor,
    campaign_id: object,
    *,
    field: str,
    sentence: Callable[[Campaign], str],
    now: datetime,
    channels: Sequence[str] | None = None,
    allow_fallback: bool | None = None,
) -> RecoveryAttempt:
    """Start the campaign a person chose instead of the rules (the dashboard, the API, the review queue).

    `campaign_id` must name one of the organization's campaigns that is not
    archived (RuleRefused on `field` otherwise); `sentence(campaign)` is what
    the timeline says of the choice.
    """
    campaign = usable_campaign(session, transaction.organization_id, campaign_id, field)
    decision = Decision.chosen(campaign.id, sentence(campaign))
    return start_campaign(
        session, transaction, actor, decision, now=now, channels=channels, allow_fallback=allow_fallback
    )


def not_recovered(
    session: DbSession, transaction: Transaction, actor: Actor, decision: Decision, *, now: datetime
) -> None:
    """Mark the transaction as one the rules do not recover: its reason shows on it, and nothing is sent."""
    transaction.no_recovery_reason = (decision.reason or "")[:500] or None
    audit.record(
        session,
        actor,
        "recovery.not_recovered_by_rule",
        transaction_id=transaction.id,
        target_type="transaction",
        target_id=transaction.id,
        at=now,
        rule_id=decision.rule_id,
        rule_name=decision.rule_name,
        rule_version=decision.rule_version,
        reason=decision.reason,
        summary=decision.sentence,
    )


def _refuse_unstartable(session: DbSession, transaction: Transaction) -> None:
    """Refuse as a start would for what holds whatever the action: paid, closed, running already."""
    if transaction.status in lifecycle.PAID:
        raise RecoveryRefused(f"Transaction {transaction.transaction_ref} is already paid.", status=409)
    if transaction.status == TransactionStatus.CANCELLED:
        raise RecoveryRefused(
            f"Transaction {transaction.transaction_ref} is closed: nothing is sent for it. "
            "Reopen it to start a recovery.",
            status=409,
        )
    running = lifecycle.active_attempt(session, transaction.id)
    if running is not None:
        raise AlreadyActive(running.id)
