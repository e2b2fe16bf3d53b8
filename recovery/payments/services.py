"""Turn a failed transaction into a Stripe Checkout Session or Payment Link.

Plain functions over a SQLAlchemy session and a `StripeGateway`; no request
globals. Each create carries our own idempotency key, stable per logical action,
so a retried request or a re-run job gets the object the first try created.
"""

from __future__ import annotations

import hashlib
import re
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from itsdangerous import BadSignature, URLSafeSerializer
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
    TransactionStatus,
    utcnow,
)
from recovery.models.base import DbSession, commit_keeping_state, insert_ignoring_duplicates
from recovery.money import card_charge_problem
from recovery.payments.gateway import CheckoutSessionInfo, StripeFailure, StripeGateway
from recovery.transactions.validation import deceptive_character, deceptive_message, has_control_characters

log = get_logger("recovery.payments")

# Stripe's limits on metadata: 50 keys, keys up to 40 characters, values up to 500.
METADATA_MAX_KEYS = 50
METADATA_KEY_MAX = 40
METADATA_VALUE_MAX = 500
# Keys we set ourselves; a client's metadata may not overwrite them.
RESERVED_METADATA = frozenset({"organization_id", "transaction_id", "transaction_ref", "attempt_id"})
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
LINK_SALT = "recovery.payment-link-success"
# What Stripe's Checkout Session ids look like; anything else is not worth asking Stripe about.
STRIPE_SESSION_ID = re.compile(r"cs_(test|live)_[A-Za-z0-9]{1,250}")
# Nothing can be collected for these any more.
CLOSED_STATUSES = frozenset(
    {TransactionStatus.RECOVERED, TransactionStatus.CANCELLED, TransactionStatus.REFUNDED}
)


class PaymentRefused(Exception):
    """The request cannot be honoured as asked; `field` names the input at fault, if any."""

    def __init__(self, message: str, *, status: int = 422, field: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.field = field


@dataclass(frozen=True)
class PaymentPages:
    """Where Stripe sends the customer back to: our customer pages under BASE_URL."""

    base_url: str
    # The recovery attempt's link token, for sessions opened from the customer
    # pay page: the success page then shows only that attempt's session, and the
    # cancel page can offer to try again.
    token: str | None = None
    # For a Payment Link, its transaction signed (see link_pages): Stripe makes the
    # link's sessions, so we hold no record of them, and the success page asks
    # Stripe only about sessions that a link of ours sent back.
    link: str | None = None

    @property
    def success_url(self) -> str:
        # Stripe fills in {CHECKOUT_SESSION_ID}; the page only shows it, fulfilment is the webhook's.
        url = f"{self.base_url.rstrip('/')}/pay/success?session_id={{CHECKOUT_SESSION_ID}}"
        if self.token:
            return f"{url}&t={self.token}"
        return f"{url}&l={self.link}" if self.link else url

    @property
    def cancel_url(self) -> str:
        url = f"{self.base_url.rstrip('/')}/pay/cancel"
        return f"{url}?t={self.token}" if self.token else url


def link_pages(base_url: str, secret_key: str, transaction_id: int) -> PaymentPages:
    """The pages for a transaction's Payment Link, its success page able to tell whose it is."""
    return PaymentPages(base_url, link=URLSafeSerializer(secret_key, salt=LINK_SALT).dumps(transaction_id))


def transaction_of_link(secret_keys: Sequence[str], signed: str) -> int | None:
    """The transaction a Payment Link's success URL names, if we signed it with one of the keys.

    Links live at Stripe for good: `secret_keys` is the current key with the
    ones it replaced (oldest first), so a rotation leaves their pages working.
    """
    try:
        value = URLSafeSerializer(list(secret_keys), salt=LINK_SALT).loads(signed)
    except BadSignature:
        return None
    return value if type(value) is int else None


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


@dataclass(frozen=True)
class PaymentLinkResult:
    payment_link_id: str
    url: str
    product_id: str
    price_id: str
    created: bool


def _digest(*parts: object) -> str:
    return hashlib.sha256("\x1f".join(str(p) for p in parts).encode()).hexdigest()[:32]


def idempotency_key(organization_id: int, subject: str, action: str) -> str:
    """Our Stripe idempotency key: readable prefix, hashed action (clients' keys can be long)."""
    return f"recovery-org{organization_id}-{subject}-{_digest(action)}"


def clean_metadata(raw: Any) -> dict[str, str]:
    """Validate a client's metadata against Stripe's limits and our reserved keys."""
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise PaymentRefused("metadata must be an object of string keys and values.", field="metadata")
    if len(raw) > METADATA_MAX_KEYS - len(RESERVED_METADATA):
        raise PaymentRefused(
            f"metadata may have at most {METADATA_MAX_KEYS - len(RESERVED_METADATA)} keys.", field="metadata"
        )
    cleaned: dict[str, str] = {}
    for key, value in raw.items():
        if not isinstance(key, str) or not key or len(key) > METADATA_KEY_MAX or "[" in key or "]" in key:
            raise PaymentRefused(
                f"metadata key {str(key)[:50]!r} must be 1 to {METADATA_KEY_MAX} characters, "
                "without brackets.",
                field="metadata",
            )
        if key in RESERVED_METADATA:
            raise PaymentRefused(f"metadata key {key!r} is set by Recovery itself.", field="metadata")
        if isinstance(value, bool) or not isinstance(value, str | int | float):
            raise PaymentRefused(f"metadata value for {key!r} must be a string or number.", field="metadata")
        text = str(value)
        if has_control_characters(key) or has_control_characters(text):
            # Stripe's form encoding would fail on a lone surrogate, after our reservation.
            raise PaymentRefused(
                "metadata keys and values must not contain control characters.", field="metadata"
            )
        deceptive = deceptive_character(key) or deceptive_character(text, joiners=True)
        if deceptive:
            raise PaymentRefused(f"metadata {key!r}: {deceptive_message(deceptive)}", field="metadata")
        if len(text) > METADATA_VALUE_MAX:
            raise PaymentRefused(
                f"metadata value for {key!r} is longer than {METADATA_VALUE_MAX} characters.",
                field="metadata",
            )
        cleaned[key] = text
    return cleaned


def _our_metadata(transaction: Transaction, attempt_id: int | None) -> dict[str, str]:
    metadata = {
        "organization_id": str(transaction.organization_id),
        "transaction_id": str(transaction.id),
        "transaction_ref": transaction.transaction_ref,
    }
    if attempt_id is not None:
        metadata["attempt_id"] = str(attempt_id)
    return metadata


def client_reference_id(transaction: Transaction, attempt_id: int | None = None) -> str:
    """Name organization, transaction and attempt in Stripe's one free-text reference field."""
    reference = f"recovery:{transaction.organization_id}:{transaction.id}"
    return f"{reference}:{attempt_id}" if attempt_id is not None else reference


def _check_collectable(transaction: Transaction) -> None:
    if transaction.status == TransactionStatus.CANCELLED:
        raise PaymentRefused(
            f"Transaction {transaction.transaction_ref} is closed: nothing is collected for it. "
            "Reopen it to ask for a payment.",
            status=409,
        )
    if transaction.status in CLOSED_STATUSES:
        raise PaymentRefused(
            f"Transaction {transaction.transaction_ref} is {transaction.status}; "
            "there is nothing to collect.",
            status=409,
        )


def _check_amount(transaction: Transaction, request: CheckoutRequest) -> None:
    problem = card_charge_problem(transaction.amount, transaction.currency)
    if problem:
        # Stripe would refuse it; asking it would only record a failed attempt.
        raise PaymentRefused(problem, field="amount")
    if request.amount is not None and request.amount != transaction.amount:
        raise PaymentRefused(
            f"amount {request.amount} does not match the transaction's amount {transaction.amount}.",
            field="amount",
        )
    if request.currency is not None and request.currency.lower() != transaction.currency:
        raise PaymentRefused(
            f"currency {request.currency!r} does not match the transaction's currency "
            f"{transaction.currency!r}.",
            field="currency",
        )


# --- customers --------------------------------------------------------------


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
    return _digest(email, sorted(metadata.items()))


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
        found = session.scalar(
            select(CheckoutSession).where(
                CheckoutSession.organization_id == org_id, CheckoutSession.idempotency_key == key
            )
        )
        if found is not None:
            if found.transaction_id != transaction.id:
                raise PaymentRefused(
                    "This idempotency key was already used for another transaction.", status=409
                )
            if request.action_from_client and found.request_fingerprint != _fingerprint(email, metadata):
                raise PaymentRefused(
                    "This idempotency key was already used with a different customer_email or "
                    "metadata; send a new key for a new request.",
                    status=409,
                )
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
        # The same action raced us to the reservation; use theirs.
        session.rollback()
        found = session.scalar(
            select(CheckoutSession).where(
                CheckoutSession.organization_id == org_id, CheckoutSession.idempotency_key == key
            )
        )
        if found is None:
            raise
        return found
    return reservation


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
    commit_keeping_state(session)


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
    pages: PaymentPages,
    expires_in: timedelta,
) -> CheckoutSession:
    """Create (or return the already created) Checkout Session for the transaction.

    Safe to run twice: the same logical action gets the same reservation and
    idempotency key, hence the same Stripe session. Raises PaymentRefused or
    StripeFailure; the caller commits.
    """
    _check_collectable(transaction)
    _check_amount(transaction, request)
    metadata = {**(request.metadata or {}), **_our_metadata(transaction, request.attempt_id)}
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
    organization = session.get(Organization, transaction.organization_id)
    try:
        info = gateway.create_checkout_session(
            amount=reservation.amount,
            currency=reservation.currency,
            product_name=_product_name(organization, transaction),
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
        raise
    _record_session(session, transaction, reservation, info, customer_id)
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
    return reservation


def _product_name(organization: Organization | None, transaction: Transaction) -> str:
    merchant = organization.name if organization else "Payment"
    return f"{merchant} — payment {transaction.transaction_ref}"


def _record_session(
    session: DbSession,
    transaction: Transaction,
    reservation: CheckoutSession,
    info: CheckoutSessionInfo,
    customer_id: str | None,
) -> None:
    reservation.stripe_session_id = info.id
    reservation.url = info.url
    reservation.expires_at = info.expires_at
    reservation.payment_status = info.payment_status
    reservation.stripe_payment_intent_id = info.payment_intent_id
    _apply_status(reservation, info)
    transaction.stripe_checkout_session_id = info.id
    transaction.checkout_url = info.url
    transaction.checkout_expires_at = info.expires_at
    if customer_id:
        transaction.stripe_customer_id = customer_id
    if info.payment_intent_id and not transaction.stripe_payment_intent_id:
        transaction.stripe_payment_intent_id = info.payment_intent_id


def _apply_status(record: CheckoutSession, info: CheckoutSessionInfo) -> None:
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
    _apply_status(record, info)
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


# --- payment links ----------------------------------------------------------


def create_payment_link(
    session: DbSession,
    gateway: StripeGateway,
    transaction: Transaction,
    actor: Actor,
    *,
    pages: PaymentPages,
    amount: int | None = None,
    currency: str | None = None,
) -> PaymentLinkResult:
    """Return the transaction's active Payment Link, creating Product, Price and link once.

    Safe to run twice: each Stripe object has a key fixed by the transaction
    (and, for the link, by the link it replaces), so repeats get the same objects.
    """
    _check_collectable(transaction)
    _check_amount(transaction, CheckoutRequest(amount=amount, currency=currency))
    org_id = transaction.organization_id
    previous = transaction.stripe_payment_link_id
    if previous and transaction.stripe_product_id and transaction.stripe_price_id:
        try:
            current = gateway.retrieve_payment_link(previous)
        except StripeFailure as failure:
            if failure.code != "resource_missing":
                raise
            # Made under another Stripe account or mode (a test key before going
            # live): its Product and Price are not there either, so start afresh.
            log.warning(
                "stripe_payment_link_missing", payment_link_id=previous, transaction_id=transaction.id
            )
            transaction.stripe_product_id = transaction.stripe_price_id = None
        else:
            if current.active:
                return PaymentLinkResult(
                    current.id, current.url, transaction.stripe_product_id, transaction.stripe_price_id, False
                )
    subject = f"txn{transaction.id}"
    metadata = _our_metadata(transaction, None)
    if not transaction.stripe_product_id:
        organization = session.get(Organization, org_id)
        transaction.stripe_product_id = gateway.create_product(
            name=_product_name(organization, transaction),
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
    link = gateway.create_payment_link(
        price_id=transaction.stripe_price_id,
        metadata=metadata,
        success_url=pages.success_url,
        key=idempotency_key(org_id, f"{subject}-payment-link", previous or "first"),
    )
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
        organization_id=org_id,
    )
    return PaymentLinkResult(
        link.id, link.url, transaction.stripe_product_id, transaction.stripe_price_id, True
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
