"""Every page at four widths: it fits, it is clean, and the shared parts look the same everywhere.

Signed in as the demo owner, each page in PAGES is opened at 375, 768, 1280
and 1920 px: no sideways scrolling, no console error or CSP violation, the
top bar the same height on every staff page at a given width (it wrapped
differently page to page), disabled buttons visibly disabled, a flash
message in the page's flow instead of over the next section. Screenshots go
to BROWSER_SCREENSHOTS, else /tmp/shots_looks/.

To add a page, append a row to PAGES: its name, its path (with `{placeholders}`
filled from `page_ids`), and whether it is a staff page (signed in, with the top bar).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from recovery.models import (
    BulkStart,
    CsvImport,
    Message,
    RecoveryAttempt,
    Transaction,
    WebhookEvent,
    utcnow,
)
from tests.fixtures.browser import BROWSER, Tab, live_app_config, sign_in

pytestmark = BROWSER

# name, path, staff page (signed in, with the top bar). Placeholders come from `page_ids`.
PAGES: list[tuple[str, str, bool]] = [
    ("transactions", "/transactions", True),
    ("transaction", "/transactions/{transaction}", True),
    ("transaction-new", "/transactions/new", True),
    ("transaction-edit", "/transactions/{transaction}/edit", True),
    ("recoveries", "/recoveries", True),
    ("bulk", "/recoveries/bulk/{bulk}", True),
    ("imports", "/imports", True),
    ("import", "/imports/{csv_import}", True),
    ("outbox", "/outbox", True),
    ("message", "/outbox/{message}", True),
    ("webhooks", "/webhooks", True),
    ("webhook", "/webhooks/{webhook}", True),
    ("users", "/users", True),
    ("tokens", "/settings/api-tokens", True),
    ("api-reference", "/api", True),
    ("settings", "/settings/recovery", True),
    ("sessions", "/account/sessions", True),
    ("account", "/account", True),
    ("audit", "/audit", True),
    ("staff-outbox", "/outbox/staff", True),
    ("forgot-password", "/forgot-password", False),
    ("pay", "/pay/{token}", False),
    ("pay-success", "/pay/success?session_id=cs_test_unknown&t={token}", False),
    ("pay-cancel", "/pay/cancel?t={token}", False),
    ("pay-closed", "/pay/{closed_token}", False),
    ("unsubscribe", "/pay/{token}/unsubscribe", False),
]
WIDTHS = (375, 768, 1280, 1920)
SHOTS = Path(os.environ.get("BROWSER_SCREENSHOTS") or "/tmp/shots_looks")


@pytest.fixture
def app_config(live_port: int, stripe_sandbox: Any) -> dict[str, Any]:
    return live_app_config(live_port, stripe_sandbox)


@pytest.fixture
def page_ids(db: Any, demo: Any) -> dict[str, Any]:
    """One of every row a page needs, in the demo organization."""
    org = demo.organization
    session = db.session
    transaction = (
        session.query(Transaction).filter_by(organization_id=org.id).order_by(Transaction.id).first()
    )
    other = (
        session.query(Transaction)
        .filter(Transaction.organization_id == org.id, Transaction.id != transaction.id)
        .order_by(Transaction.id)
        .first()
    )
    now = utcnow()

    def attempt(tx: Transaction, token: str, status: str) -> RecoveryAttempt:
        row = RecoveryAttempt(
            organization_id=org.id,
            transaction_id=tx.id,
            channel="email",
            token=token,
            status=status,
            expires_at=now + timedelta(days=7),
            max_retries=3,
            messages_sent=1,
            next_send_at=now + timedelta(days=1),
        )
        session.add(row)
        return row

    open_attempt = attempt(transaction, "tok_pages_" + "a" * 30, "notified")
    attempt(other, "tok_pages_" + "b" * 30, "cancelled")
    transaction.status = "recovering"
    session.flush()
    message = Message(
        organization_id=org.id,
        attempt_id=open_attempt.id,
        transaction_id=transaction.id,
        channel="email",
        recipient=transaction.customer_email or "customer@example.com",
        subject="Demo Coffee Roasters: your payment did not go through",
        body_text="Hello,\nyour payment did not go through.\n",
        body_html="<p>Hello,</p><p>your payment did not go through.</p>",
        status="sent",
        provider="outbox",
        sent_at=now,
    )
    webhook = WebhookEvent(
        stripe_event_id="evt_pages_1",
        organization_id=org.id,
        type="payment_intent.payment_failed",
        object_id="pi_pages_1",
        payload={"id": "evt_pages_1", "type": "payment_intent.payment_failed", "data": {"object": {}}},
        status="processed",
        stripe_created_at=now,
        processed_at=now,
    )
    bulk = BulkStart(
        organization_id=org.id,
        actor_label="owner@demo.example",
        transaction_ids=[transaction.id],
        channel="any",
        filters={},
        status="done",
        total=1,
        processed=1,
        started=1,
        reasons={},
        refusals=[],
        finished_at=now,
    )
    csv_import = CsvImport(
        organization_id=org.id,
        filename="failed-payments.csv",
        status="done",
        total_rows=3,
        processed_rows=3,
        imported_rows=2,
        invalid_rows=1,
        problems=[{"row": 3, "reference": "X-3", "message": "Amount is required."}],
        finished_at=now,
    )
    session.add_all([message, webhook, bulk, csv_import])
    session.commit()
    return {
        "transaction": transaction.id,
        "token": open_attempt.token,
        "closed_token": "tok_pages_" + "b" * 30,
        "message": message.id,
        "webhook": webhook.id,
        "bulk": bulk.id,
        "csv_import": csv_import.id,
    }


def _topbar_layout(tab: Tab) -> str | None:
    """The top bar's height and where each of its links sits: equal on every page means one layout."""
    return tab.page.evaluate(
        """(() => {
          const bar = document.querySelector('.topbar');
          if (!bar) return null;
          const box = el => {
            const r = el.getBoundingClientRect();
            return [Math.round(r.left), Math.round(r.top), Math.round(r.width)];
          };
          const links = [...bar.querySelectorAll('a, button')].map(box);
          return JSON.stringify([Math.round(bar.getBoundingClientRect().height), links]);
        })()"""
    )


def test_every_page_at_every_width(open_tab: Callable[..., Tab], page_ids: dict[str, Any]) -> None:
    """Each page fits, is clean, and has the same top bar as every other staff page at that width."""
    SHOTS.mkdir(parents=True, exist_ok=True)
    tab = open_tab()
    sign_in(tab)
    layouts: dict[int, dict[str, str | None]] = {width: {} for width in WIDTHS}
    problems = []
    answered: set[tuple[int, str]] = set()
    for name, path, staff in PAGES:
        url = path.format(**page_ids)
        for width in WIDTHS:
            tab.page.set_viewport_size({"width": width, "height": 900})
            response = tab.page.goto(url)
            assert response is not None and response.status < 500, (name, response and response.status)
            if response.status >= 400:  # on purpose (a closed link answers 410): Chromium logs it
                answered.add((response.status, tab.page.url))
            tab.page.wait_for_load_state("networkidle")
            tab.page.screenshot(path=str(SHOTS / f"{name}-{width}.png"), full_page=True)
            try:  # every page at every width, then all that went wrong at once
                tab.assert_fits_width()
            except AssertionError as error:
                problems.append(f"{name} at {width} px: {error}")
            if staff:
                layouts[width][name] = _topbar_layout(tab)
    for width, by_page in layouts.items():
        if None in by_page.values() or len(set(by_page.values())) != 1:
            problems.append(f"the top bar differs between pages at {width} px: {by_page}")
    assert problems == [], "\n".join(problems)
    tab.errors[:] = [
        error
        for error in tab.errors
        if not any(f"status of {status} " in error and error.endswith(f"({url})") for status, url in answered)
    ]
    tab.assert_clean()


@pytest.mark.parametrize("width", [375, 768])
def test_the_menu_holds_every_link_and_the_account(
    open_tab: Callable[..., Tab], demo: Any, width: int
) -> None:
    """Below 1100 px the links and the account fold into the menu, and open from it."""
    from playwright.sync_api import expect

    tab = open_tab({"width": width, "height": 900})
    sign_in(tab)
    nav = tab.page.locator("#main-nav")
    expect(nav).to_be_hidden()
    expect(tab.page.get_by_role("button", name="Sign out")).to_be_hidden()
    tab.page.get_by_role("button", name="Menu").click()
    expect(nav.get_by_role("link", name="Recovery settings")).to_be_visible()
    expect(tab.page.get_by_role("link", name="owner@demo.example")).to_be_visible()
    expect(tab.page.get_by_role("button", name="Sign out")).to_be_visible()
    tab.page.screenshot(path=str(SHOTS / f"menu-open-{width}.png"))
    tab.assert_fits_width()
    tab.assert_clean()


def test_login_page_at_every_width(open_tab: Callable[..., Tab], page_ids: dict[str, Any]) -> None:
    tab = open_tab()
    for width in WIDTHS:
        tab.page.set_viewport_size({"width": width, "height": 900})
        tab.page.goto("/login")
        tab.page.screenshot(path=str(SHOTS / f"login-{width}.png"), full_page=True)
        tab.assert_fits_width()
    tab.assert_clean()


@pytest.mark.parametrize("width", WIDTHS)
def test_a_disabled_button_looks_disabled(open_tab: Callable[..., Tab], demo: Any, width: int) -> None:
    """The bulk bar's Start button is disabled until a row is ticked, and it shows."""
    from playwright.sync_api import expect

    tab = open_tab({"width": width, "height": 900})
    sign_in(tab)
    button = tab.page.locator("#bulk-form button[type=submit]")
    expect(button).to_be_disabled()
    style = (
        "el => { const s = getComputedStyle(el); return [s.opacity, s.backgroundColor, s.color, s.cursor]; }"
    )
    disabled = button.evaluate(style)
    tab.page.locator("#results tbody input[name=ids]").first.check()
    expect(button).to_be_enabled()
    enabled = button.evaluate(style)
    assert disabled[:3] != enabled[:3], (disabled, enabled)
    assert disabled[3] == "not-allowed"
    tab.assert_clean()


@pytest.mark.parametrize("width", WIDTHS)
def test_a_flash_stays_out_of_the_next_section(
    open_tab: Callable[..., Tab], page_ids: dict[str, Any], width: int
) -> None:
    """After saving the settings, the flash sits above the form, scrolled or not, never on top of it."""
    from playwright.sync_api import expect

    tab = open_tab({"width": width, "height": 700})
    sign_in(tab)
    tab.page.goto("/settings/recovery")
    tab.page.get_by_role("button", name="Save settings").click()
    expect(tab.page.locator(".flash").first).to_be_visible()
    tab.page.screenshot(path=str(SHOTS / f"flash-{width}.png"))
    overlaps = """() => {
      const flash = document.querySelector('.flashes').getBoundingClientRect();
      const after = [...document.querySelectorAll('main > :not(.flashes), main > :not(.flashes) *')];
      return after.filter(el => {
        const box = el.getBoundingClientRect();
        return box.width && box.height && box.top < flash.bottom && box.bottom > flash.top
          && box.left < flash.right && box.right > flash.left;
      }).map(el => el.tagName + '.' + el.className);
    }"""
    for scroll in (0, 250, 600):
        tab.page.evaluate(f"window.scrollTo(0, {scroll})")
        assert tab.page.evaluate(overlaps) == [], scroll
    tab.assert_clean()


def test_settings_checkboxes_have_no_bullets(open_tab: Callable[..., Tab], demo: Any) -> None:
    tab = open_tab()
    sign_in(tab)
    tab.page.goto("/settings/recovery")
    markers = tab.page.evaluate(
        "[...document.querySelectorAll('main li')].filter(li => li.querySelector('input[type=checkbox]'))"
        ".map(li => getComputedStyle(li).listStyleType)"
    )
    assert markers and set(markers) == {"none"}, markers
