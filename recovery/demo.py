"""Idempotent demo data: one merchant, a user per role, ~200 failed transactions."""

from __future__ import annotations

import random
from dataclasses import dataclass
from datetime import timedelta

from sqlalchemy import select

from recovery.models import Organization, Role, Transaction, TransactionSource, User, utcnow
from recovery.models.base import DbSession
from recovery.models.transaction import TransactionStatus
from recovery.organizations.services import create_organization, get_by_slug
from recovery.users.services import create_user

DEMO_SLUG = "demo"
DEMO_PASSWORD = "demo-password-1"  # printed by seed-demo; demo only
TRANSACTIONS = 200

CUSTOMERS = [
    ("Ada Lovelace", "GB", "en-GB", "+447700900123", "gbp"),
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


@dataclass
class SeedResult:
    organization: Organization
    logins: list[tuple[str, str]]
    password: str
    created: int
    existing: int


def seed(session: DbSession) -> SeedResult:
    """Create what is missing; running it again changes nothing."""
    organization = get_by_slug(session, DEMO_SLUG) or create_organization(
        session, DEMO_SLUG, "Demo Coffee Roasters", "Europe/London"
    )
    logins = []
    for role in reversed(Role):
        email = f"{role.value}@demo.example"
        if session.scalar(select(User).where(User.email == email)) is None:
            create_user(
                session, organization.id, email, DEMO_PASSWORD, role, f"Demo {role.value.capitalize()}"
            )
        logins.append((role.value, email))
    existing_refs = set(
        session.scalars(
            select(Transaction.transaction_ref).where(Transaction.organization_id == organization.id)
        )
    )
    rng = random.Random(2025)  # the same demo every time
    now = utcnow()
    created = 0
    for number in range(1, TRANSACTIONS + 1):
        ref = f"DEMO-{number:04d}"
        name, country, locale, phone, currency = rng.choice(CUSTOMERS)
        code, message = rng.choice(FAILURES)
        low, high = AMOUNTS[currency]
        amount = rng.randrange(low, high) if currency == "jpy" else rng.randrange(low, high) // 100 * 100 + 99
        failed_at = now - timedelta(days=rng.uniform(0, 60))
        # No "recovering" here: that status means a recovery attempt is running, and the
        # demo starts none (a transaction said to be recovering, with no recovery on its
        # page, contradicts itself). The same draw as before, so each ref keeps its data.
        status = rng.choices(
            [TransactionStatus.FAILED, TransactionStatus.RECOVERED, TransactionStatus.UNRECOVERED],
            weights=[82, 12, 6],
        )[0]
        if ref in existing_refs:
            continue
        first = name.split()[0].lower().replace("é", "e").replace("ü", "u").replace("'", "")
        session.add(
            Transaction(
                organization_id=organization.id,
                transaction_ref=ref,
                amount=amount,
                currency=currency,
                status=status,
                failure_code=code,
                failure_message=message,
                customer_name=name,
                customer_email=f"{first}.{number}@example.com",
                customer_phone=phone,
                customer_country=country,
                customer_locale=locale,
                meta={"order_id": f"ORD-{number:05d}"},
                source=TransactionSource.DEMO,
                failed_at=failed_at,
                created_at=failed_at,
                recovered_at=failed_at + timedelta(days=2) if status == TransactionStatus.RECOVERED else None,
            )
        )
        created += 1
    session.flush()
    return SeedResult(organization, logins, DEMO_PASSWORD, created, TRANSACTIONS - created)
