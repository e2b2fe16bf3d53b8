"""What each Stripe event type does to our rows: one handler per type, registered by name.

A handler gets a `Context` (the stored event, the database session, a lazy
Stripe gateway) and returns the event's final state: processed, ignored or
unmatched. It never commits: the job runs it in one database transaction and
commits, or rolls everything back and records the error.

Every handler is safe to run twice or concurrently for the same or for
different events about one payment: state only moves forward (the models'
transitions), and fulfilment is claimed by inserting a `PaymentFulfilment`
row whose unique constraints let exactly one event win.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import CompoundSelect, bindparam, cast, literal, null, select, text, union_all
from sqlalchemy.exc import IntegrityError

from recovery import audit, money
from recovery.audit import Actor
from recovery.logs import get_logger
from recovery.models import (
    AttemptStatus,
    AuditEvent,
    CheckoutSession,
    CheckoutStatus,
    Message,
    MessageStatus,
    Organization,
    PaymentFulfilment,
    RecoveryAttempt,
    Transaction,
    TransactionSource,
    TransactionStatus,
    WebhookEvent,
    WebhookState,
    utcnow,
)
from recovery.models.base import DbSession
from recovery.payments.gateway import CheckoutSessionInfo, StripeFailure, StripeGateway

log = get_logger("recovery.webhooks")

ACTOR_LABEL = "Stripe webhook"
RECONCILIATION_LABEL = "Reconciliation"

_CLIENT_REFERENCE = re.compile(r"^recovery:(\d{1,18}):(\d{1,18})(?::(\d{1,18}))?$")


class Refused(Exception):
    """The event contradicts our records (e.g. another organization's object): never applied."""


@dataclass
class Context:
    """What a handler works with. `gateway()` is None when no Stripe key is configured."""

    session: DbSession
    event: WebhookEvent | None
    gateway_factory: Callable[[], StripeGateway | None]
    label: str = ACTOR_LABEL
    organization_id: int | None = None
    # Set by a fulfilment: the job then closes the transaction's other ways to pay.
    closed_transaction_id: int | None = None
    paid_session_id: str | None = None
    # Set by an import of a failed payment: the job may then start its recovery.
    imported_transaction_id: int | None = None
    _gateway: StripeGateway | None = field(default=None, repr=False)

    def gateway(self) -> StripeGateway | None:
        if self._gateway is None:
            self._gateway = self.gateway_factory()
        return self._gateway

    @property
    def occurred_at(self) -> datetime:
        if self.event is not None and self.event.stripe_created_at is not None:
            return self.event.stripe_created_at
        return utcnow()

    def note(self, transaction: Transaction, action: str, summary: str, **details: Any) -> AuditEvent:
        """Add a timeline entry for the transaction, linked to the event that caused it."""
        return audit.record(
            self.session,
            Actor.system(transaction.organization_id, self.label),
            action,
            transaction_id=transaction.id,
            target_type="transaction",
            target_id=transaction.transaction_ref,
            webhook_event_id=self.event.id if self.event else None,
            # When it happened at Stripe: a delivery retried for hours still lands where it belongs.
            at=self.occurred_at,
            summary=summary,
            stripe_event_id=self.event.stripe_event_id if self.event else None,
            **details,
        )


Handler = Callable[[Context, dict[str, Any]], str]
HANDLERS: dict[str, Handler] = {}


def handles(*types: str) -> Callable[[Handler], Handler]:
    def register(handler: Handler) -> Handler:
        for name in types:
            HANDLERS[name] = handler
        return handler

    return register


# --- matching ----------------------------------------------------------------


@dataclass(frozen=True)
class Claims:
    """What the object's metadata (or client_reference_id) says it belongs to."""

    organization_id: int | None
    transaction_id: int | None
    attempt_id: int | None
    transaction_ref: str | None


@dataclass(frozen=True)
class Match:
    transaction: Transaction
    attempt_id: int | None
    by: str  # metadata, session, payment_intent, payment_link


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _int(value: Any) -> int | None:
    try:
        number = int(str(value))
    except (TypeError, ValueError):
        return None
    return number if 0 < number < 2**63 else None


def claims_of(obj: dict[str, Any]) -> Claims:
    metadata = _dict(obj.get("metadata"))
    org = _int(metadata.get("organization_id"))
    txn = _int(metadata.get("transaction_id"))
    attempt = _int(metadata.get("attempt_id"))
    ref = metadata.get("transaction_ref") if isinstance(metadata.get("transaction_ref"), str) else None
    reference = obj.get("client_reference_id")
    if txn is None and isinstance(reference, str):
        found = _CLIENT_REFERENCE.match(reference)
        if found:
            org, txn = int(found.group(1)), int(found.group(2))
            attempt = int(found.group(3)) if found.group(3) else None
    return Claims(org, txn, attempt, ref)


def load_claimed_transactions(session: DbSession, objects: list[dict[str, Any]]) -> list[Transaction]:
    """Load, in one query, the transactions that these objects' metadata names.

    For a batch of events: `match` then finds each in the session instead of
    selecting it on its own (one round trip, and one row load, fewer an event).
    The session holds its objects weakly: keep the list for as long as the batch runs.
    """
    ids = {claims.transaction_id for claims in map(claims_of, objects) if claims.transaction_id is not None}
    if not ids:
        return []
    return list(session.scalars(select(Transaction).where(Transaction.id.in_(sorted(ids)))))


# Where our rows keep a Stripe id, best match first: what the id is, the
# column holding it, the transaction the row ties it to, and its attempt if known.
_STORED_IDS: tuple[tuple[str, Any, Any, Any], ...] = (
    (
        "session",
        CheckoutSession.stripe_session_id,
        CheckoutSession.transaction_id,
        CheckoutSession.attempt_id,
    ),
    ("session", Transaction.stripe_checkout_session_id, Transaction.id, None),
    (
        "payment_intent",
        CheckoutSession.stripe_payment_intent_id,
        CheckoutSession.transaction_id,
        CheckoutSession.attempt_id,
    ),
    ("payment_intent", Transaction.stripe_payment_intent_id, Transaction.id, None),
    ("payment_intent", PaymentFulfilment.stripe_payment_intent_id, PaymentFulfilment.transaction_id, None),
    ("payment_link", Transaction.stripe_payment_link_id, Transaction.id, None),
)


@functools.cache
def _stored_ids_query(kinds: frozenset[str]) -> CompoundSelect[Any]:
    """The ranked lookup for the kinds of ids an object has; built once per combination (seven at most)."""
    no_attempt = cast(null(), CheckoutSession.attempt_id.type)
    return (
        union_all(
            *(
                select(
                    transaction, no_attempt if attempt is None else attempt, literal(rank).label("priority")
                ).where(column == bindparam(by))
                for rank, (by, column, transaction, attempt) in enumerate(_STORED_IDS)
                if by in kinds
            )
        )
        .order_by(text("priority"))
        .limit(1)
    )


def _by_stored_ids(
    session: DbSession, session_id: str | None, payment_intent_id: str | None, link_id: str | None
) -> Match | None:
    """The transaction that our rows tie to one of the object's Stripe ids: the best of them, in one query.

    One round trip instead of up to six separate lookups, which every event paid.
    """
    ids = {"session": session_id, "payment_intent": payment_intent_id, "payment_link": link_id}
    present = {by: value for by, value in ids.items() if value}
    if not present:
        return None
    best = session.execute(_stored_ids_query(frozenset(present)), present).first()
    if best is None:
        return None
    transaction_id, attempt_id, rank = best
    found = session.get(Transaction, transaction_id)
    assert found is not None  # every row above holds it by foreign key
    return Match(found, attempt_id, _STORED_IDS[rank][0])


def match(
    ctx: Context,
    obj: dict[str, Any],
    *,
    session_id: str | None = None,
    payment_intent_id: str | None = None,
    link_id: str | None = None,
) -> Match | None:
    """Find the transaction the object is about: metadata first, then our stored Stripe ids.

    Raises Refused when the two disagree about the organization (or the
    transaction): an object of one organization must never move another's rows.
    """
    claims = claims_of(obj)
    stored = _by_stored_ids(ctx.session, session_id, payment_intent_id, link_id)
    found: Match | None = None
    if claims.transaction_id is not None:
        txn = ctx.session.get(Transaction, claims.transaction_id)
        if txn is not None:
            if claims.organization_id != txn.organization_id:
                raise Refused(
                    f"metadata names organization {claims.organization_id} but transaction "
                    f"{txn.id} belongs to organization {txn.organization_id}"
                )
            if claims.transaction_ref is not None and claims.transaction_ref != txn.transaction_ref:
                raise Refused(
                    f"metadata names transaction_ref {claims.transaction_ref!r} but transaction "
                    f"{txn.id} is {txn.transaction_ref!r}"
                )
            found = Match(txn, claims.attempt_id, "metadata")
    if stored is not None:
        stored_org = stored.transaction.organization_id
        if claims.organization_id is not None and claims.organization_id != stored_org:
            raise Refused(
                f"metadata names organization {claims.organization_id} but the {stored.by} "
                f"belongs to organization {stored_org}"
            )
        if found is not None and found.transaction.id != stored.transaction.id:
            raise Refused(
                f"metadata names transaction {found.transaction.id} but the {stored.by} "
                f"belongs to transaction {stored.transaction.id}"
            )
        if found is None:
            found = stored
        elif found.attempt_id is None and stored.attempt_id is not None:
            found = Match(found.transaction, stored.attempt_id, found.by)
    if found is not None and ctx.event is not None and ctx.event.account:
        # A connected account's event may only touch the organization linked to that account,
        # whatever its metadata says.
        owner = _account_organization(ctx, ctx.event.account)
        if owner is None or owner.id != found.transaction.organization_id:
            raise Refused(
                f"the event comes from connected account {ctx.event.account}, which is not linked to "
                f"organization {found.transaction.organization_id}"
            )
    if found is not None:
        ctx.organization_id = found.transaction.organization_id
    return found


def _account_organization(ctx: Context, account: str) -> Organization | None:
    return ctx.session.scalar(select(Organization).where(Organization.stripe_account_id == account))


# --- fulfilment --------------------------------------------------------------


@dataclass(frozen=True)
class Payment:
    """Proof that money arrived for a transaction."""

    amount: int
    currency: str
    session_id: str | None
    payment_intent_id: str | None
    source: str


def _amount(value: int, currency: str) -> str:
    try:
        return money.format_amount(value, currency)
    except Exception:  # an unknown currency must not fail the event
        return f"{value} {currency}"


def fulfil(ctx: Context, found: Match, payment: Payment) -> bool:
    """Recover the transaction once; return False if it was already fulfilled.

    Safe to run twice or concurrently: the PaymentFulfilment insert (unique per
    transaction and per session) decides; the loser changes nothing, and on
    PostgreSQL waits for the winner's commit before learning it lost.
    """
    session = ctx.session
    txn = found.transaction
    record = _checkout_record(session, payment.session_id)
    attempt_id = found.attempt_id or (record.attempt_id if record else None)
    row = PaymentFulfilment(
        organization_id=txn.organization_id,
        transaction_id=txn.id,
        attempt_id=attempt_id,
        stripe_checkout_session_id=payment.session_id,
        stripe_payment_intent_id=payment.payment_intent_id,
        amount=payment.amount,
        currency=payment.currency,
        source=payment.source,
        webhook_event_id=ctx.event.id if ctx.event else None,
    )
    try:
        with session.begin_nested():
            session.add(row)
            session.flush()
    except IntegrityError:
        _already_fulfilled(ctx, txn, payment)
        return False
    if txn.can_transition(TransactionStatus.RECOVERED):
        txn.transition(TransactionStatus.RECOVERED)
    txn.recovered_at = ctx.occurred_at
    txn.recovered_amount = payment.amount
    if payment.payment_intent_id and not txn.stripe_payment_intent_id:
        txn.stripe_payment_intent_id = payment.payment_intent_id
    if record is not None and record.can_transition(CheckoutStatus.COMPLETE):
        record.transition(CheckoutStatus.COMPLETE)
        record.completed_at = ctx.occurred_at
    _finish_attempts(session, txn, attempt_id, ctx.occurred_at)
    cancelled = _cancel_pending_messages(session, txn)
    via = ", ".join(filter(None, [payment.session_id, payment.payment_intent_id]))
    ctx.note(
        txn,
        "stripe.payment_recovered",
        f"{_amount(payment.amount, payment.currency)} paid ({via})",
        amount=payment.amount,
        currency=payment.currency,
        payment_intent_id=payment.payment_intent_id,
        checkout_session_id=payment.session_id,
        messages_cancelled=cancelled,
    )
    if (payment.amount, payment.currency) != (txn.amount, txn.currency):
        # Money arrived, so the transaction is recovered, but not what was owed: staff must see it.
        ctx.note(
            txn,
            "stripe.payment_amount_differs",
            f"Paid {_amount(payment.amount, payment.currency)}, owed {_amount(txn.amount, txn.currency)}",
            amount=payment.amount,
            currency=payment.currency,
            owed_amount=txn.amount,
            owed_currency=txn.currency,
        )
        log.warning(
            "stripe_payment_amount_differs",
            transaction_id=txn.id,
            paid=payment.amount,
            paid_currency=payment.currency,
            owed=txn.amount,
            owed_currency=txn.currency,
        )
    ctx.closed_transaction_id = txn.id
    ctx.paid_session_id = payment.session_id
    log.info(
        "transaction_recovered",
        transaction_ref=txn.transaction_ref,
        transaction_id=txn.id,
        organization_id=txn.organization_id,
        amount=payment.amount,
        currency=payment.currency,
        session_id=payment.session_id,
        payment_intent_id=payment.payment_intent_id,
        source=payment.source,
    )
    return True


def _already_fulfilled(ctx: Context, txn: Transaction, payment: Payment) -> None:
    existing = ctx.session.scalar(select(PaymentFulfilment).where(PaymentFulfilment.transaction_id == txn.id))
    if existing is None:
        # The session id is fulfilled for another transaction: our records disagree.
        raise Refused(f"session {payment.session_id} is already fulfilled for another transaction")
    same = (payment.payment_intent_id and payment.payment_intent_id == existing.stripe_payment_intent_id) or (
        payment.session_id and payment.session_id == existing.stripe_checkout_session_id
    )
    if same:
        # The other proof of the same payment: fill in what the first one lacked.
        if payment.session_id and not existing.stripe_checkout_session_id:
            existing.stripe_checkout_session_id = payment.session_id
        if payment.payment_intent_id and not existing.stripe_payment_intent_id:
            existing.stripe_payment_intent_id = payment.payment_intent_id
        record = _checkout_record(ctx.session, payment.session_id)
        if record is not None and record.can_transition(CheckoutStatus.COMPLETE):
            record.transition(CheckoutStatus.COMPLETE)
            record.completed_at = ctx.occurred_at
        return
    if existing.stripe_payment_intent_id and payment.payment_intent_id is None:
        return  # a proof that names no PaymentIntent cannot tell; assume the same payment
    ctx.note(
        txn,
        "stripe.duplicate_payment",
        f"Paid again: {_amount(payment.amount, payment.currency)} "
        f"({payment.session_id or payment.payment_intent_id}); consider a refund",
        amount=payment.amount,
        currency=payment.currency,
        payment_intent_id=payment.payment_intent_id,
        checkout_session_id=payment.session_id,
    )
    log.warning(
        "stripe_duplicate_payment",
        transaction_id=txn.id,
        organization_id=txn.organization_id,
        payment_intent_id=payment.payment_intent_id,
        session_id=payment.session_id,
        first_payment_intent_id=existing.stripe_payment_intent_id,
    )


def _checkout_record(session: DbSession, session_id: str | None) -> CheckoutSession | None:
    if not session_id:
        return None
    return session.scalar(select(CheckoutSession).where(CheckoutSession.stripe_session_id == session_id))


def _finish_attempts(session: DbSession, txn: Transaction, attempt_id: int | None, at: datetime) -> None:
    attempts = session.scalars(select(RecoveryAttempt).where(RecoveryAttempt.transaction_id == txn.id)).all()
    for attempt in attempts:
        paying = attempt.id == attempt_id or (attempt_id is None and attempt.is_active)
        if paying and attempt.can_transition(AttemptStatus.COMPLETED):
            attempt.transition(AttemptStatus.COMPLETED)
            attempt.completed_at = attempt.ended_at = at
            attempt.next_send_at = None
        elif attempt.is_active:
            attempt.transition(AttemptStatus.CANCELLED)
            attempt.ended_at = at
            attempt.next_send_at = None


def _cancel_pending_messages(session: DbSession, txn: Transaction) -> int:
    messages = session.scalars(
        select(Message).where(Message.transaction_id == txn.id, Message.status == MessageStatus.QUEUED)
    ).all()
    for message in messages:
        message.transition(MessageStatus.CANCELLED)
    return len(messages)


# --- helpers over raw Stripe objects -----------------------------------------


def _id(value: Any) -> str | None:
    if isinstance(value, str):
        return value
    if isinstance(value, dict) and isinstance(value.get("id"), str):
        return str(value["id"])
    return None


def _note_session_status(ctx: Context, obj: dict[str, Any]) -> None:
    """Follow the session's status on our record, forward only."""
    record = _checkout_record(ctx.session, _id(obj.get("id")))
    if record is None:
        return
    status = obj.get("status")
    if status in CheckoutStatus.ALL and record.can_transition(status):
        record.transition(status)
        if status == CheckoutStatus.COMPLETE:
            record.completed_at = ctx.occurred_at
    # Paid is final: a stale "unpaid" snapshot never un-pays our record.
    if isinstance(obj.get("payment_status"), str) and record.payment_status != "paid":
        record.payment_status = obj["payment_status"]
    intent = _id(obj.get("payment_intent"))
    if intent and not record.stripe_payment_intent_id:
        record.stripe_payment_intent_id = intent


def _session_match(ctx: Context, obj: dict[str, Any]) -> Match | None:
    return match(
        ctx,
        obj,
        session_id=_id(obj.get("id")),
        payment_intent_id=_id(obj.get("payment_intent")),
        link_id=_id(obj.get("payment_link")),
    )


def session_payment(obj: dict[str, Any], source: str) -> Payment | None:
    """What the session paid, in the merchant's currency.

    With Adaptive Pricing the customer pays in their own currency:
    `amount_total` and `currency` are then theirs, and `currency_conversion`
    holds the amount in the currency the session was made in (ours).
    """
    conversion = _dict(obj.get("currency_conversion"))
    if isinstance(conversion.get("amount_total"), int) and isinstance(conversion.get("source_currency"), str):
        amount, currency = conversion["amount_total"], conversion["source_currency"]
    else:
        amount, currency = obj.get("amount_total"), obj.get("currency")
    if not isinstance(amount, int) or not isinstance(currency, str):
        return None
    return Payment(amount, currency.lower(), _id(obj.get("id")), _id(obj.get("payment_intent")), source)


def session_object(info: CheckoutSessionInfo) -> dict[str, Any]:
    """A session as read from the API, in the shape of an event's data.object."""
    return {
        "id": info.id,
        "object": "checkout.session",
        "status": info.status,
        "payment_status": info.payment_status,
        "amount_total": info.amount_total,
        "currency": info.currency,
        "payment_intent": info.payment_intent_id,
        "payment_link": info.payment_link_id,
        "client_reference_id": info.client_reference_id,
        "metadata": dict(info.metadata),
    }


# --- checkout sessions -------------------------------------------------------


@handles("checkout.session.completed", "checkout.session.async_payment_succeeded")
def session_paid(ctx: Context, obj: dict[str, Any]) -> str:
    """Fulfil a paid session; an unpaid one (delayed methods) waits for async_payment_*."""
    found = _session_match(ctx, obj)
    if found is None:
        return WebhookState.UNMATCHED
    payment_status = obj.get("payment_status")
    async_succeeded = ctx.event is not None and ctx.event.type == "checkout.session.async_payment_succeeded"
    if payment_status == "unpaid" and not async_succeeded:
        # The one place we re-read the session: an unpaid snapshot can be stale
        # (a replay days later, or the async_payment_succeeded event lost), and
        # acting on it would leave a paid transaction unrecovered. A paid
        # snapshot is final (Stripe never un-pays; refunds come as
        # charge.refunded), so re-reading it would only add a Stripe call.
        fresh = _reread(ctx, _id(obj.get("id")))
        if fresh is not None and fresh.get("payment_status") == "paid":
            obj = fresh
        else:
            _note_session_status(ctx, obj)
            ctx.note(
                found.transaction,
                "stripe.checkout_session_awaiting_payment",
                f"Checkout completed ({obj.get('id')}); the payment method settles later",
                checkout_session_id=_id(obj.get("id")),
            )
            return WebhookState.PROCESSED
    _note_session_status(ctx, obj)
    payment = session_payment(obj, ctx.event.type if ctx.event else "reconciliation")
    if payment is None:
        raise ValueError("checkout session without amount_total or currency")
    fulfil(ctx, found, payment)
    return WebhookState.PROCESSED


def _reread(ctx: Context, session_id: str | None) -> dict[str, Any] | None:
    gateway = ctx.gateway()
    if gateway is None or not session_id:
        return None
    try:
        return session_object(gateway.retrieve_checkout_session(session_id))
    except StripeFailure as failure:
        log.warning("stripe_session_reread_failed", session_id=session_id, kind=failure.kind)
        return None


@handles("checkout.session.async_payment_failed")
def session_async_failed(ctx: Context, obj: dict[str, Any]) -> str:
    found = _session_match(ctx, obj)
    if found is None:
        return WebhookState.UNMATCHED
    _note_session_status(ctx, obj)
    ctx.note(
        found.transaction,
        "stripe.async_payment_failed",
        f"The delayed payment for {obj.get('id')} failed",
        checkout_session_id=_id(obj.get("id")),
    )
    return WebhookState.PROCESSED


@handles("checkout.session.expired")
def session_expired(ctx: Context, obj: dict[str, Any]) -> str:
    """Note it; nothing regresses (a session paid, then reported expired, stays complete)."""
    found = _session_match(ctx, obj)
    if found is None:
        return WebhookState.UNMATCHED
    _note_session_status(ctx, obj)
    ctx.note(
        found.transaction,
        "stripe.checkout_session_expired",
        f"Checkout session {obj.get('id')} expired",
        checkout_session_id=_id(obj.get("id")),
    )
    return WebhookState.PROCESSED


# --- payment intents ---------------------------------------------------------


@handles("payment_intent.succeeded")
def intent_succeeded(ctx: Context, obj: dict[str, Any]) -> str:
    """Log the payment; it also recovers the transaction it names, if not yet recovered."""
    intent_id = _id(obj.get("id"))
    found = match(ctx, obj, payment_intent_id=intent_id)
    if found is None:
        return WebhookState.UNMATCHED
    amount = obj.get("amount_received")  # what was captured; `amount` is only what was asked
    currency = obj.get("currency")
    if not isinstance(amount, int) or not isinstance(currency, str):
        raise ValueError("payment intent without amount_received or currency")
    if amount <= 0:
        ctx.note(
            found.transaction,
            "stripe.payment_succeeded_empty",
            f"PaymentIntent {intent_id} succeeded with nothing received; not counted as a payment",
            payment_intent_id=intent_id,
        )
        return WebhookState.PROCESSED
    ctx.note(
        found.transaction,
        "stripe.payment_succeeded",
        f"{_amount(amount, currency.lower())} charged ({intent_id})",
        payment_intent_id=intent_id,
        amount=amount,
        currency=currency.lower(),
    )
    if found.transaction.status not in (TransactionStatus.RECOVERED, TransactionStatus.REFUNDED):
        fulfil(ctx, found, Payment(amount, currency.lower(), None, intent_id, "payment_intent.succeeded"))
    return WebhookState.PROCESSED


def _failure(obj: dict[str, Any]) -> tuple[str | None, str | None, str | None]:
    error = _dict(obj.get("last_payment_error"))
    return error.get("code"), error.get("decline_code"), error.get("message")


@handles("payment_intent.payment_failed")
def intent_failed(ctx: Context, obj: dict[str, Any]) -> str:
    """Note the failed attempt; an unknown PaymentIntent may become a new failed transaction."""
    intent_id = _id(obj.get("id"))
    code, decline_code, message = _failure(obj)
    found = match(ctx, obj, payment_intent_id=intent_id)
    if found is None:
        if claims_of(obj).transaction_id is not None:
            return WebhookState.UNMATCHED  # it names a transaction we do not have
        txn = _import_failure(ctx, obj, code, decline_code, message)
        if txn is None:
            return WebhookState.UNMATCHED
        found = Match(txn, None, "import")
    reason = " / ".join(filter(None, [code, decline_code]))
    # Forward only: a failure reported after the payment succeeded changes no status.
    ctx.note(
        found.transaction,
        "stripe.payment_failed",
        f"{reason or 'failed'}: {message or 'no message'} ({intent_id})",
        payment_intent_id=intent_id,
        failure_code=code,
        decline_code=decline_code,
        message=message,
    )
    return WebhookState.PROCESSED


def _import_organization(ctx: Context, obj: dict[str, Any]) -> Organization | None:
    """Whose unknown failed PaymentIntent this is: the connected account's organization, else the metadata's.

    A connected account's event belongs to the organization linked to that
    account; metadata naming another one is refused, never followed.
    """
    claimed = claims_of(obj).organization_id
    if ctx.event is not None and ctx.event.account:
        organization = _account_organization(ctx, ctx.event.account)
        if organization is not None and claimed is not None and claimed != organization.id:
            raise Refused(
                f"metadata names organization {claimed} but connected account {ctx.event.account} "
                f"is linked to organization {organization.id}"
            )
        return organization
    return ctx.session.get(Organization, claimed) if claimed else None


def _succeeded_since(ctx: Context, intent_id: str) -> bool:
    """Whether we hold a payment_intent.succeeded for the PaymentIntent (it can arrive before the failure)."""
    return (
        ctx.session.scalar(
            select(WebhookEvent.id)
            .where(WebhookEvent.object_id == intent_id, WebhookEvent.type == "payment_intent.succeeded")
            .limit(1)
        )
        is not None
    )


def _import_failure(
    ctx: Context, obj: dict[str, Any], code: str | None, decline_code: str | None, message: str | None
) -> Transaction | None:
    from recovery.transactions.services import (
        DuplicateRef,
        InvalidTransaction,
        create_transaction,
        get_by_ref,
    )

    organization = _import_organization(ctx, obj)
    if organization is None or not organization.import_stripe_failures:
        return None
    ctx.organization_id = organization.id
    intent_id = _id(obj.get("id")) or ""
    if _succeeded_since(ctx, intent_id):
        # Stripe's events come in any order: the customer paid, so there is nothing to chase.
        log.info("stripe_failure_import_skipped", payment_intent_id=intent_id, reason="succeeded since")
        return None
    error = _dict(obj.get("last_payment_error"))
    billing = _dict(_dict(error.get("payment_method")).get("billing_details"))
    shipping = _dict(obj.get("shipping"))
    created = obj.get("created")
    raw: dict[str, Any] = {
        "transaction_ref": intent_id,
        "amount": obj.get("amount"),
        "currency": obj.get("currency"),
        "failure_code": code,
        "failure_message": message,
        "customer_email": obj.get("receipt_email") or billing.get("email"),
        "customer_name": billing.get("name") or shipping.get("name"),
        "metadata": {"stripe_decline_code": decline_code} if decline_code else {},
    }
    if isinstance(created, int):
        raw["failed_at"] = datetime.fromtimestamp(created, UTC).isoformat()
    actor = Actor.system(organization.id, ctx.label)
    try:
        txn = create_transaction(
            ctx.session,
            actor,
            raw,
            source=TransactionSource.STRIPE,
            webhook_event_id=ctx.event.id if ctx.event else None,
        )
    except DuplicateRef:
        return get_by_ref(ctx.session, organization.id, intent_id)
    except InvalidTransaction as invalid:
        log.warning("stripe_failure_import_invalid", payment_intent_id=intent_id, errors=invalid.errors)
        return None
    txn.stripe_payment_intent_id = intent_id
    txn.stripe_customer_id = _id(obj.get("customer"))
    ctx.imported_transaction_id = txn.id
    log.info(
        "stripe_failure_imported",
        payment_intent_id=intent_id,
        organization_id=organization.id,
        transaction_id=txn.id,
        failure_code=code,
    )
    return txn


# --- charges -----------------------------------------------------------------


@handles("charge.refunded")
def charge_refunded(ctx: Context, obj: dict[str, Any]) -> str:
    """A full refund of a recovered transaction makes it `refunded`; a partial one is noted."""
    intent_id = _id(obj.get("payment_intent"))
    found = match(ctx, obj, payment_intent_id=intent_id)
    if found is None:
        return WebhookState.UNMATCHED
    txn = found.transaction
    amount = obj.get("amount")
    refunded = obj.get("amount_refunded")
    currency = str(obj.get("currency") or txn.currency).lower()
    if not isinstance(amount, int) or not isinstance(refunded, int):
        raise ValueError("charge without amount or amount_refunded")
    paid_by = ctx.session.scalar(
        select(PaymentFulfilment.stripe_payment_intent_id).where(PaymentFulfilment.transaction_id == txn.id)
    )
    if paid_by and intent_id and intent_id != paid_by:
        # A refund of another payment, e.g. the second one a customer made ("Paid
        # again"): the money that recovered the transaction is still kept.
        ctx.note(
            txn,
            "stripe.other_payment_refunded",
            f"{_amount(refunded, currency)} of another payment refunded ({obj.get('id')}, {intent_id}); "
            f"the recovery by {paid_by} stands",
            amount_refunded=refunded,
            payment_intent_id=intent_id,
        )
        return WebhookState.PROCESSED
    if not obj.get("refunded"):
        ctx.note(
            txn,
            "stripe.partially_refunded",
            f"{_amount(refunded, currency)} of {_amount(amount, currency)} refunded ({obj.get('id')})",
            amount_refunded=refunded,
        )
        return WebhookState.PROCESSED
    if txn.status != TransactionStatus.REFUNDED:
        # Out of order: the refund can arrive before the payment's own events.
        # A charge that was refunded was paid first, so it proves the payment.
        fulfil(ctx, found, Payment(amount, currency, None, intent_id, "charge.refunded"))
        if txn.can_transition(TransactionStatus.REFUNDED):
            txn.transition(TransactionStatus.REFUNDED)
        ctx.note(
            txn,
            "stripe.refunded",
            f"{_amount(refunded, currency)} refunded ({obj.get('id')})",
            amount_refunded=refunded,
        )
    return WebhookState.PROCESSED
