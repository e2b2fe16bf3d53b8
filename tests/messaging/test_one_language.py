"""One language per message: amounts and dates follow the language the copy is in.

No language is translated yet, so a French, German, Japanese or Brazilian
customer reads English copy, and must read English numbers and dates in it
(never "50,00 €" or "15 janvier" inside an English sentence). A compiled
catalogue for their language switches copy and formats together. Checked on
what is really sent (email and SMS through a real RQ worker into the outbox)
and on the customer's pay page.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from babel.dates import get_month_names
from babel.messages.catalog import Catalog
from babel.messages.mofile import write_mo
from babel.messages.pofile import read_po
from flask import Flask
from sqlalchemy import select

from recovery.audit import Actor
from recovery.messaging import content
from recovery.messaging.content import writing_locale
from recovery.models import Message, Organization, RecoveryAttempt, Transaction, utcnow
from recovery.recoveries import lifecycle

# Every message of a customer whose language has no copy is written in this English.
WORLD = "en_001"
ENGLISH_MONTHS = {name.lower() for name in get_month_names("wide", locale="en").values()} | {
    name.lower() for name in get_month_names("abbreviated", locale="en").values()
}
# A decimal comma: "1.234,56" or "50,00" (a comma with exactly two digits and no third after it).
DECIMAL_COMMA = re.compile(r"\d,\d{2}(?!\d)")

CUSTOMERS = [
    # locale, country, phone, currency, amount, the amount as the English message writes it
    ("fr-FR", "FR", "+33612345678", "eur", 123456, "€1,234.56"),
    ("de-DE", "DE", "+4915112345678", "eur", 123456, "€1,234.56"),
    ("ja-JP", "JP", "+819012345678", "jpy", 123456, "JP¥123,456"),
    ("pt-BR", "BR", "+5511912345678", "brl", 123456, "R$1,234.56"),
    ("en-GB", "GB", "+447700900123", "gbp", 123456, "£1,234.56"),
]


@pytest.fixture
def app_config() -> dict[str, Any]:
    return {}  # no SMTP server, no Twilio: both channels go to the outbox


def foreign_months(locale: str) -> set[str]:
    """The locale's month names that are not also English words (German "April" is both)."""
    names = set(get_month_names("wide", locale=locale).values()) | set(
        get_month_names("abbreviated", locale=locale).values()
    )
    return {name for name in names if name.lower().rstrip(".") not in ENGLISH_MONTHS}


def send_first_messages(
    db: Any, rq_worker: Callable[[], None], transaction: Transaction
) -> tuple[RecoveryAttempt, Message, Message]:
    """Start a recovery as the dashboard does and let the worker send its first email and SMS."""
    started = lifecycle.start_recovery(
        db.session, transaction, Actor.system(transaction.organization_id, "test"), now=utcnow()
    )
    db.session.commit()  # which places the first send
    rq_worker()
    db.session.expire_all()
    email, sms = db.session.scalars(
        select(Message).where(Message.attempt_id == started.attempt.id).order_by(Message.channel)
    ).all()
    assert (email.channel, sms.channel) == ("email", "sms")
    return started.attempt, email, sms


@pytest.fixture
def org(make_org: Callable[..., Organization]) -> Organization:
    return make_org(name="Acme Shop", timezone="Europe/Paris")


@pytest.mark.parametrize(("locale", "country", "phone", "currency", "amount", "written"), CUSTOMERS)
def test_an_english_message_has_english_numbers_and_dates(
    db: Any,
    client: Any,
    org: Organization,
    make_transaction: Callable[..., Transaction],
    rq_worker: Callable[[], None],
    locale: str,
    country: str,
    phone: str,
    currency: str,
    amount: int,
    written: str,
) -> None:
    transaction = make_transaction(
        org,
        amount=amount,
        currency=currency,
        customer_locale=locale,
        customer_country=country,
        customer_phone=phone,
    )
    attempt, email, sms = send_first_messages(db, rq_worker, transaction)
    page = client.get(f"/pay/{attempt.token}")
    assert page.status_code == 200
    texts = {
        "subject": email.subject or "",
        "text": email.body_text,
        "html": email.body_html or "",
        "sms": sms.body_text,
        "page": page.get_data(as_text=True),
    }
    months = foreign_months(locale.replace("-", "_"))
    for where, text in texts.items():
        assert "payment" in text.lower(), (where, text)  # English copy
        found = [
            name for name in months if re.search(rf"(?<!\w){re.escape(name)}(?!\w)", text, re.IGNORECASE)
        ]
        assert found == [], (where, found, text)
        assert DECIMAL_COMMA.search(text) is None, (where, text)
    # The amount as English writes it, in each part that states it.
    for where in ("subject", "text", "page"):
        assert written in texts[where].replace("\xa0", " "), (where, texts[where])


@pytest.mark.parametrize(
    ("locale", "expected"),
    [
        ("fr-FR", WORLD),
        ("de-DE", WORLD),
        ("ja-JP", WORLD),
        ("pt-BR", WORLD),
        ("en-GB", "en_GB"),
        ("en-US", "en_US"),
        ("en-IN", "en_IN"),
        (None, "en_US"),
        ("xx-not-a-locale", "en_US"),
    ],
)
def test_without_a_catalogue_the_locale_is_english(locale: str | None, expected: str) -> None:
    assert writing_locale(locale, content.TRANSLATIONS) == expected


def build_french(directory: Path) -> Path:
    """A tiny French catalogue compiled from the real template (.pot), as `pybabel compile` would."""
    with (content.TRANSLATIONS / "messages.pot").open("rb") as source:
        catalog: Catalog = read_po(source, locale="fr")
    catalog[
        "%(merchant)s: your payment of %(amount)s did not go through"
    ].string = "%(merchant)s : votre paiement de %(amount)s n'a pas abouti"
    catalog["Hello,"].string = "Bonjour,"
    target = directory / "fr" / "LC_MESSAGES"
    target.mkdir(parents=True)
    with (target / "messages.mo").open("wb") as out:
        write_mo(out, catalog)
    return directory


def test_a_translated_language_gets_its_own_formats(
    app: Flask,
    db: Any,
    org: Organization,
    make_transaction: Callable[..., Transaction],
    rq_worker: Callable[[], None],
    tmp_path: Path,
) -> None:
    """With a French catalogue (TRANSLATIONS_DIR), a French customer reads French copy with French formats."""
    app.config["TRANSLATIONS_DIR"] = str(build_french(tmp_path))
    assert writing_locale("fr-CA", tmp_path) == "fr_CA"  # the language's catalogue serves its regions
    assert writing_locale("de-DE", tmp_path) == WORLD  # still no German
    french = make_transaction(
        org,
        amount=123456,
        currency="eur",
        customer_locale="fr-FR",
        customer_country="FR",
        customer_phone=None,
    )
    german = make_transaction(
        org,
        amount=123456,
        currency="eur",
        customer_locale="de-DE",
        customer_country="DE",
        customer_phone=None,
    )
    for transaction in (french, german):
        lifecycle.start_recovery(
            db.session, transaction, Actor.system(org.id, "test"), now=utcnow(), channels=["email"]
        )
        db.session.commit()  # which places the first send
    rq_worker()
    db.session.expire_all()
    subjects = {m.transaction_id: (m.subject, m.body_text) for m in db.session.scalars(select(Message)).all()}
    subject, text = subjects[french.id]
    assert subject == "Acme Shop : votre paiement de 1\u202f234,56\xa0€ n'a pas abouti"
    assert text.startswith("Bonjour,")
    months = set(get_month_names("wide", locale="fr").values())
    assert any(name in text for name in months), text  # the expiry's date, in French
    subject, text = subjects[german.id]
    assert subject == "Acme Shop: your payment of €1,234.56 did not go through"


def test_the_expiry_is_written_in_english_for_a_french_customer() -> None:
    """The expiry line of an English message: day, English month, 24 h or 12 h as English writes it."""
    when = content.format_expiry(
        datetime(2026, 1, 15, 20, 0, tzinfo=UTC),
        writing_locale("fr-FR", None),
        country="FR",
        phone=None,
        organization_zone="UTC",
    )
    assert when == "15 January 2026, 9:00 pm (UTC+1)"
