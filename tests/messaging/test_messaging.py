"""Message content, and the providers over real sockets: aiosmtpd on loopback and a fake Twilio API."""

from __future__ import annotations

import re
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

import pytest

from recovery.demo import CUSTOMERS as DEMO_CUSTOMERS
from recovery.extensions import mail
from recovery.messaging.content import (
    MessageFacts,
    is_gsm7,
    render_email,
    render_sms,
    sms_length,
    to_gsm7,
)
from recovery.messaging.providers import (
    MessagingSettings,
    Outcome,
    OutgoingEmail,
    OutgoingSms,
    Postman,
)
from recovery.models import Provider
from stripe_sandbox.harness import free_port
from tests.fixtures.fakes import TWILIO_FROM, _twilio_server, fake_twilio, providers_config, smtp_server

__all__ = ["_twilio_server", "fake_twilio", "smtp_server"]

LINK = "https://recovery.example.com/pay/" + "T" * 43
EXPIRES = datetime(2025, 1, 26, 10, tzinfo=UTC)


def facts(**overrides: Any) -> MessageFacts:
    values: dict[str, Any] = {
        "merchant": "Acme Shop",
        "brand_color": "#aa3300",
        "customer_name": "Ann Lee",
        "amount": 5000,
        "currency": "usd",
        "transaction_ref": "TXN-001",
        "failure_code": "card_declined",
        "link": LINK,
        "unsubscribe_url": LINK + "/unsubscribe",
        "expires_at": EXPIRES,
        "timezone": "UTC",
        "locale": "en-US",
        "step": 0,
        "contact_email": "billing@acme.example",
        **overrides,
    }
    return MessageFacts(**values)


# --- content ----------------------------------------------------------------------


def test_email_names_merchant_amount_ref_expiry_and_links_our_page() -> None:
    email = render_email(facts())

    assert email.subject == "Acme Shop: your payment of $50.00 did not go through"
    for part in (email.text, email.html):
        assert "TXN-001" in part
        assert "January 26, 2025" in part
        assert LINK in part
        assert "stripe.com" not in part
    assert re.search(r'<a href="' + re.escape(LINK) + r'"[^>]*>Pay \$50\.00</a>', email.html)
    assert "#aa3300" in email.html
    assert "Hello Ann Lee," in email.text
    assert "different card" not in email.text


def test_reminders_and_hard_declines_say_so() -> None:
    email = render_email(facts(step=2, failure_code="expired_card"))

    assert email.subject == "Reminder: your $50.00 payment to Acme Shop is still open"
    assert "please pay with a different card" in email.text
    assert "please pay with a different card" in email.html


def test_customer_text_is_escaped_in_html_only() -> None:
    email = render_email(facts(customer_name="<b>Eve</b>", merchant="A & B"))

    assert "Hello <bdi>&lt;b&gt;Eve&lt;/b&gt;</bdi>," in email.html
    assert "A &amp; B" in email.html
    assert "Hello <b>Eve</b>," in email.text


@pytest.mark.parametrize(
    ("locale", "currency", "amount", "expected_amount", "expected_date"),
    [
        ("en-US", "usd", 5000, "$50.00", "January 26, 2025"),
        ("en-GB", "gbp", 5000, "£50.00", "26 January 2025"),
        # No French, German or Japanese copy yet: English copy, English formats (test_one_language.py).
        ("fr-FR", "eur", 5000, "€50.00", "26 January 2025"),
        ("de-DE", "eur", 123456, "€1,234.56", "26 January 2025"),
        ("ja-JP", "jpy", 5000, "JP¥5,000", "26 January 2025"),
        (None, "gbp", 999, "£9.99", "January 26, 2025"),
        ("xx-nonsense", "usd", 5000, "$50.00", "January 26, 2025"),
    ],
)
def test_amounts_and_dates_follow_the_language_of_the_copy(
    locale: str | None, currency: str, amount: int, expected_amount: str, expected_date: str
) -> None:
    email = render_email(facts(locale=locale, currency=currency, amount=amount))

    assert expected_amount in email.subject
    assert expected_date in email.text


# The link dies at 20:00 UTC on 15 January: 15:00 in New York, 12:00 in San Francisco,
# but already 05:00 on the 16th in Tokyo, where the organization is.
DIES = datetime(2026, 1, 15, 20, tzinfo=UTC)


@pytest.mark.parametrize(
    ("customer", "email_says", "sms_says"),
    [
        ({"country": "US"}, "January 15, 2026, 3:00 PM (UTC-5)", "Jan 15"),
        ({"country": "US", "phone": "+14155550123"}, "January 15, 2026, 12:00 PM (UTC-8)", "Jan 15"),
        ({"phone": "+12125550123"}, "January 15, 2026, 3:00 PM (UTC-5)", "Jan 15"),
    ],
)
def test_the_expiry_is_told_in_the_customers_zone_not_the_organizations(
    customer: dict[str, str], email_says: str, sms_says: str
) -> None:
    details = facts(expires_at=DIES, timezone="Asia/Tokyo", **customer)

    email = render_email(details)
    sms = render_sms(details)

    for part in (email.text, email.html):
        assert f"This link works until {email_says}." in part
        assert "16" not in part.split("works until", 1)[1].split(".", 1)[0]
    assert f"Pay securely by {sms_says}: {LINK}" in sms


def test_a_customer_of_unknown_zone_reads_the_organizations_zone_with_its_offset() -> None:
    email = render_email(facts(expires_at=DIES, timezone="Asia/Tokyo"))

    # The date is Tokyo's, and says so: true wherever the customer reads it.
    assert "This link works until January 16, 2026, 5:00 AM (UTC+9)." in email.text


@pytest.mark.parametrize(
    ("expires_at", "customer", "locale", "says"),
    [
        # The hour is rounded down: a promise the link keeps.
        (
            datetime(2026, 1, 15, 20, 37, tzinfo=UTC),
            {"country": "US"},
            "en-US",
            "January 15, 2026, 3:00 PM (UTC-5)",
        ),
        # India is UTC+5:30: 02:07 there, rounded down to 02:00, not to the UTC hour.
        (
            datetime(2026, 1, 15, 20, 37, tzinfo=UTC),
            {"country": "IN"},
            "en-IN",
            "16 January 2026, 2:00 AM (UTC+5:30)",
        ),
        # Alaska's area code spans two zones: the earliest date, then the eastern clock.
        (DIES, {"phone": "+19075550123"}, "en-US", "January 15, 2026, 11:00 AM (UTC-9)"),
        (DIES, {}, "en-US", "January 15, 2026, 8:00 PM (UTC)"),
        # In July New York keeps daylight time.
        (datetime(2026, 7, 15, 20, tzinfo=UTC), {"country": "US"}, "en-US", "July 15, 2026, 4:00 PM (UTC-4)"),
        # Moscow keeps no summer time, whatever CLDR's Russian zone names say; 24-hour clock.
        (DIES, {"country": "RU", "phone": "+74951234567"}, "ru-RU", "(UTC+3)"),
        (DIES, {"country": "GB"}, "en-GB", "15 January 2026, 20:00 (UTC)"),
    ],
)
def test_the_expiry_time_is_rounded_down_and_carries_its_offset(
    expires_at: datetime, customer: dict[str, str], locale: str, says: str
) -> None:
    email = render_email(
        facts(expires_at=expires_at, timezone="Asia/Tokyo" if customer else "UTC", locale=locale, **customer)
    )

    assert f"{says}." in email.text


@pytest.mark.parametrize("zone", ["Etc/GMT+5", "Etc/GMT-14", "GMT", "Zulu", "Etc/UCT"])
def test_a_fixed_offset_organization_zone_is_written_as_its_offset(zone: str) -> None:
    # Etc/GMT+5 is five hours *behind* UTC; Babel would call it "Unknown Region (GMT+5)".
    email = render_email(facts(expires_at=DIES, timezone=zone))

    expected = {"Etc/GMT+5": "(UTC-5)", "Etc/GMT-14": "(UTC+14)"}.get(zone, "(UTC)")
    assert f"{expected}." in email.text and "Unknown" not in email.text


@pytest.mark.parametrize(("name", "country", "locale", "phone", "currency"), DEMO_CUSTOMERS)
def test_the_demo_customers_texts_keep_the_expiry_with_a_real_link(
    name: str, country: str, locale: str, phone: str, currency: str
) -> None:
    # The demo's customers and references, and a real pay link: BASE_URL, /pay/, a 43-character
    # token. (A merchant name much longer than this one leaves the expiry out: the short variant.)
    link = "http://127.0.0.1:5000/pay/" + "T" * 43
    details = facts(
        merchant="Acme Shop",
        customer_name=name,
        amount=12999,
        currency=currency,
        transaction_ref="DEMO-0123",
        link=link,
        locale=locale,
        country=country,
        phone=phone,
        expires_at=DIES,
        timezone="Europe/London",
    )

    sms = render_sms(details)

    assert "Pay securely by" in sms and sms.endswith(link)
    assert is_gsm7(sms) and sms_length(sms) <= 160


def test_an_email_offers_replies_only_where_someone_reads_them() -> None:
    # Without the organization's reply-to address, a reply goes to our no-reply sender.
    with_address = render_email(facts(contact_email="billing@acme.example"))
    without = render_email(facts(contact_email=None))

    assert "Reply to this email or write to billing@acme.example." in with_address.text
    for part in (without.text, without.html):
        assert "Reply to this email" not in part


def test_sms_is_one_gsm7_segment_with_merchant_amount_and_link() -> None:
    text = render_sms(facts(merchant="Café “Zoë” — Shop"))

    assert is_gsm7(text)
    assert sms_length(text) <= 160
    assert 'Cafe "Zoe" - Shop' in text or 'Café "Zoe" - Shop' in text
    assert "$50.00" in text and LINK in text


def test_long_sms_drops_detail_to_stay_in_one_segment() -> None:
    text = render_sms(
        facts(merchant="The Extremely Long Merchant Name Incorporated", transaction_ref="R" * 40)
    )

    assert sms_length(text) <= 160
    assert LINK in text and "$50.00" in text


def test_gsm7_helpers() -> None:
    assert to_gsm7("a\u2019b\u2014c\u00a0d…") == "a'b-c d..."
    assert sms_length("€") == 2
    assert sms_length("日本") == 5  # UCS-2: 70 a segment, scaled to 160


# --- email over SMTP ---------------------------------------------------------------------


@pytest.fixture
def app_config(request: pytest.FixtureRequest) -> dict[str, Any]:
    smtp = request.getfixturevalue("smtp_server") if "smtp_server" in request.fixturenames else None
    twilio = request.getfixturevalue("fake_twilio") if "fake_twilio" in request.fixturenames else None
    return providers_config(smtp, twilio)


def postman(app: Any) -> Postman:
    return Postman(MessagingSettings.from_config(app.config), mail)


def outgoing_email(to: str = "customer@example.com", message_id: int = 7) -> OutgoingEmail:
    email = render_email(facts())
    return OutgoingEmail(
        message_id=message_id,
        to=to,
        subject=email.subject,
        text=email.text,
        html=email.html,
        from_name="Acme Shop",
        reply_to="billing@acme.example",
        unsubscribe_url="https://recovery.example.com/pay/TOKEN/unsubscribe",
    )


def test_headers_survive_the_wire_with_a_real_token_and_a_non_ascii_merchant(app, smtp_server) -> None:
    token = "x" * 43  # what secrets.token_urlsafe(32) gives: the header is longer than a line
    unsubscribe = f"https://pay.merchant-recovery.example.com/pay/{token}/unsubscribe"
    email = replace(outgoing_email(), from_name="Café Zürich", unsubscribe_url=unsubscribe)

    assert postman(app).send_email(email).outcome == Outcome.SENT

    [raw] = smtp_server.raw
    headers = raw.split(b"\r\n\r\n", 1)[0].decode("ascii")
    unfolded = re.sub(r"\r\n(?=[ \t])", "", headers)  # RFC 5322 unfolding
    # RFC 2369: the URL in angle brackets, never RFC 2047 encoded-words.
    assert re.search(rf"^List-Unsubscribe:\s+<{re.escape(unsubscribe)}>\r?$", unfolded, re.MULTILINE)
    [received] = smtp_server.received
    # The name is encoded once: a mail client shows it as written.
    assert received["From"].addresses[0].display_name == "Café Zürich"
    assert received["From"].addresses[0].addr_spec == "payments@recovery.example"


def test_email_arrives_with_both_parts_headers_and_link(app, smtp_server) -> None:
    delivery = postman(app).send_email(outgoing_email())

    assert delivery.outcome == Outcome.SENT and delivery.provider == Provider.SMTP
    [received] = smtp_server.received
    assert received["To"] == "customer@example.com"
    assert received["From"] == "Acme Shop <payments@recovery.example>"
    assert received["Reply-To"] == "billing@acme.example"
    assert received["Subject"] == "Acme Shop: your payment of $50.00 did not go through"
    assert received["List-Unsubscribe"] == "<https://recovery.example.com/pay/TOKEN/unsubscribe>"
    assert received["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    assert received["Message-ID"] == delivery.provider_id == "<recovery-message-7@recovery.example>"
    text = received.get_body(preferencelist=("plain",)).get_content()
    html = received.get_body(preferencelist=("html",)).get_content()
    assert LINK in text
    assert f'href="{LINK}"' in html and "Pay $50.00" in html


def test_one_connection_serves_a_batch(app, smtp_server) -> None:
    carrier = postman(app)
    with carrier.session():
        for n in range(3):
            assert carrier.send_email(outgoing_email(f"c{n}@example.com", n)).outcome == Outcome.SENT
        connection = carrier._connection
        assert connection is not None
    assert len(smtp_server.received) == 3


@pytest.mark.parametrize(
    ("reply", "outcome"),
    [
        ("550 5.1.1 No such user here", Outcome.UNDELIVERABLE),
        ("451 4.3.0 Mailbox temporarily unavailable", Outcome.RETRY),
    ],
)
def test_smtp_refusals_are_classified(app, smtp_server, reply: str, outcome: str) -> None:
    smtp_server.refuse("gone@example.com", reply)

    delivery = postman(app).send_email(outgoing_email("gone@example.com"))

    assert delivery.outcome == outcome
    assert delivery.error is not None and reply[:3] in delivery.error
    assert smtp_server.received == []


@pytest.mark.parametrize("app_config", [{"MAIL_SERVER": "127.0.0.1", "MAIL_PORT": free_port()}])
def test_no_smtp_server_listening_is_retried(app) -> None:
    delivery = postman(app).send_email(outgoing_email())

    assert delivery.outcome == Outcome.RETRY
    assert delivery.error and delivery.error.startswith("SMTP connection")


def test_without_smtp_settings_email_goes_to_the_outbox(app) -> None:
    assert not app.config["MAIL_SERVER"]

    delivery = postman(app).send_email(outgoing_email())

    assert (delivery.outcome, delivery.provider, delivery.provider_id) == (
        Outcome.SENT,
        Provider.OUTBOX,
        "outbox-7",
    )


# --- SMS over the twilio SDK ---------------------------------------------------------------


def test_sms_reaches_twilio_with_validity_period(app, fake_twilio) -> None:
    delivery = postman(app).send_sms(OutgoingSms(1, "+14155550123", "Acme: pay $50.00 " + LINK))

    assert delivery.outcome == Outcome.SENT and delivery.provider == Provider.TWILIO
    assert delivery.provider_id and delivery.provider_id.startswith("SM")
    [sent] = fake_twilio.messages()
    assert sent["To"] == "+14155550123"
    assert sent["From"] == TWILIO_FROM
    assert sent["Body"] == "Acme: pay $50.00 " + LINK
    assert sent["ValidityPeriod"] == str(4 * 3600)
    assert fake_twilio.requests[0]["auth"] == app.config["TWILIO_ACCOUNT_SID"]


@pytest.mark.parametrize(
    ("status", "code", "outcome"),
    [
        (400, 21211, Outcome.UNDELIVERABLE),
        (400, 21614, Outcome.UNDELIVERABLE),
        (400, 21610, Outcome.OPTED_OUT),
        (429, 20429, Outcome.RETRY),
        (500, 20500, Outcome.RETRY),
        (503, 20503, Outcome.RETRY),
        (400, 21408, Outcome.FAILED),
    ],
)
def test_twilio_errors_are_classified(app, fake_twilio, status: int, code: int, outcome: str) -> None:
    fake_twilio.fail_next(status, code, f"error {code}")

    delivery = postman(app).send_sms(OutgoingSms(1, "+14155550123", "hello"))

    assert delivery.outcome == outcome
    assert delivery.error is not None
    assert delivery.error.startswith(f"Twilio {code}:") and delivery.error.endswith(f"error {code}")


def test_without_twilio_settings_sms_goes_to_the_outbox(app) -> None:
    delivery = postman(app).send_sms(OutgoingSms(3, "+14155550123", "hello"))

    assert (delivery.outcome, delivery.provider) == (Outcome.SENT, Provider.OUTBOX)


def test_another_language_is_a_catalogue_away(tmp_path, monkeypatch) -> None:
    """A German .po compiled next to the extracted template changes the copy, and only for German."""
    from babel.messages.catalog import Catalog
    from babel.messages.mofile import write_mo
    from babel.messages.pofile import read_po

    from recovery.messaging import content

    template = content.TRANSLATIONS / "messages.pot"
    with template.open("rb") as source:
        catalog: Catalog = read_po(source, locale="de")
    catalog[
        "%(merchant)s: your payment of %(amount)s did not go through"
    ].string = "%(merchant)s: Ihre Zahlung über %(amount)s ist nicht durchgegangen"
    catalog["Hello,"].string = "Hallo,"
    target = tmp_path / "de" / "LC_MESSAGES"
    target.mkdir(parents=True)
    with (target / "messages.mo").open("wb") as out:
        write_mo(out, catalog)
    monkeypatch.setattr(content, "TRANSLATIONS", tmp_path)
    content._environment.cache_clear()
    try:
        german = render_email(facts(locale="de-DE", customer_name=None))
        english = render_email(facts(customer_name=None))
    finally:
        content._environment.cache_clear()
    assert german.subject == "Acme Shop: Ihre Zahlung über 50,00\xa0$ ist nicht durchgegangen"
    assert german.text.startswith("Hallo,")
    assert english.subject == "Acme Shop: your payment of $50.00 did not go through"


def test_the_extracted_template_is_current() -> None:
    """recovery/translations/messages.pot holds every message of templates/messages (`make translations`)."""
    from babel.messages.extract import extract_from_dir
    from babel.messages.pofile import read_po

    from recovery.messaging import content

    found = {
        message[2] if isinstance(message[2], str) else message[2][0]
        for message in extract_from_dir(
            str(content.TEMPLATES),
            method_map=[("**", "jinja2")],
            options_map={"**": {"extensions": "jinja2.ext.i18n"}},
        )
    }
    with (content.TRANSLATIONS / "messages.pot").open("rb") as source:
        extracted = {
            message.id if isinstance(message.id, str) else message.id[0] for message in read_po(source)
        }
    assert found and found == extracted - {""}
