"""Turn a transaction into a Stripe Checkout Session, reserved first so that a retry never makes two.

Plain functions over a SQLAlchemy session and a `StripeGateway`; no request
globals. Each create carries our own idempotency key, stable per logical action,
so a retried request or a re-run job gets the object the first try created.
"""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import select, text
from sqlalchemy.exc import IntegrityError

from recovery import audit
from recovery.audit import Actor
from recovery.logs import get_logger
from recovery.models import (
    CheckoutSession,
    CheckoutStatus,
    Organization,
    StripeCustomer,
    Transaction,
    utcnow,
)
from recovery.models.base import DbSession, insert_ignoring_duplicates
from recovery.payments.gateway import StripeFailure, StripeGateway
from recovery.payments.pages import PaymentPages
from recovery.payments.retry_guard import refuse_while_retrying
from recovery.payments.rules import (
    PaymentRefused,
    check_amount,
    check_collectable,
    client_reference_id,
    digest,
    idempotency_key,
    our_metadata,
    product_name,
)
from recovery.payments.stripe_objects import CheckoutSessionInfo
from recovery.transactions.validation import has_control_characters
from recovery.unit_of_work import commit_now

log = get_logger("recovery.payments")

# Refusals of our key itself: Stripe ran nothing and saved nothing under the idempotency
# key, so once the key is fixed the same request must be sent again, not answered as failed.
NOT_EXECUTED = frozenset({"authentication", "permission"})
# Stripe's bounds on a Checkout Session's life, counted from when Stripe creates it.
CHECKOUT_MIN_LIFETIME = timedelta(minutes=30)
CHECKOUT_MAX_LIFETIME = timedelta(hours=24)
# We count from our reservation, before the Customer is made and the create is
# sent (and perhaps retried), on a clock that may differ from Stripe's: keep this
# far inside both bounds, so that Stripe never refuses the create for good.
CHECKOUT_LIFETIME_MARGIN = timedelta(minutes=2)
# A pending reservation sent with less life left than this is renewed first.
CHECKOUT_SEND_MARGIN = timedelta(minutes=1)
# What Stripe's Checkout Session ids look like; anything else is not worth asking Stripe about.
STRIPE_SESSION_ID = re.compile(r"cs_(test|live)_[A-Za-z0-9]{1,250}")


@dataclass(frozen=True)
class CheckoutRequest:
    """What the caller asks for. `action` identifies the logical action, if the caller has one.

    The dashboard passes its form's one-time nonce, API clients their
    Idempotency-Key header, the recovery engine the attempt, each under its
    own prefix so that one can never name another's: a repeat of the same
    action returns the same session. Like Stripe, a client's key reused with
    other details is refused rather than answered with the first session.
    """

    action: str | None = None
    action_from_client: bool = False
    customer_email: str | None = None
    metadata: dict[str, str] | None = None
    amount: int | None = None
    currency: str | None = None
    attempt_id: int | None = None


# --- customers --------------------------------------------------------------


def transaction_by_ref(
    session: DbSession, organization_id: int, ref: str
) -> tuple[Transaction, Organization] | None:
    """The organization's transaction by reference, and the organization (for product names): one query."""
    if has_control_characters(ref):
        return None  # no transaction has such a reference (clean_ref refuses it)
    found = session.execute(
        select(Transaction, Organization)
        .join(Organization, Organization.id == Transaction.organization_id)
        .where(Transaction.organization_id == organization_id, Transaction.transaction_ref == ref)
    ).first()
    return (found[0], found[1]) if found is not None else None


def get_or_create_customer(
    session: DbSession, gateway: StripeGateway, transaction: Transaction, email: str
) -> str:
    """Return the organization's Stripe Customer for `email`, creating it once.

    Safe to run twice or concurrently: the idempotency key is fixed per
    organization and email, so Stripe hands back the same Customer, and the
    unique (organization, email) row settles who stores it.
    """
    email = email.lower()
    org_id = transaction.organization_id
    found = session.scalar(
        select(StripeCustomer.stripe_customer_id).where(
            StripeCustomer.organization_id == org_id, StripeCustomer.email == email
        )
    )
    if found:
        return found
    customer_id = gateway.create_customer(
        email=email,
        name=transaction.customer_name,
        metadata={"organization_id": str(org_id)},
        key=idempotency_key(org_id, "customer", email),
    )
    # A concurrent request may have stored the same Customer first: nothing to add then.
    session.execute(
        insert_ignoring_duplicates(session, StripeCustomer, ["organization_id", "email"]).values(
            organization_id=org_id, email=email, stripe_customer_id=customer_id, created_at=utcnow()
        )
    )
    return customer_id


# --- checkout sessions ------------------------------------------------------


def _reusable(
    session: DbSession, transaction: Transaction, email: str | None, metadata: dict[str, str], now: datetime
) -> CheckoutSession | None:
    """An open or half-made session of this transaction asked for with the same details."""
    candidates = session.scalars(
        select(CheckoutSession)
        .where(
            CheckoutSession.transaction_id == transaction.id,
            CheckoutSession.status.in_((CheckoutStatus.PENDING, CheckoutStatus.OPEN)),
            CheckoutSession.attempt_id.is_(None),
        )
        .order_by(CheckoutSession.created_at.desc())
    )
    for candidate in candidates:
        # A session about to lapse is no use to a customer who opens it later.
        if candidate.expires_at <= now + timedelta(minutes=5):
            continue
        if candidate.request_fingerprint == _fingerprint(email, metadata):
            return candidate
    return None


def _fingerprint(email: str | None, metadata: dict[str, str]) -> str:
    return digest(email, sorted(metadata.items()))


def _reserve(
    session: DbSession,
    transaction: Transaction,
    request: CheckoutRequest,
    email: str | None,
    metadata: dict[str, str],
    expires_in: timedelta,
) -> CheckoutSession:
    """Find or save the reservation for this logical action, and commit it before calling Stripe.

    The commit is deliberate: a crash between Stripe's answer and our final
    commit must leave the key and the exact parameters (expires_at included)
    behind, so that the retry sends the same request and Stripe replays it.
    """
    org_id = transaction.organization_id
    now = utcnow()
    if request.action is not None:
        # One key space per organization, so a key reused for another transaction is caught.
        key = idempotency_key(org_id, "checkout", request.action)
        found = _by_key(session, org_id, key)
        if found is not None:
            _check_same_request(found, transaction, request, _fingerprint(email, metadata))
            return found
    else:
        reusable = _reusable(session, transaction, email, metadata, now)
        if reusable is not None:
            return reusable
        key = idempotency_key(org_id, f"txn{transaction.id}-checkout", uuid.uuid4().hex)
    reservation = CheckoutSession(
        organization_id=org_id,
        transaction_id=transaction.id,
        attempt_id=request.attempt_id,
        idempotency_key=key,
        status=CheckoutStatus.PENDING,
        amount=transaction.amount,
        currency=transaction.currency,
        customer_email=email,
        expires_at=now + _lifetime(expires_in),
        request_fingerprint=_fingerprint(email, metadata),
    )
    session.add(reservation)
    try:
        _commit_reservation(session)
    except IntegrityError:
        # The same action raced us to the reservation; use theirs (the failed commit
        # leaves nothing else to keep: the reservation is the request's first write).
        session.rollback()
        found = _by_key(session, org_id, key)
        if found is None:
            raise
        return found
    return reservation


def _by_key(session: DbSession, organization_id: int, key: str) -> CheckoutSession | None:
    return session.scalar(
        select(CheckoutSession).where(
            CheckoutSession.organization_id == organization_id, CheckoutSession.idempotency_key == key
        )
    )


def _check_same_request(
    found: CheckoutSession, transaction: Transaction, request: CheckoutRequest, fingerprint: str
) -> None:
    """Refuse a key used before for another transaction, or (a client's key) with other details."""
    if found.transaction_id != transaction.id:
        raise PaymentRefused("This idempotency key was already used for another transaction.", status=409)
    if request.action_from_client and found.request_fingerprint != fingerprint:
        raise PaymentRefused(
            "This idempotency key was already used with a different customer_email or "
            "metadata; send a new key for a new request.",
            status=409,
        )


def _lifetime(expires_in: timedelta) -> timedelta:
    return min(
        max(expires_in, CHECKOUT_MIN_LIFETIME + CHECKOUT_LIFETIME_MARGIN),
        CHECKOUT_MAX_LIFETIME - CHECKOUT_LIFETIME_MARGIN,
    )


def _commit_reservation(session: DbSession) -> None:
    """Commit what must be on disk before Stripe is called, keeping the objects' state."""
    if session.get_bind().dialect.name == "postgresql":
        # The reservation must survive our process dying mid-request, which an
        # asynchronous commit does; only a PostgreSQL crash in the next ~0.6 s could
        # lose it, and then the retry merely makes a second, unpaid session. It
        # saves a WAL flush (1-5 ms) per create; the final commit stays synchronous.
        session.execute(text("SET LOCAL synchronous_commit = off"))
    commit_now(session, "the reservation: our key and exact parameters, before Stripe", keep_state=True)


def _renew_if_stale(session: DbSession, reservation: CheckoutSession, expires_in: timedelta) -> None:
    """Give a pending reservation sent long after it was made a new expiry (and so a new Stripe key).

    Its first try may have been refused for our key, or never answered: sent
    as it is, Stripe would count less than its 30 minutes and refuse it for
    good. Had Stripe made a session under the old key after all, that one is
    never shown to anyone, stays unpaid and lapses.
    """
    now = utcnow()
    if reservation.expires_at >= now + CHECKOUT_MIN_LIFETIME + CHECKOUT_SEND_MARGIN:
        return
    reservation.expires_at = now + _lifetime(expires_in)
    _commit_reservation(session)


def create_checkout_session(
    session: DbSession,
    gateway: StripeGateway,
    transaction: Transaction,
    actor: Actor,
    request: CheckoutRequest,
    *,
    pages: PaymentPages | None = None,
    expires_in: timedelta | None = None,
    organization: Organization | None = None,
) -> CheckoutSession:
    """Create (or return the already created) Checkout Session for the transaction.

    `pages` and `expires_in` default to the gateway's settings (our customer
    pages under BASE_URL, STRIPE_CHECKOUT_EXPIRES_MINUTES); `organization`,
    the transaction's, if the caller loaded it (else one SELECT).

    Safe to run twice: the same logical action gets the same reservation and
    idempotency key, hence the same Stripe session. Commits twice on purpose
    (`commit_now`): the reservation before Stripe is called, and what a Stripe
    refusal leaves to keep; the caller's boundary commits the answer. Raises
    PaymentRefused or StripeFailure.
    """
    check_collectable(transaction)
    check_amount(transaction, request.amount, request.currency)
    # Takes the transaction's lock until the reservation commits: a card retry and this
    # way to pay never both charge (retry_guard.py).
    refuse_while_retrying(session, transaction)
    pages = pages or PaymentPages(gateway.settings.base_url)
    expires_in = expires_in or gateway.settings.checkout_expires
    metadata = {**(request.metadata or {}), **our_metadata(transaction, request.attempt_id)}
    raw_email = request.customer_email or transaction.customer_email
    email = raw_email.lower() if raw_email else None
    reservation = _reserve(session, transaction, request, email, metadata, expires_in)
    if reservation.status != CheckoutStatus.PENDING:
        if reservation.status == CheckoutStatus.FAILED:
            # As Stripe replays a key's first answer: the same refusal, not a new status.
            raise StripeFailure(
                reservation.error_kind or "api_error",
                reservation.error or "Stripe refused this request.",
                reservation.error_status or 502,
            )
        return reservation
    _renew_if_stale(session, reservation, expires_in)
    customer_id = get_or_create_customer(session, gateway, transaction, email) if email else None
    if organization is None:
        organization = session.get(Organization, transaction.organization_id)
    info = _ask_stripe(
        session, gateway, transaction, organization, reservation, customer_id, email, metadata, pages
    )
    _record_session(session, actor, transaction, reservation, info, customer_id)
    return reservation


def _ask_stripe(
    session: DbSession,
    gateway: StripeGateway,
    transaction: Transaction,
    organization: Organization | None,
    reservation: CheckoutSession,
    customer_id: str | None,
    email: str | None,
    metadata: dict[str, str],
    pages: PaymentPages,
) -> CheckoutSessionInfo:
    """Send the reservation to Stripe under its key; on a refusal keep what must outlive the request."""
    try:
        return gateway.create_checkout_session(
            amount=reservation.amount,
            currency=reservation.currency,
            product_name=product_name(organization, transaction),
            customer_id=customer_id,
            customer_email=email,
            client_reference_id=client_reference_id(transaction, reservation.attempt_id),
            metadata=metadata,
            success_url=pages.success_url,
            cancel_url=pages.cancel_url,
            expires_at=reservation.expires_at,
            locale=transaction.customer_locale,
            key=reservation.stripe_idempotency_key,
        )
    except StripeFailure as failure:
        if not failure.retryable and failure.kind not in NOT_EXECUTED:
            # Stripe saved this answer under the key; a repeat would only get it again.
            reservation.transition(CheckoutStatus.FAILED)
            reservation.error = failure.message[:500]
            reservation.error_kind, reservation.error_status = failure.kind, failure.http_status
        # The refusal rolls the request back: keep the closed reservation (a repeat answers
        # the same) and the Customer made for it (the next try reuses it).
        commit_now(session, "a refused reservation and its Customer, kept for the repeat")
        raise


def _record_session(
    session: DbSession,
    actor: Actor,
    transaction: Transaction,
    reservation: CheckoutSession,
    info: CheckoutSessionInfo,
    customer_id: str | None,
) -> None:
    """Note Stripe's answer on the reservation and the transaction, in the timeline and the log."""
    reservation.stripe_session_id = info.id
    reservation.url = info.url
    reservation.expires_at = info.expires_at
    reservation.payment_status = info.payment_status
    reservation.stripe_payment_intent_id = info.payment_intent_id
    follow_status(reservation, info)
    transaction.stripe_checkout_session_id = info.id
    transaction.checkout_url = info.url
    transaction.checkout_expires_at = info.expires_at
    if customer_id:
        transaction.stripe_customer_id = customer_id
    if info.payment_intent_id and not transaction.stripe_payment_intent_id:
        transaction.stripe_payment_intent_id = info.payment_intent_id
    audit.record(
        session,
        actor,
        "stripe.checkout_session_created",
        transaction_id=transaction.id,
        target_type="checkout_session",
        target_id=info.id,
        session_id=info.id,
        url=info.url,
        expires_at=info.expires_at.isoformat(),
    )
    log.info(
        "stripe_checkout_session_created",
        session_id=info.id,
        transaction_ref=transaction.transaction_ref,
        amount=reservation.amount,
        currency=reservation.currency,
        organization_id=transaction.organization_id,
        attempt_id=reservation.attempt_id,
    )


def follow_status(record: CheckoutSession, info: CheckoutSessionInfo) -> None:
    """Follow Stripe's session status, forward only (see CHECKOUT_TRANSITIONS)."""
    status = info.status or CheckoutStatus.OPEN
    if status in CheckoutStatus.ALL and record.can_transition(status):
        record.transition(status)
    record.payment_status = info.payment_status
    if info.payment_intent_id:
        record.stripe_payment_intent_id = info.payment_intent_id


def find_checkout_session(
    session: DbSession, organization_id: int, session_id: str
) -> CheckoutSession | None:
    """This organization's record of a Stripe session id; None for anyone else's."""
    return session.scalar(
        select(CheckoutSession).where(
            CheckoutSession.organization_id == organization_id,
            CheckoutSession.stripe_session_id == session_id,
        )
    )


def unrecorded_checkout_session(
    session: DbSession, gateway: StripeGateway, organization_id: int, session_id: str
) -> CheckoutSessionInfo | None:
    """Stripe's copy of a session we hold no record of, if it is this organization's.

    Sessions opened from our Payment Links are made by Stripe, not by us; a
    session whose final commit was lost has no id on its record. Our own
    metadata on it (copied from the link) says whose it is; None for anyone
    else's and for a session Stripe does not know.
    """
    if not STRIPE_SESSION_ID.fullmatch(session_id):
        return None
    try:
        info = gateway.retrieve_checkout_session(session_id)
    except StripeFailure as failure:
        if failure.code == "resource_missing":
            return None
        raise
    transaction_id = info.metadata.get("transaction_id", "")
    if info.metadata.get("organization_id") != str(organization_id) or not transaction_id.isdigit():
        return None
    found = session.scalar(
        select(Transaction.id).where(
            Transaction.id == int(transaction_id), Transaction.organization_id == organization_id
        )
    )
    return info if found is not None else None


def refresh_checkout_session(
    session: DbSession, gateway: StripeGateway, record: CheckoutSession
) -> CheckoutSessionInfo:
    """Fetch the session's live status from Stripe and note it on our record.

    Only the session record follows; the transaction is recovered by the
    signed webhook, never by someone looking at a status.
    """
    if record.stripe_session_id is None:
        raise PaymentRefused("This checkout session was never created at Stripe.", status=404)
    info = gateway.retrieve_checkout_session(record.stripe_session_id)
    follow_status(record, info)
    return info


def latest_checkout_session(session: DbSession, transaction: Transaction) -> CheckoutSession | None:
    return session.scalar(
        select(CheckoutSession)
        .where(
            CheckoutSession.transaction_id == transaction.id,
            CheckoutSession.stripe_session_id.is_not(None),
        )
        .order_by(CheckoutSession.created_at.desc(), CheckoutSession.id.desc())
        .limit(1)
    )
