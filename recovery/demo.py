"""Idempotent demo data: one merchant, a user per role, ~200 failed transactions, told through the product.

Every row comes from the code a real account runs: transactions from the
transaction service, recoveries from the recovery service, messages from the
send path into the development outbox, payments from a `checkout.session.completed`
event applied by the webhook services, and closes from the closing service. The
story is set in the past by handing each service its `now`; nothing writes a
status column. So a recovered row has its attempt, messages, fulfilment and
timeline, and every state on the demo is one the transition tables reach.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import select

from recovery.audit import Actor
from recovery.campaigns import builtin
from recovery.campaigns import services as campaign_services
from recovery.messaging.providers import MessagingSettings, Postman
from recovery.models import (
    Campaign,
    Organization,
    RecoveryAttempt,
    Role,
    Transaction,
    TransactionSource,
    User,
    utcnow,
)
from recovery.models.base import DbSession
from recovery.models.transaction import TransactionStatus
from recovery.organizations.services import create_organization, get_by_slug
from recovery.recoveries import lifecycle, sending
from recovery.transactions import closing
from recovery.transactions.services import create_transaction
from recovery.users.services import create_user
from recovery.webhooks.processing import process_event
from recovery.webhooks.receiving import store_event

DEMO_SLUG = "demo"
DEMO_PASSWORD = "demo-password-1"  # printed by seed-demo; demo only
TRANSACTIONS = 200
# Among the failed ones, by number: a recovery running now, one staff cancelled, one closed.
RUNNING, CANCELLED, CLOSED = 3, 7, 11
EVERY = 25

CUSTOMERS = [
    ("Ada Lovelace", "GB", "en-GB", "+447911123456", "gbp"),
    ("Hans Müller", "DE", "de-DE", "+4915112345678", "eur"),
    ("Yuki Tanaka", "JP", "ja-JP", "+819012345678", "jpy"),
    ("Maria Garcia", "ES", "es-ES", "+34612345678", "eur"),
    ("John Smith", "US", "en-US", "+12025550143", "usd"),
    ("Chloé Martin", "FR", "fr-FR", "+33612345678", "eur"),
    ("Liam O'Brien", "IE", "en-IE", "+353851234567", "eur"),
    ("Emma Johnson", "US", "en-US", "+14155550199", "usd"),
]
FAILURES = [
    ("card_declined", "Your card was declined."),
    ("insufficient_funds", "Your card has insufficient funds."),
    ("expired_card", "Your card has expired."),
    ("authentication_required", "Your card requires authentication."),
    ("incorrect_cvc", "Your card's security code is incorrect."),
    ("processing_error", "An error occurred while processing your card."),
]
AMOUNTS = {"usd": (999, 25000), "eur": (999, 20000), "gbp": (799, 18000), "jpy": (1000, 30000)}


@dataclass(frozen=True)
class SavedCardFailure:
    """A failure Stripe reported with the customer's card saved: the sandbox holds these very objects.

    stripe_sandbox/demo_cards.py creates them when the sandbox starts (the two
    share these ids, not code), so the soft-decline campaign's card retry runs
    for real under `make run`: declined again, paid (the webhook recovers it), or
    needing the customer (the campaign skips to its message).
    """

    payment_intent_id: str
    customer_id: str
    payment_method_id: str
    failure_code: str
    amount: int
    currency: str


# The last three demo numbers: failed yesterday, their first retry due when the demo starts.
SAVED_CARD_FAILURES = {
    198: SavedCardFailure(
        "pi_demo_retry_short",
        "cus_demo_retry_short",
        "pm_demo_retry_short",
        "insufficient_funds",
        4200,
        "usd",
    ),
    199: SavedCardFailure(
        "pi_demo_retry_paid", "cus_demo_retry_paid", "pm_demo_retry_paid", "insufficient_funds", 2599, "eur"
    ),
    200: SavedCardFailure(
        "pi_demo_retry_auth",
        "cus_demo_retry_auth",
        "pm_demo_retry_auth",
        "authentication_required",
        1850,
        "gbp",
    ),
}


@dataclass
class SeedResult:
    organization: Organization
    logins: list[tuple[str, str]]
    password: str
    created: int
    existing: int


def seed(
    session: DbSession, *, base_url: str = "http://127.0.0.1:5000", now: datetime | None = None
) -> SeedResult:
    """Create what is missing; running it again changes nothing.

    Commits as it goes: the send path commits each message's claim before
    "sending" it (to the development outbox, whatever the mail settings say).
    """
    organization = get_by_slug(session, DEMO_SLUG) or create_organization(
        session, DEMO_SLUG, "Demo Coffee Roasters", "Europe/London"
    )
    logins = _demo_logins(session, organization)
    existing_refs = set(
        session.scalars(
            select(Transaction.transaction_ref).where(Transaction.organization_id == organization.id)
        )
    )
    owner = session.scalar(select(User).where(User.email == f"{Role.OWNER.value}@demo.example"))
    assert owner is not None
    story = _Story(session, organization, Actor.for_user(owner), base_url, now or utcnow())
    rng = random.Random(2025)  # the same demo every time
    created = 0
    for number in range(1, TRANSACTIONS + 1):
        raw, outcome, payday = _draw(rng, number, story.now)  # drawn for every ref: each keeps its data
        if raw["transaction_ref"] in existing_refs:
            continue
        saved = SAVED_CARD_FAILURES.get(number)
        if saved is not None:
            raw = _with_saved_card(raw, saved, story.now)
        transaction = create_transaction(
            session,
            story.actor,
            raw,
            source=TransactionSource.DEMO,
            now=raw["failed_at"] + timedelta(minutes=2),
        )
        if saved is not None:
            story.retry(transaction, saved)
        else:
            story.tell(transaction, number, outcome, payday)
        created += 1
    session.flush()
    return SeedResult(organization, logins, DEMO_PASSWORD, created, TRANSACTIONS - created)


def _demo_logins(session: DbSession, organization: Organization) -> list[tuple[str, str]]:
    """One user per role, created if missing; (role, email) of each."""
    logins = []
    for role in reversed(Role):
        email = f"{role.value}@demo.example"
        if session.scalar(select(User).where(User.email == email)) is None:
            create_user(
                session, organization.id, email, DEMO_PASSWORD, role, f"Demo {role.value.capitalize()}"
            )
        logins.append((role.value, email))
    return logins


def _draw(rng: random.Random, number: int, now: datetime) -> tuple[dict[str, Any], str, float]:
    """The demo transaction `number` as the create service takes it, its outcome, and its payday."""
    name, country, locale, phone, currency = rng.choice(CUSTOMERS)
    code, message = rng.choice(FAILURES)
    low, high = AMOUNTS[currency]
    amount = rng.randrange(low, high) if currency == "jpy" else rng.randrange(low, high) // 100 * 100 + 99
    failed_at = now - timedelta(days=rng.uniform(0, 60))
    # The same draws as before, so each ref keeps its data; what the status draw
    # names is now the story's outcome, played through the services.
    outcome = rng.choices(
        [TransactionStatus.FAILED, TransactionStatus.RECOVERED, TransactionStatus.UNRECOVERED],
        weights=[82, 12, 6],
    )[0]
    payday = rng.uniform(0.2, 3)  # days from the first message to the payment
    first = name.split()[0].lower().replace("é", "e").replace("ü", "u").replace("'", "")
    raw = {
        "transaction_ref": f"DEMO-{number:04d}",
        "amount": amount,
        "currency": currency,
        "failure_code": code,
        "failure_message": message,
        "customer_name": name,
        "customer_email": f"{first}.{number}@example.com",
        "customer_phone": phone,
        "customer_country": country,
        "customer_locale": locale,
        "metadata": {"order_id": f"ORD-{number:05d}"},
        "failed_at": failed_at,
    }
    return raw, outcome, payday


def _with_saved_card(raw: dict[str, Any], saved: SavedCardFailure, now: datetime) -> dict[str, Any]:
    """The drawn customer, with the amount, reason and time of the sandbox's failed PaymentIntent."""
    return {
        **raw,
        "amount": saved.amount,
        "currency": saved.currency,
        "failure_code": saved.failure_code,
        "failure_message": "Your card was declined.",
        "failed_at": now - timedelta(hours=25),
    }


class _Story:
    """Plays one transaction's outcome through the services, at the times it happened."""

    def __init__(
        self, session: DbSession, organization: Organization, actor: Actor, base_url: str, now: datetime
    ) -> None:
        self.session = session
        self.organization = organization
        self.base_url = base_url
        self.now = now
        self.actor = actor
        # The development outbox, whatever the app's mail and SMS settings: the demo reaches nobody.
        self.postman = Postman(
            MessagingSettings.from_config(
                {"MAIL_DEFAULT_SENDER": "Demo Coffee Roasters <hello@demo.example>"}
            )
        )

    def tell(self, transaction: Transaction, number: int, outcome: str, payday: float) -> None:
        # An hour after the failure, or halfway to now for one that failed in the last two hours.
        started_at = transaction.failed_at + min(timedelta(hours=1), (self.now - transaction.failed_at) / 2)
        if outcome == TransactionStatus.RECOVERED:
            attempt = self.start(transaction, started_at)
            assert attempt.next_send_at is not None
            # Paid after the first message (quiet hours may hold that back), or still running.
            paid_at = max(started_at + timedelta(days=payday), attempt.next_send_at + timedelta(minutes=40))
            if paid_at > self.now:
                self.send_until(attempt, self.now)
                return
            self.send_until(attempt, paid_at)
            lifecycle.record_click(self.session, attempt, now=paid_at - timedelta(minutes=3))
            self.pay(transaction, attempt, paid_at)
        elif outcome == TransactionStatus.UNRECOVERED:
            # Every message sent and the link ran out unpaid; one that started less than its
            # lifetime ago is still running, as it would be.
            self.send_until(self.start(transaction, started_at), self.now)
        elif number % EVERY == RUNNING:
            self.send_until(self.start(transaction, max(started_at, self.now - timedelta(days=1))), self.now)
        elif number % EVERY == CANCELLED:
            attempt = self.start(transaction, started_at)
            cancelled_at = min(started_at + timedelta(days=1, hours=2), self.now)
            self.send_until(attempt, cancelled_at)
            lifecycle.cancel_recovery(self.session, attempt, self.actor, now=cancelled_at)
        elif number % EVERY == CLOSED:
            closing.close_transaction(
                self.session,
                transaction,
                self.actor,
                now=min(started_at + timedelta(hours=3), self.now),
                reason="Paid by bank transfer",
            )
        self.session.flush()

    def retry(self, transaction: Transaction, saved: SavedCardFailure) -> None:
        """Keep the saved card and start the soft-decline campaign: its first step retries the card now."""
        transaction.stripe_payment_intent_id = saved.payment_intent_id
        transaction.stripe_customer_id = saved.customer_id
        transaction.stripe_payment_method_id = saved.payment_method_id
        campaign = self.session.scalar(
            select(Campaign).where(
                Campaign.organization_id == transaction.organization_id,
                Campaign.builtin == builtin.SOFT_DECLINE,
            )
        )
        version = campaign_services.current_version(self.session, campaign) if campaign else None
        lifecycle.start_recovery(
            self.session, transaction, self.actor, now=self.now, campaign_version=version
        )

    def start(self, transaction: Transaction, at: datetime) -> RecoveryAttempt:
        return lifecycle.start_recovery(self.session, transaction, self.actor, now=at).attempt

    def send_until(self, attempt: RecoveryAttempt, until: datetime) -> None:
        """Run each send the attempt's schedule had due by `until`, as the worker would have then."""
        attempt_id = attempt.id
        while attempt.is_active and attempt.next_send_at is not None and attempt.next_send_at <= until:
            sending.send_batch(
                self.session,
                self.postman,
                [(attempt_id, attempt.step)],
                base_url=self.base_url,
                now=attempt.next_send_at,
            )

    def pay(self, transaction: Transaction, attempt: RecoveryAttempt, at: datetime) -> None:
        """The customer pays at Stripe: the checkout.session.completed event it would send, applied."""
        event_id = f"evt_demo_{transaction.organization_id}_{transaction.transaction_ref}"
        store_event(
            self.session.connection(),
            {
                "id": event_id,
                "object": "event",
                "type": "checkout.session.completed",
                "created": int(at.timestamp()),
                "livemode": False,
                "data": {
                    "object": {
                        "id": f"cs_test_demo{transaction.id}",
                        "object": "checkout.session",
                        "status": "complete",
                        "payment_status": "paid",
                        "amount_total": transaction.amount,
                        "currency": transaction.currency,
                        "payment_intent": f"pi_demo{transaction.id}",
                        "client_reference_id": None,
                        "metadata": {
                            "organization_id": str(transaction.organization_id),
                            "transaction_id": str(transaction.id),
                            "attempt_id": str(attempt.id),
                            "transaction_ref": transaction.transaction_ref,
                        },
                    }
                },
            },
        )
        process_event(self.session, event_id, lambda: None)
