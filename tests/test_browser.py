"""Headless Chromium (Playwright) against the real app on a live server.

Sign in through the form, filter the list, open a transaction, import a CSV, use the
dashboard at phone width, and see no console error or CSP violation on the way. The
README's screenshot (docs/screenshot-dashboard.png) is taken here, so it stays current;
set BROWSER_SCREENSHOTS=<dir> to also keep a screenshot of every page the tests visit.

Runs on PostgreSQL only (the production database); the pages are the same on SQLite.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import pytest
import sqlalchemy as sa

from recovery.models import Transaction
from tests.fixtures.browser import (
    BROWSER,
    DESKTOP,
    PHONE,
    README_SCREENSHOT,
    WEBHOOK_SECRET,
    Tab,
    live_app_config,
    sign_in,
)

pytestmark = BROWSER


@pytest.fixture
def app_config(live_port: int, stripe_sandbox: Any) -> dict[str, Any]:
    return live_app_config(live_port, stripe_sandbox)


IMPORT_CSV = (
    "transaction_ref,amount,currency,customer_name,customer_email,failure_code\n"
    "WEB-0001,12.50,usd,Ana Souza,ana@example.com,card_declined\n"
    "WEB-0002,5000,jpy,Kenji Sato,kenji@example.com,expired_card\n"
    "WEB-0003,7.250,bhd,Omar Haddad,omar@example.com,insufficient_funds\n"
    "WEB-0004,-3,usd,Bad Amount,bad@example.com,card_declined\n"
    "DEMO-0001,100.00,usd,Already There,again@example.com,card_declined\n"
)


def test_sign_in_filter_open_and_import(open_tab: Callable[..., Tab], demo: Any) -> None:
    from playwright.sync_api import expect

    tab = open_tab()
    page = tab.page
    sign_in(tab, shot="sign-in")

    # The dashboard: 50 rows a page, every status, the README screenshot without a flash.
    page.goto("/transactions")
    rows = page.locator("#results tbody tr")
    expect(rows).to_have_count(50)
    expect(page.locator("#results .status-failed").first).to_be_visible()
    expect(page.get_by_role("link", name="Next →")).to_be_visible()
    expect(page.locator("#kpis .kpi")).to_have_count(4)  # loaded after the page
    tab.assert_fits_width()
    tab.shot("dashboard", README_SCREENSHOT)

    # Status tab: only recovered rows.
    page.get_by_role("navigation", name="Status").get_by_role("link", name="Recovered", exact=True).click()
    expect(page).to_have_url(re.compile(r"status=recovered"))
    badges = page.locator("#results tbody .status")
    expect(badges.first).to_be_visible()
    assert {text.strip() for text in badges.all_text_contents()} == {"recovered"}
    first_ref = rows.first.get_by_role("link").inner_text()

    # Search by reference within the tab: exactly that transaction.
    page.get_by_label("Search").fill(first_ref)
    page.get_by_role("button", name="Apply").click()
    expect(page).to_have_url(re.compile(rf"q={first_ref}"))
    expect(rows).to_have_count(1)
    expect(page.get_by_role("link", name="Clear")).to_be_visible()

    # A search that matches nothing explains itself.
    page.get_by_label("Search").fill("NO-SUCH-REF")
    page.get_by_role("button", name="Apply").click()
    expect(page.get_by_role("heading", name="No transactions match")).to_be_visible()
    tab.shot("dashboard-empty-search")
    page.go_back()

    # Open it: its fields, its status and its timeline.
    page.get_by_role("link", name=first_ref).click()
    expect(page.get_by_role("heading", level=1)).to_contain_text(first_ref)
    expect(page.locator("h1 .status")).to_have_text("recovered")
    expect(page.get_by_role("heading", name="Customer")).to_be_visible()
    expect(page.locator(".timeline li").first).to_be_visible()
    tab.shot("transaction-detail")

    # Import a small CSV: three good rows, one invalid, one duplicate of a demo row.
    page.get_by_role("navigation", name="Main").get_by_role("link", name="Import CSV").click()
    expect(page.get_by_role("heading", name="Upload a CSV file")).to_be_visible()
    tab.shot("import")
    page.get_by_label("CSV file").set_input_files(
        {"name": "failed-payments.csv", "mimeType": "text/csv", "buffer": IMPORT_CSV.encode()}
    )
    page.get_by_role("button", name="Upload and match columns").click()
    page.get_by_role("button", name="Import 5 rows").click()
    expect(page.get_by_role("heading", name="Import of failed-payments.csv")).to_be_visible()
    expect(page.locator("#import-progress .status")).to_have_text("done")
    expect(page.locator("#imported-count")).to_have_text("3")
    problems = page.locator("table.problems tbody tr")
    expect(problems).to_have_count(2)
    expect(problems.filter(has_text="WEB-0004")).to_contain_text("5")  # row 5 of the file
    expect(problems.filter(has_text="WEB-0004")).to_contain_text("amount")
    expect(problems.filter(has_text="DEMO-0001")).to_contain_text("already exists")
    tab.shot("import-result")

    # The imported rows are on the dashboard, each amount in its currency's format.
    page.get_by_role("link", name="View transactions").click()
    page.get_by_label("Search").fill("WEB-0003")
    page.get_by_role("button", name="Apply").click()
    expect(rows).to_have_count(1)
    expect(rows.first.locator("td.num")).to_contain_text("7.250")
    tab.assert_clean()


def test_phone_width_menu_and_table(open_tab: Callable[..., Tab], demo: Any) -> None:
    from playwright.sync_api import expect

    tab = open_tab(PHONE, is_mobile=True, has_touch=True, device_scale_factor=2)
    page = tab.page
    sign_in(tab, email="operator@demo.example")
    tab.assert_fits_width()

    nav = page.locator("#main-nav")
    toggle = page.get_by_role("button", name="Menu")
    expect(nav).to_be_hidden()
    toggle.click()
    expect(toggle).to_have_attribute("aria-expanded", "true")
    expect(nav.get_by_role("link", name="Import CSV")).to_be_visible()
    tab.shot("phone-menu-open")
    toggle.click()
    expect(nav).to_be_hidden()

    # Each row is a readable card: the reference is on screen and can be tapped.
    first = page.locator("#results tbody tr").first
    link = first.get_by_role("link")
    link.scroll_into_view_if_needed()
    for cell in (link, first.locator(".status"), first.locator("td.num")):
        expect(cell).to_be_in_viewport()
        box = cell.bounding_box()
        assert box is not None and box["x"] >= 0 and box["x"] + box["width"] <= PHONE["width"], box
    tab.assert_fits_width()
    tab.shot("phone-dashboard")
    ref = link.inner_text()
    link.tap()
    expect(page.get_by_role("heading", level=1)).to_contain_text(ref)
    tab.assert_fits_width()
    tab.shot("phone-detail")
    tab.assert_clean()


def test_users_page(open_tab: Callable[..., Tab], demo: Any) -> None:
    from playwright.sync_api import expect

    tab = open_tab()
    page = tab.page
    sign_in(tab)
    page.get_by_role("navigation", name="Main").get_by_role("link", name="Users").click()
    expect(page.locator("table.data tbody tr")).to_have_count(4)
    expect(page.get_by_label("Role of viewer@demo.example")).to_have_value("viewer")
    invite = page.locator("form", has=page.get_by_role("heading", name="Invite a user"))
    for label in ("Email", "Name", "Role"):
        expect(invite.get_by_label(label, exact=True)).to_be_visible()
    tab.assert_fits_width()
    tab.shot("users")
    tab.assert_clean()


def test_checkout_session_paid_on_the_sandbox(
    open_tab: Callable[..., Tab], demo: Any, live_server: str, stripe_sandbox: Any
) -> None:
    """Create a session from the dashboard, pay it on the sandbox's page, land on our success page."""
    from playwright.sync_api import expect

    tab = open_tab(permissions=["clipboard-read", "clipboard-write"])
    page = tab.page
    sign_in(tab, email="operator@demo.example")
    page.goto("/transactions?status=failed")
    page.locator("#results tbody tr").first.get_by_role("link").click()
    detail_url = page.url
    page.get_by_role("button", name="Create checkout session").click()
    expect(page.locator(".flash-success")).to_contain_text("Checkout session created")
    link = page.get_by_label("Checkout session link")
    checkout_url = link.input_value()
    assert checkout_url.startswith(stripe_sandbox.base_url)
    page.get_by_role("button", name="Copy").first.click()
    expect(page.get_by_role("button", name="Copied")).to_be_visible()
    assert page.evaluate("navigator.clipboard.readText()") == checkout_url
    tab.shot("payment-panel")
    tab.assert_clean()

    # The sandbox's hosted page: a declined card first, then one that pays.
    page.goto(checkout_url)
    expect(page.get_by_role("heading", name="Pay with card")).to_be_visible()
    page.get_by_label("Card information").fill("4000 0000 0000 0002")
    page.get_by_label("Expiry").fill("12 / 34")
    page.get_by_label("CVC").fill("123")
    page.get_by_role("button", name=re.compile(r"^Pay ")).click()
    expect(page.get_by_role("alert")).to_contain_text("declined")
    page.get_by_label("Card information").fill("4242 4242 4242 4242")
    page.get_by_label("CVC").fill("123")
    page.get_by_role("button", name=re.compile(r"^Pay ")).click()
    expect(page).to_have_url(re.compile(rf"^{re.escape(live_server)}/pay/success\?session_id=cs_"))
    expect(page.get_by_role("heading", name="Thank you")).to_be_visible()
    expect(page.locator(".customer-merchant")).to_contain_text("Demo Coffee Roasters")
    tab.shot("customer-success")

    # Back on the dashboard, the live status shows the payment.
    page.goto(detail_url)
    page.get_by_role("button", name="Refresh status").click()
    expect(page.locator(".flash")).to_contain_text("Stripe says: complete, paid.")


def _journey_transaction(db: Any) -> Any:
    """A failed demo transaction with an email address, whose failure code is not excluded."""
    import sqlalchemy as sa

    from recovery.models import Organization, Transaction

    organization = db.session.scalar(sa.select(Organization))
    # Any hour of the day: the first email goes out at once, whenever the test runs.
    organization.quiet_hours = ""
    db.session.commit()
    return db.session.scalar(
        sa.select(Transaction)
        .where(
            Transaction.status == "failed",
            Transaction.customer_email.is_not(None),
            Transaction.failure_code.not_in(organization.excluded_codes or ["-"]),
        )
        .order_by(Transaction.id)
        .limit(1)
    )


def test_recovery_journey_email_pay_and_live_status(
    open_tab: Callable[..., Tab],
    demo: Any,
    db: Any,
    live_server: str,
    stripe_sandbox: Any,
    background_worker: list[BaseException],
) -> None:
    """The whole loop: start a recovery, the email in the outbox, the customer pays, staff see it live."""
    from playwright.sync_api import expect

    # Stripe (the sandbox) delivers its signed events to this server; the worker applies them.
    stripe_sandbox.add_webhook_endpoint(f"{live_server}/v1/payments/stripe/webhooks", WEBHOOK_SECRET)
    transaction = _journey_transaction(db)
    assert transaction is not None
    ref = transaction.transaction_ref

    staff = open_tab()
    page = staff.page
    sign_in(staff, email="operator@demo.example")

    # Find the transaction and start a recovery by email only.
    page.get_by_label("Search").fill(ref)
    page.get_by_role("button", name="Apply").click()
    page.locator("#results tbody tr").first.get_by_role("link", name=ref).click()
    expect(page.locator("h1 .status")).to_have_text("failed")
    detail_url = page.url
    recovery = page.locator("#recovery")
    sms = recovery.locator('input[name="channels"][value="sms"]')
    if sms.count():
        sms.uncheck()
    expect(recovery.locator('input[name="channels"][value="email"]')).to_be_checked()
    # The demo's rules would retry the card first (issue 18): the operator picks the
    # default schedule instead, whose first message goes at once.
    recovery.get_by_label("Campaign").select_option(label="Start “Default schedule” instead")
    recovery.get_by_role("button", name="Start recovery").click()
    expect(page.locator(".flash-success")).to_contain_text("Recovery started")
    expect(page.locator("h1 .status")).to_have_text("recovering")

    # The worker sends the first email (to the development outbox); the open page shows it by itself.
    expect(page.locator(".timeline")).to_contain_text("Email handed to the provider", timeout=15_000)
    expect(recovery).to_contain_text("1 message sent")
    staff.shot("journey-recovering")

    # The email, as the customer gets it, in the dashboard's outbox.
    page.get_by_role("navigation", name="Main").get_by_role("link", name="Outbox").click()
    page.locator("table.data tbody tr", has_text=ref).first.get_by_role("link").last.click()
    expect(page.get_by_role("heading", level=1)).to_contain_text("did not go through")
    expect(page.locator(".lead").get_by_role("link", name=ref)).to_be_visible()
    pay_button = page.frame_locator("iframe.outbox-frame").get_by_role("link", name=re.compile(r"^Pay "))
    expect(pay_button).to_be_visible()
    pay_link = pay_button.get_attribute("href")
    assert pay_link is not None and pay_link.startswith(f"{live_server}/pay/"), pay_link
    expect(page.locator("#message-link")).to_have_text(pay_link)
    staff.shot("journey-outbox-email")

    # On a phone the message's long link and the recovery's tables stay within the screen.
    page.set_viewport_size(PHONE)
    staff.assert_fits_width()
    page.goto(detail_url)
    expect(page.locator("#recovery")).to_contain_text("1 message sent")
    staff.assert_fits_width()
    page.set_viewport_size(DESKTOP)

    # Staff open the transaction once more and leave it open: it must change by itself.
    page.goto(detail_url)
    expect(page.locator("h1 .status")).to_have_text("recovering")
    loads: list[str] = []
    page.on("load", lambda p: loads.append(p.url))
    page.evaluate("window.stillTheSamePage = true")  # through CDP: the CSP does not apply

    # The customer, in a browser of their own, follows the link and pays with 4242.
    customer = open_tab()
    buyer = customer.page
    buyer.goto(pay_link)
    expect(buyer.get_by_role("heading", name="Complete your payment")).to_be_visible()
    expect(buyer.locator(".customer-merchant")).to_contain_text("Demo Coffee Roasters")
    customer.shot("journey-pay")
    buyer.get_by_role("button", name="Pay now").click()
    expect(buyer.get_by_role("heading", name="Pay with card")).to_be_visible()
    assert buyer.url.startswith(stripe_sandbox.base_url)
    buyer.get_by_label("Card information").fill("4242 4242 4242 4242")
    buyer.get_by_label("Expiry").fill("12 / 34")
    buyer.get_by_label("CVC").fill("123")
    buyer.get_by_role("button", name=re.compile(r"^Pay ")).click()
    expect(buyer).to_have_url(re.compile(rf"^{re.escape(live_server)}/pay/success\?session_id=cs_"))
    expect(buyer.get_by_role("heading", name="Thank you")).to_be_visible()
    receipt = buyer.get_by_role("region", name="Receipt")
    expect(receipt).to_contain_text(ref)
    expect(receipt).to_contain_text("ending in 4242")
    customer.shot("journey-success")

    # The webhook lands, the worker applies it, and the open page turns recovered without a reload.
    expect(page.locator("h1 .status")).to_have_text("recovered", timeout=20_000)
    expect(page.locator(".timeline")).to_contain_text("Recovered")
    expect(page.locator("#recovery")).to_contain_text("nothing to recover")
    assert page.evaluate("window.stillTheSamePage === true")
    assert loads == []
    # Final: the page stops polling.
    expect(page.locator("#transaction-live")).not_to_have_attribute("hx-trigger", re.compile("."))
    staff.shot("journey-recovered")

    page.get_by_role("navigation", name="Main").get_by_role("link", name="Recoveries").click()
    row = page.locator("table.recoveries tbody tr", has_text=ref)
    expect(row.locator(".status")).to_have_text("completed")
    staff.assert_clean()
    customer.assert_clean()


def test_kpi_tiles_and_bulk_start_from_the_list(
    open_tab: Callable[..., Tab], demo: Any, background_worker: list[BaseException]
) -> None:
    """The tiles load after the list; select a page of failed transactions and start them all."""
    from playwright.sync_api import expect

    tab = open_tab()
    page = tab.page
    sign_in(tab, email="operator@demo.example")
    tiles = page.locator("#kpis .kpi")
    expect(tiles).to_have_count(4)
    rate = page.locator("#kpis .kpi-rate")
    expect(rate).to_have_attribute("title", re.compile(r"^Of the recoveries that ended"))
    expect(page.locator("#kpis .kpi-in-flight .kpi-value")).to_have_text(re.compile(r"^\d+$"))

    page.goto("/transactions?status=failed")
    rows = page.locator("#results tbody tr")
    expect(rows).to_have_count(50)
    page.get_by_label("Select all on this page").check()
    expect(page.locator('input[name="ids"]:checked')).to_have_count(50)
    expect(page.get_by_role("button", name="Start recovery for 50 selected")).to_be_visible()
    rows.first.locator('input[name="ids"]').uncheck()
    expect(page.get_by_label("Select all on this page")).not_to_be_checked()
    button = page.get_by_role("button", name="Start recovery for 49 selected")
    page.get_by_label("Email only").check()
    dialogs: list[str] = []

    def accept(dialog: Any) -> None:
        dialogs.append(dialog.message)
        dialog.accept()

    page.on("dialog", accept)
    button.click()
    expect(page.get_by_role("heading", name="Starting 49 recoveries")).to_be_visible()
    assert dialogs == [
        "Start recoveries for 49 transactions? Each customer gets the first message now, "
        "or at 08:00 their time if it is within quiet hours (21:00-08:00) there."
    ]
    expect(page.locator("#bulk-progress .status")).to_have_text("done", timeout=20_000)
    started = int(page.locator("#bulk-started").inner_text())
    refused = int(page.locator("#bulk-refused").inner_text())
    assert started + refused == 49 and started > 0
    tab.shot("bulk-start")
    tab.assert_fits_width()
    tab.assert_clean()


class TestAllMatchingInTheBrowser:
    """The bulk bar's script (recovery/static/js/app.js) in headless Chromium, on the demo data."""

    @pytest.fixture
    def app_config(self, live_port: int) -> dict[str, Any]:
        return {"WTF_CSRF_ENABLED": True, "BASE_URL": f"http://127.0.0.1:{live_port}"}

    def test_select_all_matching_appears_with_the_whole_page_and_sends_the_filter(
        self, open_tab: Callable[..., Tab], demo: Any, db: Any
    ) -> None:
        from playwright.sync_api import expect

        failed = db.session.scalar(
            sa.select(sa.func.count())
            .select_from(Transaction)
            .where(Transaction.organization_id == demo.organization.id, Transaction.status == "failed")
        )
        assert failed > 50, "the demo needs more failed transactions than a page"
        tab = open_tab()
        page = tab.page
        sign_in(tab, email="operator@demo.example")
        page.goto("/transactions?status=failed")
        whole_page = page.get_by_label("Select all on this page")
        every_match = page.get_by_label(f"Select all {failed} matching this filter")
        expect(every_match).to_be_hidden()

        whole_page.check()
        expect(every_match).to_be_visible()
        every_match.check()
        expect(page.get_by_role("button", name=f"Start recovery for all {failed} matching")).to_be_visible()
        tab.shot("bulk-all-matching")
        tab.assert_fits_width()
        # Unticking one row is "not everything": the offer goes, and the count is the page's again.
        first_row = page.locator('#results tbody input[name="ids"]').first
        first_row.uncheck()
        expect(every_match).to_be_hidden()
        expect(every_match).not_to_be_checked()
        expect(page.get_by_role("button", name="Start recovery for 49 selected")).to_be_visible()

        first_row.check()
        every_match.check()
        dialogs: list[str] = []

        def accept(dialog: Any) -> None:
            dialogs.append(dialog.message)
            dialog.accept()

        page.on("dialog", accept)
        page.get_by_role("button", name=f"Start recovery for all {failed} matching").click()
        expect(page.get_by_role("heading", name=f"Starting {failed} recoveries")).to_be_visible()
        expect(page.locator("#bulk-filter")).to_have_text("Every transaction that matched status failed.")
        assert dialogs == [
            f"Start recoveries for all {failed} transactions matching this filter? "
            "Each customer gets the first message now, "
            "or at 08:00 their time if it is within quiet hours (21:00-08:00) there."
        ]
        tab.assert_clean()


def test_an_unknown_message_offers_send_again_and_sessions_end_everywhere(
    open_tab: Callable[..., Tab], demo: Any, db: Any
) -> None:
    """The crash-recovery screens (issue 15) as an operator sees them, at desktop and phone widths."""
    from playwright.sync_api import expect

    from recovery.audit import Actor
    from recovery.models import Message, MessageStatus, utcnow
    from recovery.recoveries import lifecycle, repair

    transaction = db.session.scalar(
        sa.select(Transaction)
        .where(Transaction.status == "failed", Transaction.customer_email.is_not(None))
        .order_by(Transaction.id)
        .limit(1)
    )
    started = lifecycle.start_recovery(
        db.session, transaction, Actor.system(transaction.organization_id, "test"), now=utcnow()
    )
    db.session.flush()
    # Its first email's worker died while the mail server had it.
    message = Message(
        organization_id=transaction.organization_id,
        attempt_id=started.attempt.id,
        transaction_id=transaction.id,
        step=0,
        channel="email",
        recipient=transaction.customer_email,
        subject="Your payment",
        body_text="Pay here",
        status=MessageStatus.UNKNOWN,
        tries=1,
        handed_off_at=utcnow(),
    )
    db.session.add(message)
    db.session.flush()
    message.error = repair.UNKNOWN_EMAIL.format(id=message.id)
    db.session.commit()
    url = f"/transactions/{transaction.id}"

    for name, viewport in (("desktop", DESKTOP), ("phone", PHONE)):
        tab = open_tab(viewport=viewport)
        page = tab.page
        sign_in(tab, "operator@demo.example")
        page.goto(url)
        entry = page.locator(".timeline-message", has_text="Email: unknown — check the provider")
        expect(entry).to_be_visible()
        expect(entry).to_contain_text(f"recovery-message-{message.id}@")
        expect(entry.get_by_role("button", name="Send again")).to_be_visible()
        entry.scroll_into_view_if_needed()
        tab.shot(f"unknown-message-{name}")
        tab.assert_fits_width()

        page.goto("/account/sessions")
        expect(page.get_by_role("heading", name="Your sessions")).to_be_visible()
        expect(page.locator("table.sessions tbody tr")).to_have_count(1 if name == "desktop" else 2)
        tab.shot(f"sessions-{name}")
        tab.assert_fits_width()
        tab.assert_clean()

    dialogs: list[str] = []

    def accept(dialog: Any) -> None:
        dialogs.append(dialog.message)
        dialog.accept()

    page.goto(url)
    page.on("dialog", accept)
    page.locator(".timeline-message").get_by_role("button", name="Send again").click()
    expect(page.get_by_text("Sending the message again")).to_be_visible()
    assert dialogs == ["Send this message again? If the first one did go out, the customer gets it twice."]

    # Signing out everywhere from the phone ends the desktop's session too.
    page.goto("/account/sessions")
    page.get_by_role("button", name="Sign out everywhere").click()
    expect(page).to_have_url(re.compile(r"/login"))
    tab.assert_clean()
