"""What each Stripe event type does to our rows: one handler per type, registered by name.

A handler parses its object, finds the transaction it is about (matching.py)
and hands the domain step on: a payment to recovery.payments.fulfilment, an
unknown failed payment to failed_payments.py. It gets a `Context` (context.py)
and returns the event's final state: processed, ignored or unmatched. It
never commits: the job runs it in one database transaction and commits, or
rolls everything back and records the error.

Every handler is safe to run twice or concurrently for the same or for
different events about one payment: state only moves forward (the models'
transitions), and fulfilment is claimed by inserting a `PaymentFulfilment`
row whose unique constraints let exactly one event win.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from sqlalchemy import select

from recovery.logs import get_logger
from recovery.models import (
    CheckoutSession,
    CheckoutStatus,
    PaymentFulfilment,
    TransactionStatus,
    WebhookState,
)
from recovery.payments import fulfilment
from recovery.payments.fulfilment import (
    Payment,
    Unread,
    checkout_record,
    format_amount,
)
from recovery.payments.gateway import StripeFailure
from recovery.payments.stripe_objects import CheckoutSessionInfo
from recovery.webhooks.context import Context
from recovery.webhooks.failed_payments import import_failure, note_saved_card
from recovery.webhooks.matching import Match, as_dict, claims_of, match, stripe_id

log = get_logger("recovery.webhooks")


# --- fulfilment (recovery.payments.fulfilment) ------------------------------


def fulfil(
    ctx: Context, found: Match, payment: Payment, record: CheckoutSession | Unread | None = Unread.RECORD
) -> bool:
    """Recover the matched transaction once (recovery.payments.fulfilment); False if it already was."""
    fulfilled = fulfilment.fulfil(
        ctx.session, ctx.witness, found.transaction, payment, found.attempt_id, record=record
    )
    if fulfilled:
        ctx.recovered_transaction_id = found.transaction.id
    return fulfilled


Handler = Callable[[Context, dict[str, Any]], str]
HANDLERS: dict[str, Handler] = {}


def handles(*types: str) -> Callable[[Handler], Handler]:
    def register(handler: Handler) -> Handler:
        for name in types:
            HANDLERS[name] = handler
        return handler

    return register


# --- helpers over raw Stripe objects -----------------------------------------


def _note_session_status(ctx: Context, obj: dict[str, Any]) -> CheckoutSession | None:
    """Follow the session's status on our record, forward only; return the record, if we hold one."""
    record = checkout_record(ctx.session, stripe_id(obj.get("id")))
    if record is None:
        return None
    status = obj.get("status")
    if status in CheckoutStatus.ALL and record.can_transition(status):
        record.transition(status)
        if status == CheckoutStatus.COMPLETE:
            record.completed_at = ctx.occurred_at
    # Paid is final: a stale "unpaid" snapshot never un-pays our record.
    if isinstance(obj.get("payment_status"), str) and record.payment_status != "paid":
        record.payment_status = obj["payment_status"]
    intent = stripe_id(obj.get("payment_intent"))
    if intent and not record.stripe_payment_intent_id:
        record.stripe_payment_intent_id = intent
    return record


def _session_match(ctx: Context, obj: dict[str, Any]) -> Match | None:
    return match(
        ctx,
        obj,
        session_id=stripe_id(obj.get("id")),
        payment_intent_id=stripe_id(obj.get("payment_intent")),
        link_id=stripe_id(obj.get("payment_link")),
    )


def session_payment(obj: dict[str, Any], source: str) -> Payment | None:
    """What the session paid, in the merchant's currency.

    With Adaptive Pricing the customer pays in their own currency:
    `amount_total` and `currency` are then theirs, and `currency_conversion`
    holds the amount in the currency the session was made in (ours).
    """
    conversion = as_dict(obj.get("currency_conversion"))
    if isinstance(conversion.get("amount_total"), int) and isinstance(conversion.get("source_currency"), str):
        amount, currency = conversion["amount_total"], conversion["source_currency"]
    else:
        amount, currency = obj.get("amount_total"), obj.get("currency")
    if not isinstance(amount, int) or not isinstance(currency, str):
        return None
    return Payment(
        amount, currency.lower(), stripe_id(obj.get("id")), stripe_id(obj.get("payment_intent")), source
    )


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
        fresh = _reread(ctx, stripe_id(obj.get("id")))
        if fresh is not None and fresh.get("payment_status") == "paid":
            obj = fresh
        else:
            _note_session_status(ctx, obj)
            ctx.note(
                found.transaction,
                "stripe.checkout_session_awaiting_payment",
                f"Checkout completed ({obj.get('id')}); the payment method settles later",
                checkout_session_id=stripe_id(obj.get("id")),
            )
            return WebhookState.PROCESSED
    record = _note_session_status(ctx, obj)
    payment = session_payment(obj, ctx.event.type if ctx.event else "reconciliation")
    if payment is None:
        raise ValueError("checkout session without amount_total or currency")
    fulfil(ctx, found, payment, record)
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
        checkout_session_id=stripe_id(obj.get("id")),
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
        checkout_session_id=stripe_id(obj.get("id")),
    )
    return WebhookState.PROCESSED


# --- payment intents ---------------------------------------------------------


@handles("payment_intent.succeeded")
def intent_succeeded(ctx: Context, obj: dict[str, Any]) -> str:
    """Log the payment; it also recovers the transaction it names, if not yet recovered."""
    intent_id = stripe_id(obj.get("id"))
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
        f"{format_amount(amount, currency.lower())} charged ({intent_id})",
        payment_intent_id=intent_id,
        amount=amount,
        currency=currency.lower(),
    )
    if found.transaction.status not in (TransactionStatus.RECOVERED, TransactionStatus.REFUNDED):
        fulfil(ctx, found, Payment(amount, currency.lower(), None, intent_id, "payment_intent.succeeded"))
    return WebhookState.PROCESSED


def _failure(obj: dict[str, Any]) -> tuple[str | None, str | None, str | None]:
    error = as_dict(obj.get("last_payment_error"))
    return error.get("code"), error.get("decline_code"), error.get("message")


@handles("payment_intent.payment_failed")
def intent_failed(ctx: Context, obj: dict[str, Any]) -> str:
    """Note the failed attempt; an unknown PaymentIntent may become a new failed transaction."""
    intent_id = stripe_id(obj.get("id"))
    code, decline_code, message = _failure(obj)
    found = match(ctx, obj, payment_intent_id=intent_id)
    if found is None:
        if claims_of(obj).transaction_id is not None:
            return WebhookState.UNMATCHED  # it names a transaction we do not have
        txn = import_failure(ctx, obj, code, decline_code, message)
        if txn is None:
            return WebhookState.UNMATCHED
        found = Match(txn, None, "import")
    note_saved_card(found.transaction, obj)  # the card a retry may charge, and why it failed
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


# --- charges -----------------------------------------------------------------


@handles("charge.refunded")
def charge_refunded(ctx: Context, obj: dict[str, Any]) -> str:
    """A full refund of a recovered transaction makes it `refunded`; a partial one is noted."""
    intent_id = stripe_id(obj.get("payment_intent"))
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
            f"{format_amount(refunded, currency)} of another payment refunded "
            f"({obj.get('id')}, {intent_id}); "
            f"the recovery by {paid_by} stands",
            amount_refunded=refunded,
            payment_intent_id=intent_id,
        )
        return WebhookState.PROCESSED
    if not obj.get("refunded"):
        ctx.note(
            txn,
            "stripe.partially_refunded",
            f"{format_amount(refunded, currency)} of {format_amount(amount, currency)} refunded "
            f"({obj.get('id')})",
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
            f"{format_amount(refunded, currency)} refunded ({obj.get('id')})",
            amount_refunded=refunded,
        )
    return WebhookState.PROCESSED
