"""A campaign's `retry_card` step: charge the failed PaymentIntent again, off-session, with its saved card.

`retry_card(session, attempt_id, step, now=...)` runs a step once: the
`CardRetry` row (unique per attempt and step, idempotency key
`retry-<attempt>-<step>`) is reserved and committed before Stripe is called,
so a crash and a re-run send the same key and get Stripe's first answer. A
step that may not run is recorded as skipped, with why.

What a retry may never do, each rule with its source:

- charge a card whose decline says the issuer will never approve it: Visa's
  category 1 declines (lost, stolen, pick up, fraud: "do not reattempt") are our
  `do_not_contact` category (declines.py, after https://docs.stripe.com/declines/codes);
- charge the same card data again when the decline says the data is wrong
  (Visa category 3: expired, wrong number or CVC; Stripe: "the customer needs to
  use another card") — only `authentication_required` is tried, since a card
  authenticated when saved may pass off-session;
- exceed the card networks' reattempt limits: Visa allows at most 15 reattempts
  of a declined card in 30 days (Visa Core Rules, "excessive reattempts",
  April 2021), Mastercard flags more than 10 attempts on a card in 24 hours
  (Transaction Processing Excellence, excessive authorization attempts). We stay
  well inside both: one try per card per 24 hours, counting the failure itself,
  and at most MAX_RETRIES_PER_WINDOW (8) retries per card in 30 days;
- charge a transaction that is paid, refunded or closed, or whose recovery
  ended, or that the customer is paying right now (retry_guard.py).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError

from recovery import audit, declines
from recovery.audit import Actor
from recovery.logs import get_logger
from recovery.models import (
    CardRetry,
    CheckoutSession,
    CheckoutStatus,
    RecoveryAttempt,
    Transaction,
)
from recovery.models.base import DbSession
from recovery.models.card_retry import RetryStatus
from recovery.money import format_amount
from recovery.payments.closing import follow_status, link_switched_off_recorded
from recovery.payments.gateway import StripeFailure, StripeGateway, stripe_gateway
from recovery.payments.off_session import OffSessionOutcome, OffSessionResult, confirm_off_session
from recovery.payments.retry_guard import charged_by_retry, customer_payment_in_flight, lock_transaction
from recovery.payments.rules import CLOSED_STATUSES
from recovery.recoveries.paying import paid_session
from recovery.refusals import Refused
from recovery.unit_of_work import commit_now

log = get_logger("recovery.payments")

# One try per card per day, the failure itself counted (Mastercard: at most 10 a day; we do 1).
RETRY_SPACING = timedelta(hours=24)
# Visa: at most 15 reattempts in 30 days; we allow 8, leaving room for the merchant's own.
RETRY_WINDOW = timedelta(days=30)
MAX_RETRIES_PER_WINDOW = 8
# Codes of the customer_action category that a retry of the saved card may still pass.
RETRYABLE_CUSTOMER_ACTION = frozenset({"authentication_required"})
# A retry could charge twice what the bank saw as a duplicate.
NEVER_RETRIED = frozenset({"duplicate_transaction"})


class NoSuchAttempt(Refused):
    """The job names an attempt that does not exist (deleted with its organization)."""

    status = 404


@dataclass(frozen=True)
class Skip:
    why: str


def retry_key(attempt_id: int, step: int) -> str:
    return f"retry-{attempt_id}-{step}"


def retry_card(
    session: DbSession,
    attempt_id: int,
    step: int,
    *,
    now: datetime,
    gateway: StripeGateway | None = None,
) -> CardRetry:
    """Run the attempt's card-retry step once; the CardRetry says what happened.

    Commits on purpose (`commit_now`): the reservation before Stripe is called,
    and the closing of the customer's open sessions before the card is
    charged. A transient Stripe failure is recorded (status error), committed
    and raised, so RQ tries again with the same key; any other outcome is
    returned for the job's commit.
    """
    if step < 0:
        raise Refused(f"A card retry's step is counted from 0; got {step}.", field="step")
    attempt = session.get(RecoveryAttempt, attempt_id)
    if attempt is None:
        raise NoSuchAttempt(f"No recovery attempt {attempt_id}.")
    # Locked first: a run charging this step holds its row until it commits, so this waits
    # for that answer rather than resuming a retry still in flight.
    existing = _by_step(session, attempt_id, step, lock=True)
    if existing is not None and not _resumable(existing):
        return existing  # the step ran: it never runs twice
    txn = lock_transaction(session, attempt.transaction_id)
    assert txn is not None  # the attempt holds it by foreign key
    if existing is None:
        reserved_meanwhile = _by_step(session, attempt_id, step)
        if reserved_meanwhile is not None:
            return reserved_meanwhile  # another run of the step reserved it just now: theirs to finish
    skip = _why_not(session, attempt, txn, now, resuming=existing is not None)
    if existing is None:
        if skip is not None:
            return _skipped(session, _new_retry(session, attempt, txn, step, now), skip, now)
        reserved, mine = _reserve(session, attempt, txn, step, now)
        if not mine:
            return reserved  # a concurrent run of the same step reserved it first: it is theirs to finish
    else:
        reserved = existing
        if skip is not None:
            return _settle_unanswered(session, gateway or stripe_gateway(), reserved, skip, now)
        reserved.status = RetryStatus.PENDING
        commit_now(session, "a card retry taken up again, before Stripe", keep_state=True)
    _hold(session, reserved)
    return _charge(session, gateway or stripe_gateway(), attempt, txn, reserved, now)


def _by_step(session: DbSession, attempt_id: int, step: int, *, lock: bool = False) -> CardRetry | None:
    query = select(CardRetry).where(CardRetry.attempt_id == attempt_id, CardRetry.step == step)
    if lock:
        query = query.with_for_update().execution_options(populate_existing=True)
    return session.scalar(query)


def _hold(session: DbSession, retry: CardRetry) -> None:
    """Lock the retry's row until the job commits: a second run of the step waits for the answer.

    After each named commit, which released it; on PostgreSQL (SQLite serialises
    writers anyway). A run that dies lets go with its connection, and the next resumes.
    """
    session.execute(select(CardRetry.id).where(CardRetry.id == retry.id).with_for_update())


def _resumable(retry: CardRetry) -> bool:
    """Reserved and never answered (a crash), or failed in transit (RQ tries again): same key again."""
    return retry.status in (RetryStatus.PENDING, RetryStatus.ERROR) and retry.finished_at is None


def _settle_unanswered(
    session: DbSession, gateway: StripeGateway, retry: CardRetry, skip: Skip, now: datetime
) -> CardRetry:
    """A retry taken up again that may no longer charge (paid since, recovery ended): did its call charge?

    Never sent again: had the first call not reached Stripe, the same key would
    make a new charge of a transaction someone else paid. Stripe's PaymentIntent
    says whether the first one did (only our retries confirm it; customers pay
    through Checkout's own PaymentIntents).
    """
    try:
        intent = gateway.retrieve_payment_intent(retry.payment_intent_id or "")
    except StripeFailure as failure:
        return _failed(session, retry, failure, now)
    if intent.status != "succeeded":
        return _skipped(session, retry, skip, now)
    retry.status, retry.finished_at = RetryStatus.SUCCEEDED, now
    _audit(session, retry, "card_retry.succeeded", "Card retry charged the saved card (found at Stripe)", now)
    return retry


# --- the rules ---------------------------------------------------------------------------------


def _why_not(
    session: DbSession, attempt: RecoveryAttempt, txn: Transaction, now: datetime, *, resuming: bool
) -> Skip | None:
    """The first rule that forbids charging the card now, or None.

    A reserved retry taken up again passed the card's rules when it was
    reserved (and counts against its limits itself): only what may have
    changed since is asked again, whether it is still owed and not being paid.
    """
    rules = RESUME_RULES if resuming else RULES
    for rule in rules:
        skip = rule(session, attempt, txn, now)
        if skip is not None:
            return skip
    return None


def _closed(session: DbSession, _a: RecoveryAttempt, txn: Transaction, _now: datetime) -> Skip | None:
    if txn.status in CLOSED_STATUSES:
        return Skip(f"the transaction is {txn.status}: nothing is owed")
    if charged_by_retry(session, txn.id):
        return Skip("an earlier card retry charged it; the payment is being confirmed")
    return None


def _no_recovery(_s: DbSession, attempt: RecoveryAttempt, _t: Transaction, _now: datetime) -> Skip | None:
    if not attempt.is_active:
        return Skip(f"the recovery is {attempt.status}")
    return None


def _never_retried(_s: DbSession, _a: RecoveryAttempt, txn: Transaction, _now: datetime) -> Skip | None:
    code = txn.failure_code
    category = declines.category(code)
    if category == declines.DO_NOT_CONTACT:
        return Skip(
            f"{code} is a decline the card networks forbid retrying ({declines.category_label(category)})"
        )
    if category == declines.CUSTOMER_ACTION and code not in RETRYABLE_CUSTOMER_ACTION:
        return Skip(f"{code}: the same card would fail again; the customer must pay with other details")
    if code in NEVER_RETRIED:
        return Skip(f"{code}: a retry could charge the customer twice")
    return None


def _no_saved_card(session: DbSession, _a: RecoveryAttempt, txn: Transaction, _now: datetime) -> Skip | None:
    if not (txn.stripe_payment_intent_id and txn.stripe_customer_id and txn.stripe_payment_method_id):
        return Skip("no saved card to charge (a Stripe payment with its customer and payment method)")
    if txn.stripe_payment_link_id and not link_switched_off_recorded(session, txn):
        return Skip("a Payment Link is open for this transaction: the customer may be paying it")
    return None


def _customer_paying(session: DbSession, _a: RecoveryAttempt, txn: Transaction, now: datetime) -> Skip | None:
    if paid_session(session, txn.id) is not None:
        return Skip("the customer has paid at checkout; the payment is being confirmed")
    if customer_payment_in_flight(session, txn.id, now):
        return Skip("the customer is opening the payment page right now")
    return None


def _network_limits(session: DbSession, _a: RecoveryAttempt, txn: Transaction, now: datetime) -> Skip | None:
    tried = select(CardRetry).where(
        CardRetry.payment_method_id == txn.stripe_payment_method_id,
        CardRetry.status.in_(RetryStatus.TRIED),
    )
    last_retry = session.scalar(tried.with_only_columns(func.max(CardRetry.created_at)))
    last = max(filter(None, (last_retry, txn.failed_at)))
    if now - last < RETRY_SPACING:
        return Skip(f"the card was tried less than 24 hours ago ({last:%Y-%m-%d %H:%M} UTC)")
    in_window = session.scalar(
        tried.with_only_columns(func.count()).where(CardRetry.created_at > now - RETRY_WINDOW)
    )
    if (in_window or 0) >= MAX_RETRIES_PER_WINDOW:
        return Skip(
            f"the card was retried {in_window} times in 30 days, our limit ({MAX_RETRIES_PER_WINDOW})"
        )
    return None


Rule = Callable[[DbSession, RecoveryAttempt, Transaction, datetime], "Skip | None"]
# In the order they are asked: the cheapest and most final first, the counting last.
RULES: tuple[Rule, ...] = (
    _closed,
    _no_recovery,
    _never_retried,
    _no_saved_card,
    _customer_paying,
    _network_limits,
)
RESUME_RULES: tuple[Rule, ...] = (_closed, _no_recovery, _customer_paying)


# --- reserving and recording -------------------------------------------------------------------


def _new_retry(
    session: DbSession, attempt: RecoveryAttempt, txn: Transaction, step: int, now: datetime
) -> CardRetry:
    retry = CardRetry(
        organization_id=txn.organization_id,
        transaction_id=txn.id,
        attempt_id=attempt.id,
        step=step,
        payment_intent_id=txn.stripe_payment_intent_id,
        payment_method_id=txn.stripe_payment_method_id,
        idempotency_key=retry_key(attempt.id, step),
        status=RetryStatus.PENDING,
        created_at=now,
    )
    session.add(retry)
    return retry


def _reserve(
    session: DbSession, attempt: RecoveryAttempt, txn: Transaction, step: int, now: datetime
) -> tuple[CardRetry, bool]:
    """Save the pending retry and commit it, before Stripe: the pay page now waits for it (retry_guard).

    The retry, and whether this run made it (False: another run of the step did, just before).
    """
    attempt_id = attempt.id
    retry = _new_retry(session, attempt, txn, step, now)
    try:
        commit_now(session, "the card retry's reservation: its key, before Stripe", keep_state=True)
    except IntegrityError:
        # The same step ran at the same moment and reserved first: it is theirs to finish.
        session.rollback()
        found = _by_step(session, attempt_id, step)
        if found is None:
            raise
        return found, False
    return retry, True


def _skipped(session: DbSession, retry: CardRetry, skip: Skip, now: datetime) -> CardRetry:
    retry.status = RetryStatus.SKIPPED
    retry.message = skip.why[:500]
    retry.finished_at = now
    _audit(session, retry, "card_retry.skipped", f"Card retry skipped: {skip.why}", now)
    log.info("card_retry_skipped", attempt_id=retry.attempt_id, step=retry.step, why=skip.why)
    return retry


def _audit(session: DbSession, retry: CardRetry, action: str, summary: str, now: datetime) -> None:
    audit.record(
        session,
        Actor.system(retry.organization_id, "card retry"),
        action,
        at=now,
        transaction_id=retry.transaction_id,
        target_type="card_retry",
        target_id=retry.id,
        attempt_id=retry.attempt_id,
        step=retry.step,
        summary=summary,
    )


# --- charging ----------------------------------------------------------------------------------


def _charge(
    session: DbSession,
    gateway: StripeGateway,
    attempt: RecoveryAttempt,
    txn: Transaction,
    retry: CardRetry,
    now: datetime,
) -> CardRetry:
    """Close the customer's open sessions, then confirm the PaymentIntent; record what Stripe said."""
    try:
        paid_at_checkout = _close_open_sessions(session, gateway, txn)
        _hold(session, retry)  # again: closing the sessions committed
        if paid_at_checkout is not None:
            return _skipped(session, retry, Skip(f"the customer paid at checkout ({paid_at_checkout})"), now)
        result = confirm_off_session(
            gateway,
            payment_intent_id=retry.payment_intent_id or "",
            payment_method_id=retry.payment_method_id or "",
            key=retry.idempotency_key,
        )
    except StripeFailure as failure:
        return _failed(session, retry, failure, now)
    return _record(session, attempt, txn, retry, result, now)


def _close_open_sessions(session: DbSession, gateway: StripeGateway, txn: Transaction) -> str | None:
    """Expire the transaction's open Checkout Sessions at Stripe; the id of one the customer completed."""
    records = session.scalars(
        select(CheckoutSession).where(
            CheckoutSession.transaction_id == txn.id,
            CheckoutSession.status == CheckoutStatus.OPEN,
            CheckoutSession.stripe_session_id.is_not(None),
        )
    ).all()
    completed = None
    for record in records:
        session_id = record.stripe_session_id or ""
        try:
            info = gateway.expire_checkout_session(session_id)
        except StripeFailure as failure:
            if failure.retryable:
                raise
            info = gateway.retrieve_checkout_session(session_id)  # no longer open: see why
        follow_status(record, info)
        if record.status == CheckoutStatus.COMPLETE or info.payment_status == "paid":
            completed = session_id
    if records:
        commit_now(
            session, "the customer's open sessions closed, before the card is charged", keep_state=True
        )
    return completed


def _failed(session: DbSession, retry: CardRetry, failure: StripeFailure, now: datetime) -> CardRetry:
    """Stripe could not be asked, or refused the request: an error; a transient one is tried again by RQ."""
    retry.status = RetryStatus.ERROR
    retry.message = failure.message[:500]
    log.warning(
        "card_retry_error", attempt_id=retry.attempt_id, kind=failure.kind, retryable=failure.retryable
    )
    if failure.retryable:
        # Kept unfinished: the pay page still waits, and the next run resumes with the same key.
        commit_now(session, "a card retry Stripe did not answer, kept for RQ's next try", keep_state=True)
        raise failure
    retry.finished_at = now
    _audit(session, retry, "card_retry.error", f"Card retry failed at Stripe: {failure.message}", now)
    return retry


def _record(
    session: DbSession,
    attempt: RecoveryAttempt,
    txn: Transaction,
    retry: CardRetry,
    result: OffSessionResult,
    now: datetime,
) -> CardRetry:
    retry.finished_at = now
    if result.outcome in (OffSessionOutcome.SUCCEEDED, OffSessionOutcome.PROCESSING):
        # The webhook (payment_intent.succeeded) recovers the transaction, as for any payment.
        retry.status = RetryStatus.SUCCEEDED
        amount = format_amount(txn.amount, txn.currency)
        _audit(session, retry, "card_retry.succeeded", f"Card retry charged {amount} to the saved card", now)
    elif result.outcome == OffSessionOutcome.DECLINED:
        _declined(session, txn, retry, result, now)
    else:
        retry.status = RetryStatus.REQUIRES_ACTION
        retry.decline_code = result.reason
        retry.message = (result.message or "The bank asks the customer to authenticate.")[:500]
        _audit(
            session,
            retry,
            "card_retry.requires_action",
            "Card retry needs the customer: authentication required",
            now,
        )
        _on_to_next_message(session, attempt.id, now)
    log.info("card_retry_done", attempt_id=retry.attempt_id, step=retry.step, status=retry.status)
    return retry


def _declined(
    session: DbSession, txn: Transaction, retry: CardRetry, result: OffSessionResult, now: datetime
) -> None:
    """The bank said no again: the decline is the transaction's latest reason (its category follows)."""
    retry.status = RetryStatus.DECLINED
    retry.decline_code = result.reason
    retry.message = (result.message or "")[:500] or None
    if result.reason:
        txn.failure_code = result.reason[:64]
        txn.failure_message = result.message[:500] if result.message else txn.failure_message
    words = (result.reason or "declined").replace("_", " ")
    _audit(session, retry, "card_retry.declined", f"Card retry declined: {words}", now)


def _on_to_next_message(session: DbSession, attempt_id: int, now: datetime) -> None:
    """Authentication needs the customer: the campaign passes its card retries and sends the pay link now."""
    from recovery.campaigns.engine import skip_to_next_message
    from recovery.recoveries.claims import lock_attempt

    attempt = lock_attempt(session, attempt_id)
    if attempt is not None:
        skip_to_next_message(session, attempt, now=now)
