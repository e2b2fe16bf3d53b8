"""A transaction's Stripe Payment Link: Product, Price and link, each made once."""

from __future__ import annotations

from dataclasses import dataclass

from recovery import audit
from recovery.audit import Actor
from recovery.logs import get_logger
from recovery.models import Organization, Transaction
from recovery.models.base import DbSession
from recovery.payments.gateway import StripeFailure, StripeGateway
from recovery.payments.pages import PaymentPages, link_pages
from recovery.payments.rules import (
    check_amount,
    check_collectable,
    idempotency_key,
    our_metadata,
    product_name,
)
from recovery.payments.stripe_objects import PaymentLinkInfo
from recovery.unit_of_work import commit_now

log = get_logger("recovery.payments")


@dataclass(frozen=True)
class PaymentLinkResult:
    payment_link_id: str
    url: str
    product_id: str
    price_id: str
    created: bool


def create_payment_link(
    session: DbSession,
    gateway: StripeGateway,
    transaction: Transaction,
    actor: Actor,
    *,
    amount: int | None = None,
    currency: str | None = None,
) -> PaymentLinkResult:
    """Return the transaction's active Payment Link, creating Product, Price and link once.

    Safe to run twice: each Stripe object has a key fixed by the transaction
    (and, for the link, by the link it replaces), so repeats get the same objects.
    """
    check_collectable(transaction)
    check_amount(transaction, amount, currency)
    pages = link_pages(gateway.settings.base_url, gateway.settings.link_keys[-1], transaction.id)
    previous = transaction.stripe_payment_link_id
    active = _still_active(gateway, transaction)
    if active is not None:
        return active
    try:
        link = _make_link(session, gateway, transaction, pages, previous)
    except StripeFailure:
        # The refusal rolls the request back: keep the Product and Price made before
        # it, which the next try reuses under the same keys.
        commit_now(session, "the Product and Price made before Stripe refused the link")
        raise
    # Set by _make_link, or kept from before.
    assert transaction.stripe_product_id is not None and transaction.stripe_price_id is not None
    transaction.stripe_payment_link_id = link.id
    transaction.payment_link_url = link.url
    audit.record(
        session,
        actor,
        "stripe.payment_link_created",
        transaction_id=transaction.id,
        target_type="payment_link",
        target_id=link.id,
        payment_link_id=link.id,
        url=link.url,
    )
    log.info(
        "stripe_payment_link_created",
        payment_link_id=link.id,
        product_id=transaction.stripe_product_id,
        price_id=transaction.stripe_price_id,
        transaction_ref=transaction.transaction_ref,
        amount=transaction.amount,
        currency=transaction.currency,
        organization_id=transaction.organization_id,
    )
    return PaymentLinkResult(
        link.id, link.url, transaction.stripe_product_id, transaction.stripe_price_id, True
    )


def _still_active(gateway: StripeGateway, transaction: Transaction) -> PaymentLinkResult | None:
    """The transaction's Payment Link if Stripe says it is still active; forget one Stripe does not know."""
    previous = transaction.stripe_payment_link_id
    if not (previous and transaction.stripe_product_id and transaction.stripe_price_id):
        return None
    try:
        current = gateway.retrieve_payment_link(previous)
    except StripeFailure as failure:
        if failure.code != "resource_missing":
            raise
        # Made under another Stripe account or mode (a test key before going
        # live): its Product and Price are not there either, so start afresh.
        log.warning("stripe_payment_link_missing", payment_link_id=previous, transaction_id=transaction.id)
        transaction.stripe_product_id = transaction.stripe_price_id = None
        return None
    if not current.active:
        return None
    return PaymentLinkResult(
        current.id, current.url, transaction.stripe_product_id, transaction.stripe_price_id, False
    )


def _make_link(
    session: DbSession,
    gateway: StripeGateway,
    transaction: Transaction,
    pages: PaymentPages,
    previous: str | None,
) -> PaymentLinkInfo:
    """Make what the link lacks (Product, Price), then the link, each under a key fixed per transaction."""
    org_id = transaction.organization_id
    subject = f"txn{transaction.id}"
    metadata = our_metadata(transaction, None)
    if not transaction.stripe_product_id:
        organization = session.get(Organization, org_id)
        transaction.stripe_product_id = gateway.create_product(
            name=product_name(organization, transaction),
            metadata=metadata,
            key=idempotency_key(org_id, f"{subject}-product", "product"),
        )
    if not transaction.stripe_price_id:
        transaction.stripe_price_id = gateway.create_price(
            product_id=transaction.stripe_product_id,
            amount=transaction.amount,
            currency=transaction.currency,
            key=idempotency_key(org_id, f"{subject}-price", f"{transaction.amount}{transaction.currency}"),
        )
    return gateway.create_payment_link(
        price_id=transaction.stripe_price_id,
        metadata=metadata,
        success_url=pages.success_url,
        key=idempotency_key(org_id, f"{subject}-payment-link", previous or "first"),
    )


def deactivate_payment_link(
    session: DbSession, gateway: StripeGateway, transaction: Transaction, actor: Actor
) -> bool:
    """Switch the transaction's Payment Link off so it cannot be paid again; False if none."""
    link_id = transaction.stripe_payment_link_id
    if not link_id:
        return False
    gateway.deactivate_payment_link(link_id)
    audit.record(
        session,
        actor,
        "stripe.payment_link_deactivated",
        transaction_id=transaction.id,
        target_type="payment_link",
        target_id=link_id,
        payment_link_id=link_id,
    )
    log.info(
        "stripe_payment_link_deactivated",
        payment_link_id=link_id,
        transaction_ref=transaction.transaction_ref,
    )
    return True
