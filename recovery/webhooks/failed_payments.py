"""A failed payment Stripe reports that we do not hold: a new transaction, if its organization wants it."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from rq import Retry
from sqlalchemy import select

from recovery import queue as jobs_queue
from recovery.audit import Actor
from recovery.logs import get_logger
from recovery.models import (
    Organization,
    Transaction,
    TransactionSource,
    WebhookEvent,
)
from recovery.payments.fulfilment import (
    EventContradicts,
)
from recovery.payments.rules import CLOSED_STATUSES
from recovery.unit_of_work import on_commit
from recovery.webhooks.context import Context
from recovery.webhooks.matching import account_organization, as_dict, claims_of, stripe_id

log = get_logger("recovery.webhooks")


def _import_organization(ctx: Context, obj: dict[str, Any]) -> Organization | None:
    """Whose unknown failed PaymentIntent this is: the connected account's organization, else the metadata's.

    A connected account's event belongs to the organization linked to that
    account; metadata naming another one is refused, never followed.
    """
    claimed = claims_of(obj).organization_id
    if ctx.event is not None and ctx.event.account:
        organization = account_organization(ctx, ctx.event.account)
        if organization is not None and claimed is not None and claimed != organization.id:
            raise EventContradicts(
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


def import_failure(
    ctx: Context, obj: dict[str, Any], code: str | None, decline_code: str | None, message: str | None
) -> Transaction | None:
    """A new failed transaction for an unknown failed PaymentIntent, if its organization imports them.

    None when it is not imported (no such organization, import off, paid
    since, or not a valid transaction); the one we already hold for a repeat.
    """
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
    intent_id = stripe_id(obj.get("id")) or ""
    if _succeeded_since(ctx, intent_id):
        # Stripe's events come in any order: the customer paid, so there is nothing to chase.
        log.info("stripe_failure_import_skipped", payment_intent_id=intent_id, reason="succeeded since")
        return None
    raw = _transaction_fields(obj, intent_id, code, decline_code, message)
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
    note_saved_card(txn, obj)
    # A job of its own after the commit, so that a refusal to start never fails the event.
    on_commit(ctx.session, queue_auto_start, txn.id)
    log.info(
        "stripe_failure_imported",
        payment_intent_id=intent_id,
        organization_id=organization.id,
        transaction_id=txn.id,
        failure_code=code,
    )
    return txn


def _transaction_fields(
    obj: dict[str, Any], intent_id: str, code: str | None, decline_code: str | None, message: str | None
) -> dict[str, Any]:
    """The PaymentIntent as the fields of a new transaction (what create_transaction validates)."""
    error = as_dict(obj.get("last_payment_error"))
    billing = as_dict(as_dict(error.get("payment_method")).get("billing_details"))
    shipping = as_dict(obj.get("shipping"))
    created = obj.get("created")
    raw: dict[str, Any] = {
        "transaction_ref": intent_id,
        "amount": obj.get("amount"),
        "currency": obj.get("currency"),
        # The most specific reason: the issuer's decline_code (insufficient_funds) before the
        # error's code (card_declined), as Stripe's decline-code table and declines.py read it.
        "failure_code": decline_code or code,
        "failure_message": message,
        "customer_email": obj.get("receipt_email") or billing.get("email"),
        "customer_name": billing.get("name") or shipping.get("name"),
        "metadata": {"stripe_decline_code": decline_code} if decline_code else {},
    }
    if isinstance(created, int):
        raw["failed_at"] = datetime.fromtimestamp(created, UTC).isoformat()
    return raw


def saved_card(obj: dict[str, Any]) -> tuple[str | None, str | None]:
    """The failed PaymentIntent's Customer and the PaymentMethod it failed with (id or object)."""
    error = as_dict(obj.get("last_payment_error"))
    payment_method = stripe_id(obj.get("payment_method")) or stripe_id(error.get("payment_method"))
    return stripe_id(obj.get("customer")), payment_method


def note_saved_card(txn: Transaction, obj: dict[str, Any]) -> None:
    """Keep what a card retry needs from a failure of the transaction's own PaymentIntent.

    Only its own: a customer's declined Checkout payment is another PaymentIntent,
    whose card was typed once and never saved, so it is nothing to retry, and a
    transaction already paid or closed keeps its failure as it was. The decline
    code follows the latest failure (a declined card retry says why it failed now).
    """
    intent_id = stripe_id(obj.get("id"))
    if not intent_id or txn.stripe_payment_intent_id != intent_id or txn.status in CLOSED_STATUSES:
        return
    customer_id, payment_method_id = saved_card(obj)
    txn.stripe_customer_id = customer_id or txn.stripe_customer_id
    txn.stripe_payment_method_id = payment_method_id or txn.stripe_payment_method_id
    error = as_dict(obj.get("last_payment_error"))
    reason = error.get("decline_code") or error.get("code")
    if isinstance(reason, str) and reason:
        txn.failure_code = reason[:64]
        if isinstance(error.get("message"), str):
            txn.failure_message = error["message"][:500]


def queue_auto_start(transaction_id: int) -> None:
    """Queue the start of an imported failed payment's recovery, once (if its organization wants one)."""
    jobs_queue.enqueue_once(
        "recovery.recoveries.jobs.start_imported_recovery",
        transaction_id,
        job_id=jobs_queue.job_id("auto-start", transaction_id),
        retry=Retry(max=3, interval=[10, 60, 300]),
    )
