"""The customer's pages: /pay/<token>, Pay now, success and cancel, against the Stripe sandbox over HTTP."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
import requests
import stripe
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import select

from recovery.audit import Actor
from recovery.messaging import contacts
from recovery.models import (
    AttemptStatus,
    AuditEvent,
    CheckoutSession,
    Organization,
    RecoveryAttempt,
    Transaction,
    TransactionStatus,
    utcnow,
)
from recovery.payments import links
from recovery.payments.gateway import StripeGateway, StripeSettings
from recovery.payments.pages import link_pages
from recovery.recoveries import lifecycle
from tests.conftest import csrf_token
from tests.fixtures.payments import reconfigure


@pytest.fixture
def app_config(stripe_sandbox: Any) -> dict[str, Any]:
    stripe_sandbox.reset()
    return {
        "STRIPE_SECRET_KEY": stripe_sandbox.api_key,
        "STRIPE_API_BASE": stripe_sandbox.base_url,
        "BASE_URL": "http://localhost",
    }


@pytest.fixture
def org(make_org: Callable[..., Organization]) -> Organization:
    return make_org(name="Acme Shop", brand_color="#aa3300", reply_to_email="billing@acme.example")


@pytest.fixture
def attempt_for(db: Any) -> Callable[..., RecoveryAttempt]:
    def make(transaction: Transaction, **options: Any) -> RecoveryAttempt:
        started = lifecycle.start_recovery(
            db.session, transaction, Actor.system(transaction.organization_id), now=utcnow(), **options
        )
        db.session.commit()
        return started.attempt

    return make


def stripe_creates(stripe_sandbox: Any) -> list[dict[str, Any]]:
    return [r for r in stripe_sandbox.requests() if r["method"] == "POST"]


def text(response: Any) -> str:
    return response.get_data(as_text=True)


# --- GET /pay/<token> ----------------------------------------------------------------------


def test_pay_page_shows_the_debt_records_a_click_and_creates_nothing_at_stripe(
    client: FlaskClient, db, org, make_transaction, attempt_for, stripe_sandbox
) -> None:
    transaction = make_transaction(org, transaction_ref="TXN-PAY-1", amount=5000, currency="usd")
    attempt = attempt_for(transaction)

    response = client.get(f"/pay/{attempt.token}")

    assert response.status_code == 200
    page = text(response)
    assert "Acme Shop" in page and "$50.00" in page and "TXN-PAY-1" in page
    assert ">Pay now</button>" in page
    csp = response.headers["Content-Security-Policy"]
    nonce = csp.split("'nonce-")[1].split("'")[0]
    assert f'<style nonce="{nonce}">:root {{ --brand: #aa3300;' in page
    assert "unsafe-inline" not in csp
    assert stripe_sandbox.requests() == []
    db.session.expire_all()
    attempt = db.session.get(RecoveryAttempt, attempt.id)
    assert attempt.status == AttemptStatus.CLICKED and attempt.clicked_at is not None

    client.get(f"/pay/{attempt.token}")  # a second look is not a second click
    opened = db.session.scalars(select(AuditEvent).where(AuditEvent.action == "recovery.link_opened")).all()
    assert len(opened) == 1 and opened[0].actor_label == "customer"
    assert stripe_sandbox.requests() == []


def test_unknown_token_is_404(client: FlaskClient, stripe_sandbox) -> None:
    assert client.get("/pay/no-such-token").status_code == 404
    assert client.post("/pay/no-such-token").status_code == 404
    assert client.get("/pay/" + "x" * 200).status_code == 404
    assert stripe_sandbox.requests() == []


@pytest.mark.parametrize("path", ["/pay/no-such-token", "/pay/cut-off/in/the/middle", "/pay"])
def test_a_mistyped_pay_link_tells_the_customer_what_to_do(client: FlaskClient, path: str) -> None:
    response = client.get(path)

    assert response.status_code == 404
    page = text(response)
    assert "We could not find this payment link" in page and "Nothing has been charged" in page
    assert "sign in" not in page.lower() and "organization" not in page.lower()


# --- POST /pay/<token> ------------------------------------------------------------------------


def test_pay_now_creates_a_checkout_session_then_reuses_it(
    client: FlaskClient, db, org, make_transaction, attempt_for, stripe_sandbox
) -> None:
    attempt = attempt_for(make_transaction(org))

    first = client.post(f"/pay/{attempt.token}")
    second = client.post(f"/pay/{attempt.token}")

    assert first.status_code == second.status_code == 303
    assert first.headers["Location"] == second.headers["Location"]
    assert first.headers["Location"].startswith(stripe_sandbox.base_url)
    [_created] = [r for r in stripe_creates(stripe_sandbox) if r["path"] == "/v1/checkout/sessions"]
    record = db.session.scalar(select(CheckoutSession))
    assert record.attempt_id == attempt.id and record.url == first.headers["Location"]
    session = stripe_sandbox_session(stripe_sandbox, record.stripe_session_id)
    assert session["success_url"].endswith(
        f"/pay/success?session_id={{CHECKOUT_SESSION_ID}}&t={attempt.token}"
    )
    assert session["cancel_url"] == f"http://localhost/pay/cancel?t={attempt.token}"
    assert session["metadata"]["attempt_id"] == str(attempt.id)


def test_an_expired_session_is_replaced(
    client: FlaskClient, db, org, make_transaction, attempt_for, stripe_sandbox
) -> None:
    attempt = attempt_for(make_transaction(org))
    first = client.post(f"/pay/{attempt.token}").headers["Location"]
    record = db.session.scalar(select(CheckoutSession))
    record.expires_at = utcnow() + timedelta(minutes=2)  # about to lapse
    db.session.commit()

    second = client.post(f"/pay/{attempt.token}").headers["Location"]

    assert second != first
    assert db.session.query(CheckoutSession).filter_by(attempt_id=attempt.id).count() == 2


def stripe_sandbox_session(stripe_sandbox: Any, session_id: str) -> dict[str, Any]:
    import stripe

    client = stripe.StripeClient(stripe_sandbox.api_key, base_addresses={"api": stripe_sandbox.base_url})
    return client.v1.checkout.sessions.retrieve(session_id).to_dict()


class TestCsrf:
    @pytest.fixture
    def app_config(self, stripe_sandbox: Any) -> dict[str, Any]:
        stripe_sandbox.reset()
        return {
            "STRIPE_SECRET_KEY": stripe_sandbox.api_key,
            "STRIPE_API_BASE": stripe_sandbox.base_url,
            "WTF_CSRF_ENABLED": True,
        }

    def test_pay_now_needs_the_pages_csrf_token(
        self, client: FlaskClient, org, make_transaction, attempt_for, stripe_sandbox
    ) -> None:
        attempt = attempt_for(make_transaction(org))

        refused = client.post(f"/pay/{attempt.token}")
        assert refused.status_code == 400
        assert stripe_sandbox.requests() == []

        token = csrf_token(text(client.get(f"/pay/{attempt.token}")))
        assert client.post(f"/pay/{attempt.token}", data={"csrf_token": token}).status_code == 303


# --- links that cannot be paid ---------------------------------------------------------------


def test_an_already_paid_link_says_so_with_a_receipt(
    client: FlaskClient, db, org, make_transaction, attempt_for, stripe_sandbox
) -> None:
    transaction = make_transaction(org, transaction_ref="TXN-PAID")
    attempt = attempt_for(transaction)
    transaction.transition(TransactionStatus.RECOVERED)
    transaction.recovered_at = utcnow()
    db.session.commit()

    for response in (client.get(f"/pay/{attempt.token}"), client.post(f"/pay/{attempt.token}")):
        assert response.status_code == 200
        assert response.mimetype == "text/html"  # a page, not its source
        page = text(response)
        assert "Already paid" in page and "TXN-PAID" in page and "$50.00" in page
        assert "Pay now" not in page
    assert stripe_sandbox.requests() == []


def test_stripe_down_asks_the_customer_to_try_again_shortly(
    client: FlaskClient, org, make_transaction, attempt_for, stripe_sandbox
) -> None:
    attempt = attempt_for(make_transaction(org, transaction_ref="TXN-DOWN"))
    stripe_sandbox.fault(status=500, count=3)  # the first try and both retries

    response = client.post(f"/pay/{attempt.token}")

    assert response.status_code == 503
    page = text(response)
    assert "Please try again in a minute" in page and "Pay now" in page
    assert "cannot be taken online" not in page


def test_a_refusal_that_will_not_pass_says_whom_to_contact_not_to_retry(
    client: FlaskClient, db, org, make_transaction, attempt_for, stripe_sandbox
) -> None:
    org.reply_to_email = "billing@merchant.example"
    attempt = attempt_for(make_transaction(org, transaction_ref="TXN-REFUSED"))
    db.session.commit()
    stripe_sandbox.fault(status=400, count=1)  # an invalid request: the same request fails the same way

    response = client.post(f"/pay/{attempt.token}")

    assert response.status_code == 502
    page = text(response)
    assert "This payment cannot be taken online at the moment. Nothing was charged." in page
    assert "billing@merchant.example" in page and "TXN-REFUSED" in page
    assert "try again" not in page


def test_a_link_paid_at_stripe_offers_no_second_session_before_the_webhook(
    client: FlaskClient, db, org, make_transaction, attempt_for, stripe_sandbox
) -> None:
    attempt = attempt_for(make_transaction(org, transaction_ref="TXN-TWICE"))
    client.post(f"/pay/{attempt.token}")
    session_id = db.session.scalar(select(CheckoutSession.stripe_session_id))
    stripe_sandbox.pay(session_id, "4242424242424242")
    client.get(f"/pay/success?session_id={session_id}&t={attempt.token}")  # sees it complete
    creates = len(stripe_creates(stripe_sandbox))

    # The webhook has not recovered the transaction yet; the customer opens the link again.
    for response in (client.get(f"/pay/{attempt.token}"), client.post(f"/pay/{attempt.token}")):
        assert response.status_code == 200 and response.mimetype == "text/html"
        page = text(response)
        assert "being confirmed" in page and "Please do not pay again" in page and "TXN-TWICE" in page
        assert "Pay now" not in page
    assert len(stripe_creates(stripe_sandbox)) == creates
    assert db.session.query(CheckoutSession).count() == 1
    db.session.expire_all()
    assert db.session.get(RecoveryAttempt, attempt.id).transaction.status == TransactionStatus.RECOVERING


def test_a_delayed_payment_waits_and_one_that_failed_may_be_paid_again(
    client: FlaskClient, db, org, make_transaction, attempt_for, stripe_sandbox
) -> None:
    from recovery.models import WebhookEvent

    attempt = attempt_for(make_transaction(org, transaction_ref="TXN-SEPA"))
    client.post(f"/pay/{attempt.token}")
    record = db.session.scalar(select(CheckoutSession))
    record.status, record.payment_status = "complete", "unpaid"  # a debit that settles in days
    db.session.commit()
    assert "being confirmed" in text(client.get(f"/pay/{attempt.token}"))

    # Stripe reports the delayed payment failed (what processing its event leaves behind).
    db.session.add(
        WebhookEvent(
            stripe_event_id="evt_async_failed",
            type="checkout.session.async_payment_failed",
            object_id=record.stripe_session_id,
            payload={},
        )
    )
    db.session.commit()

    assert ">Pay now</button>" in text(client.get(f"/pay/{attempt.token}"))
    assert client.post(f"/pay/{attempt.token}").status_code == 303
    assert db.session.query(CheckoutSession).filter_by(attempt_id=attempt.id).count() == 2


def test_cancelling_a_recovery_closes_the_session_the_customer_opened(
    client: FlaskClient, db, org, make_transaction, attempt_for, stripe_sandbox
) -> None:
    from recovery.queue import get_queue
    from recovery.recoveries import jobs as recovery_jobs
    from recovery.webhooks import jobs as webhook_jobs

    attempt = attempt_for(make_transaction(org, transaction_ref="TXN-STOP"))
    client.post(f"/pay/{attempt.token}")  # the customer has the Stripe page open
    session_id = db.session.scalar(select(CheckoutSession.stripe_session_id))
    cancelled = lifecycle.cancel_recovery(db.session, attempt, Actor.system(org.id), now=utcnow())
    db.session.commit()

    recovery_jobs.after_cancel(cancelled)
    [job] = [j for j in get_queue().jobs if j.func_name.endswith("close_payment_options")]
    assert webhook_jobs.close_payment_options(*job.args) == [session_id]

    assert stripe_sandbox_session(stripe_sandbox, session_id)["status"] == "expired"
    db.session.expire_all()
    assert db.session.scalar(select(CheckoutSession.status)) == "expired"
    entry = db.session.scalar(select(AuditEvent).where(AuditEvent.action == "stripe.checkout_session_closed"))
    assert entry.details["summary"] == f"Checkout session {session_id} expired: its recovery was cancelled"


def test_a_close_that_finds_the_transaction_recovering_again_leaves_it_alone(
    client: FlaskClient, db, org, make_transaction, attempt_for, stripe_sandbox
) -> None:
    from recovery.webhooks import jobs as webhook_jobs

    attempt = attempt_for(make_transaction(org))
    client.post(f"/pay/{attempt.token}")
    lifecycle.cancel_recovery(db.session, attempt, Actor.system(org.id), now=utcnow())
    db.session.commit()
    again = attempt_for(db.session.get(Transaction, attempt.transaction_id))  # restarted before the job ran
    assert again.transaction.status == TransactionStatus.RECOVERING

    assert webhook_jobs.close_payment_options(attempt.transaction_id, None) == []
    assert db.session.scalar(select(CheckoutSession.status)) == "open"


def test_the_pay_page_states_the_expiry_as_the_messages_do(
    client: FlaskClient, db, org, make_transaction, attempt_for
) -> None:
    # In the customer's zone with its offset, not the merchant's clock without one.
    transaction = make_transaction(org, customer_country="US", customer_phone="+14155550123")
    attempt = attempt_for(transaction)
    attempt.expires_at = datetime(2031, 1, 15, 20, 0, tzinfo=UTC)
    db.session.commit()

    page = text(client.get(f"/pay/{attempt.token}"))

    assert "January 15, 2031, 12:00 PM (UTC-8)" in page


@pytest.mark.parametrize("how", ["time ran out", "exhausted", "cancelled"])
def test_an_ended_link_explains_how_to_reach_the_merchant(
    client: FlaskClient, db, org, make_transaction, attempt_for, stripe_sandbox, how
) -> None:
    attempt = attempt_for(make_transaction(org, transaction_ref="TXN-OLD"))
    if how == "time ran out":
        attempt.expires_at = utcnow() - timedelta(minutes=1)
    elif how == "exhausted":
        attempt.transition(AttemptStatus.EXHAUSTED)
    else:
        lifecycle.cancel_recovery(db.session, attempt, Actor.system(org.id), now=utcnow())
    db.session.commit()

    for response in (client.get(f"/pay/{attempt.token}"), client.post(f"/pay/{attempt.token}")):
        assert response.status_code == 410
        assert response.mimetype == "text/html"
        page = text(response)
        assert "This link is no longer valid" in page and "TXN-OLD" in page
        assert "billing@acme.example" in page
        assert "Pay now" not in page
    assert stripe_sandbox.requests() == []


# --- success and cancel -----------------------------------------------------------------------


def test_success_shows_a_receipt_only_once_stripe_says_paid(
    client: FlaskClient, db, org, make_transaction, attempt_for, stripe_sandbox
) -> None:
    attempt = attempt_for(make_transaction(org, transaction_ref="TXN-RCPT", amount=5000))
    client.post(f"/pay/{attempt.token}")
    session_id = db.session.scalar(select(CheckoutSession.stripe_session_id))
    url = f"/pay/success?session_id={session_id}&t={attempt.token}"

    waiting = text(client.get(url))
    assert "Confirming your payment" in waiting and "TXN-RCPT" in waiting
    assert "Payment received" not in waiting

    stripe_sandbox.pay(session_id, "4242424242424242")
    paid = text(client.get(url))

    assert "Payment received" in paid
    for fact in ("Acme Shop", "$50.00", "TXN-RCPT", "ending in 4242"):
        assert fact in paid
    # Only Stripe's webhook fulfils: the page did not mark the transaction recovered.
    db.session.expire_all()
    assert db.session.get(RecoveryAttempt, attempt.id).transaction.status == TransactionStatus.RECOVERING


def test_success_asks_stripe_only_so_often(
    app: Flask, client: FlaskClient, db, org, make_transaction, attempt_for, stripe_sandbox
) -> None:
    # The address is in the customer's browser; reloading it must not spend the
    # Stripe rate limit that every merchant shares.
    reconfigure(app, SUCCESS_LOOKUPS_PER_MINUTE=2)
    attempt = attempt_for(make_transaction(org, transaction_ref="TXN-RELOAD"))
    client.post(f"/pay/{attempt.token}")
    session_id = db.session.scalar(select(CheckoutSession.stripe_session_id))
    stripe_sandbox.pay(session_id, "4242424242424242")
    url = f"/pay/success?session_id={session_id}&t={attempt.token}"

    pages = []
    for _ in range(3):
        before = len(stripe_sandbox.requests())
        pages.append((text(client.get(url)), len(stripe_sandbox.requests()) - before))

    assert all("Payment received" in page and asked > 0 for page, asked in pages[:2])
    page, asked = pages[2]
    assert asked == 0 and "Confirming your payment" in page and "TXN-RELOAD" in page


def test_a_forged_or_foreign_session_id_shows_nothing(
    client: FlaskClient, db, org, make_org, make_transaction, attempt_for, stripe_sandbox
) -> None:
    theirs_org = make_org(name="Their Merchant")
    theirs = attempt_for(make_transaction(theirs_org, transaction_ref="THEIR-SECRET-REF"))
    client.post(f"/pay/{theirs.token}")
    their_session = db.session.scalar(select(CheckoutSession.stripe_session_id))
    mine = attempt_for(make_transaction(org))
    stripe_sandbox.reset()

    for url in (
        "/pay/success?session_id=cs_test_forged",
        f"/pay/success?session_id=cs_test_forged&t={mine.token}",
        f"/pay/success?session_id={their_session}&t={mine.token}",
        f"/pay/success?session_id={their_session}&t=not-a-token",
    ):
        response = client.get(url)
        assert response.status_code == 200
        page = text(response)
        assert "We could not find the details of this payment" in page
        assert "Their Merchant" not in page and "THEIR-SECRET-REF" not in page
    assert stripe_sandbox.requests() == []


def _payment_link(app: Flask, db: Any, transaction: Transaction) -> links.PaymentLinkResult:
    result = links.create_payment_link(
        db.session,
        StripeGateway(StripeSettings.from_config(app.config)),
        transaction,
        Actor.system(transaction.organization_id),
    )
    db.session.commit()
    return result


def _success_path(stripe_sandbox: Any, link_id: str, session_id: str) -> str:
    """Where Stripe sends the customer after paying through the link, on our host."""
    stripe_client = stripe.StripeClient(
        stripe_sandbox.api_key, base_addresses={"api": stripe_sandbox.base_url}
    )
    redirect = stripe_client.v1.payment_links.retrieve(link_id).after_completion.redirect
    assert redirect is not None
    url = urlsplit(redirect.url.replace("{CHECKOUT_SESSION_ID}", session_id))
    return f"{url.path}?{url.query}"


def test_a_payment_links_success_page_shows_the_receipt(
    app: Flask, client: FlaskClient, db, org, make_transaction, stripe_sandbox
) -> None:
    # Stripe makes a link's sessions, so we hold no record of them: only Stripe's copy.
    transaction = make_transaction(org, transaction_ref="TXN-LINK", amount=5000)
    link = _payment_link(app, db, transaction)
    opened = requests.get(link.url, allow_redirects=False, timeout=5)
    session_id = opened.headers["Location"].rsplit("/", 1)[1]
    path = _success_path(stripe_sandbox, link.payment_link_id, session_id)

    waiting = text(client.get(path))
    assert "Confirming your payment" in waiting and "TXN-LINK" in waiting

    stripe_sandbox.pay(session_id, "4242424242424242")
    paid = text(client.get(path))
    assert "Payment received" in paid
    for fact in ("Acme Shop", "$50.00", "TXN-LINK", "ending in 4242"):
        assert fact in paid


def test_a_payment_links_success_page_asks_stripe_only_so_often(
    app: Flask, client: FlaskClient, db, org, make_transaction, stripe_sandbox
) -> None:
    # The signed address is in every paying customer's browser; Stripe's rate limit is everyone's.
    reconfigure(app, SUCCESS_LOOKUPS_PER_MINUTE=2)
    link = _payment_link(app, db, make_transaction(org, transaction_ref="TXN-BUSY"))
    session_id = (
        requests.get(link.url, allow_redirects=False, timeout=5).headers["Location"].rsplit("/", 1)[1]
    )
    stripe_sandbox.pay(session_id, "4242424242424242")
    path = _success_path(stripe_sandbox, link.payment_link_id, session_id)

    pages = []
    for _ in range(3):
        before = len(stripe_sandbox.requests())
        pages.append((text(client.get(path)), len(stripe_sandbox.requests()) - before))

    assert all("Payment received" in page and asked > 0 for page, asked in pages[:2])
    page, asked = pages[2]
    assert asked == 0 and "Confirming your payment" in page and "TXN-BUSY" in page


def test_a_payment_links_success_page_survives_a_secret_key_rotation(
    app: Flask, client: FlaskClient, db, org, make_transaction, stripe_sandbox
) -> None:
    link = _payment_link(app, db, make_transaction(org, transaction_ref="TXN-ROTATE"))
    session_id = (
        requests.get(link.url, allow_redirects=False, timeout=5).headers["Location"].rsplit("/", 1)[1]
    )
    stripe_sandbox.pay(session_id, "4242424242424242")
    path = _success_path(stripe_sandbox, link.payment_link_id, session_id)
    old_key = app.config["SECRET_KEY"]

    reconfigure(app, SECRET_KEY="a-new-secret-key-after-rotation")
    assert "We could not find the details" in text(client.get(path))
    reconfigure(app, SECRET_KEY_FALLBACKS=[old_key])
    assert "Payment received" in text(client.get(path))


def test_a_forged_or_foreign_link_success_address_shows_nothing(
    app: Flask, client: FlaskClient, db, org, make_org, make_transaction, stripe_sandbox
) -> None:
    theirs = make_transaction(make_org(name="Their Merchant"), transaction_ref="THEIR-SECRET-REF")
    their_link = _payment_link(app, db, theirs)
    opened = requests.get(their_link.url, allow_redirects=False, timeout=5)
    their_session = opened.headers["Location"].rsplit("/", 1)[1]
    mine = make_transaction(org, transaction_ref="MINE-1")
    my_link = _payment_link(app, db, mine)
    my_l = parse_qs(urlsplit(_success_path(stripe_sandbox, my_link.payment_link_id, "x")).query)["l"][0]
    forged = link_pages("http://localhost", "not-our-secret", theirs.id).link

    for url, asks_stripe in (
        (f"/pay/success?session_id={their_session}&l={forged}", False),
        (f"/pay/success?session_id={their_session}&l=garbage", False),
        (f"/pay/success?session_id=not-a-session&l={my_l}", False),
        (f"/pay/success?session_id={their_session}&l={my_l}", True),  # signed, but not my link's session
        (f"/pay/success?session_id=cs_test_forged&l={my_l}", True),
    ):
        before = len(stripe_sandbox.requests())
        page = text(client.get(url))
        assert "We could not find the details of this payment" in page, url
        assert "Their Merchant" not in page and "THEIR-SECRET-REF" not in page
        assert (len(stripe_sandbox.requests()) > before) == asks_stripe, url


def test_cancel_page_offers_to_try_again_when_the_link_is_known(
    client: FlaskClient, org, make_transaction, attempt_for
) -> None:
    attempt = attempt_for(make_transaction(org))

    known = text(client.get(f"/pay/cancel?t={attempt.token}"))
    unknown = text(client.get("/pay/cancel"))

    assert "nothing has been charged" in known and "nothing has been charged" in unknown
    assert f'href="/pay/{attempt.token}">Try again</a>' in known
    assert "Acme Shop" in known
    assert "Try again" not in unknown


# --- one-click unsubscribe (RFC 8058) ---------------------------------------------------------


class TestUnsubscribe:
    @pytest.fixture
    def app_config(self) -> dict[str, Any]:
        return {"WTF_CSRF_ENABLED": True}

    def test_one_click_post_needs_no_cookie_or_csrf_token(self, app, db, org, make_transaction, attempt_for):
        transaction = make_transaction(org, customer_email="ann@example.com", customer_phone="+14155550123")
        attempt = attempt_for(transaction)
        cookieless = app.test_client(use_cookies=False)

        confirm = cookieless.get(f"/pay/{attempt.token}/unsubscribe")
        assert confirm.status_code == 200 and "Stop these emails?" in text(confirm)
        assert contacts.suppressed_channels(db.session, transaction) == {}  # a GET changes nothing

        response = cookieless.post(
            f"/pay/{attempt.token}/unsubscribe", data={"List-Unsubscribe": "One-Click"}
        )
        assert response.status_code == 200 and "You are unsubscribed" in text(response)
        assert contacts.suppressed_channels(db.session, transaction) == {"email": "opted_out"}
        assert cookieless.post(f"/pay/{attempt.token}/unsubscribe").status_code == 200  # idempotent
        assert db.session.query(AuditEvent).filter_by(action="recovery.unsubscribed").count() == 1
        # The running recovery carries on by SMS only.
        db.session.expire_all()
        attempt = db.session.get(RecoveryAttempt, attempt.id)
        assert contacts.effective_channels(db.session, attempt, attempt.transaction) == ["sms"]

    def test_unknown_token_is_404(self, app) -> None:
        assert app.test_client().post("/pay/nope/unsubscribe").status_code == 404


def test_a_closing_job_lost_with_redis_is_placed_again_by_the_reconciliation(
    app: Flask, client: FlaskClient, db, org, make_transaction, attempt_for, stripe_sandbox
) -> None:
    from recovery.queue import get_queue
    from recovery.webhooks import jobs as webhook_jobs

    def closing_jobs() -> list[Any]:
        return [j for j in get_queue().jobs if j.func_name.endswith("close_payment_options")]

    attempt = attempt_for(make_transaction(org, transaction_ref="TXN-LOST"))
    transaction_id = attempt.transaction_id  # the job below ends the session the attempt was loaded in
    client.post(f"/pay/{attempt.token}")  # the customer has the Stripe page open
    session_id = db.session.scalar(select(CheckoutSession.stripe_session_id))
    link = _payment_link(app, db, db.session.get(Transaction, attempt.transaction_id))
    lifecycle.cancel_recovery(db.session, attempt, Actor.system(org.id), now=utcnow())
    db.session.commit()  # the cancel queues its closing job after this commit...
    get_queue().empty()  # ...which Redis then loses
    assert closing_jobs() == []

    webhook_jobs.reconcile_checkout_sessions.__wrapped__()

    [job] = closing_jobs()
    assert sorted(webhook_jobs.close_payment_options(*job.args)) == sorted([link.payment_link_id, session_id])
    assert stripe_sandbox_session(stripe_sandbox, session_id)["status"] == "expired"
    get_queue().empty()
    webhook_jobs.reconcile_checkout_sessions.__wrapped__()
    assert closing_jobs() == []  # nothing payable is left: not asked again

    # The transaction is still open: a link the merchant makes after the cancel is their
    # new offer, and the reconciliation leaves it alone.
    fresh = _payment_link(app, db, db.session.get(Transaction, transaction_id))
    assert fresh.payment_link_id != link.payment_link_id
    webhook_jobs.reconcile_checkout_sessions.__wrapped__()
    assert closing_jobs() == []
