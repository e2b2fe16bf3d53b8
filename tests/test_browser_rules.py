"""Rules and campaigns in headless Chromium (issue 18): create a rule with the form, move it to the
top, preview it, start a recovery that it decides, and read it on the timeline.

Every page is also looked at on a phone (375 px) and a desktop (1280 px): nothing scrolls
sideways, no console error. Screenshots go to BROWSER_SCREENSHOTS, else /tmp/shots_rules/.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from recovery import money
from recovery.audit import Actor
from recovery.models import Organization, RecoveryAttempt, Transaction, utcnow
from recovery.review import services as review
from tests.fixtures.browser import BROWSER, DESKTOP, Tab, live_app_config, sign_in

pytestmark = BROWSER

SHOTS = Path(os.environ.get("BROWSER_SCREENSHOTS") or "/tmp/shots_rules")
PHONE_375 = {"width": 375, "height": 812}
RULE = "Big orders: ask for a new card"


@pytest.fixture
def app_config(live_port: int, stripe_sandbox: Any) -> dict[str, Any]:
    return live_app_config(live_port, stripe_sandbox)


def _target(db: Any) -> Transaction:
    """A failed demo transaction with an email, no recovery, and a decline the built-in rules catch."""
    organization = db.session.scalar(sa.select(Organization))
    organization.quiet_hours = ""
    transaction = db.session.scalar(
        sa.select(Transaction)
        .where(
            Transaction.organization_id == organization.id,
            Transaction.status == "failed",
            Transaction.customer_email.is_not(None),
            Transaction.failure_code == "insufficient_funds",
            ~sa.exists().where(RecoveryAttempt.transaction_id == Transaction.id),
        )
        .order_by(Transaction.amount.desc())
        .limit(1)
    )
    assert transaction is not None
    # One more, held for review, so the queue has a row to look at.
    other = db.session.scalar(
        sa.select(Transaction)
        .where(Transaction.organization_id == organization.id, Transaction.status == "failed")
        .where(Transaction.id != transaction.id)
        .limit(1)
    )
    review.hold(
        db.session, other, Actor.system(organization.id), reason="Large amount: call first", now=utcnow()
    )
    db.session.commit()
    return transaction


def look(tab: Tab, name: str, part: str | None = None) -> None:
    """The page at phone and desktop width: fits, clean, a full-page screenshot of each.

    `part`: a selector whose element also gets a screenshot of its own at phone width
    (a full phone page is too tall to read).
    """
    SHOTS.mkdir(parents=True, exist_ok=True)
    for label, size in (("375", PHONE_375), ("1280", DESKTOP)):
        tab.page.set_viewport_size(size)
        tab.page.wait_for_timeout(100)
        tab.assert_fits_width()
        tab.page.screenshot(path=str(SHOTS / f"rules-{name}-{label}.png"), full_page=True)
        if part and label == "375":
            tab.page.locator(part).first.screenshot(path=str(SHOTS / f"rules-{name}-part-375.png"))
    tab.page.set_viewport_size(DESKTOP)
    tab.assert_clean()


def test_create_reorder_preview_start_and_read_the_rule_on_the_timeline(
    open_tab: Callable[..., Tab], demo: Any, db: Any
) -> None:
    from playwright.sync_api import expect

    transaction = _target(db)
    ref, currency = transaction.transaction_ref, transaction.currency
    at_least = money.format_major(transaction.amount, currency)
    tab = open_tab()
    page = tab.page
    sign_in(tab)

    # Why each payment failed, on the list, and the filter.
    page.get_by_label("Why it failed").select_option("retry_later")
    page.get_by_role("button", name="Apply").click()
    expect(page.locator("#results tbody tr").first).to_contain_text("Card may work again")
    look(tab, "transactions-filtered", "#results tbody tr")

    # Settings → Recovery rules, from the navigation.
    page.get_by_role("navigation", name="Main").get_by_role("link", name="Rules").click()
    expect(page.get_by_role("heading", name="Recovery rules")).to_be_visible()
    expect(page.locator("#rules-preview")).to_contain_text("Caught only by the default")
    look(tab, "list", ".preview-card")

    # A new rule from the form: an amount condition whose own inputs appear with its type.
    page.get_by_role("link", name="Add a rule").click()
    page.get_by_label("Name").fill(RULE)
    row = page.locator("[data-cond-row]").first
    expect(row.get_by_label("Currency")).to_be_hidden()
    row.get_by_label("Condition").select_option("amount")
    row.get_by_label("Currency").fill(currency.upper())
    row.get_by_label("At least").fill("abc")
    # The campaign is asked for when the rule starts one, the reason when it does not.
    page.get_by_label("Action", exact=True).select_option("hold_for_review")
    expect(page.get_by_label("Campaign")).to_be_hidden()
    expect(page.get_by_label("Reason shown on the transaction")).to_be_visible()
    page.get_by_label("Action", exact=True).select_option("start_campaign")
    expect(page.get_by_label("Reason shown on the transaction")).to_be_hidden()
    page.get_by_label("Campaign").select_option(label="New card needed: messages only")
    page.get_by_role("button", name="Save rule").click()
    # Bad input is answered next to its field; what was typed stays.
    expect(page.locator("#c0_min-error")).to_contain_text("is not a number")
    expect(page.get_by_label("Name")).to_have_value(RULE)
    # The browser logs the 422 answer as an error: the one expected here, and nothing else.
    assert len(tab.errors) == 1 and "422" in tab.errors[0], tab.errors
    tab.errors.clear()
    look(tab, "form-error")
    page.locator("[data-cond-row]").first.get_by_label("At least").fill(at_least)

    # Preview before saving: the unsaved rule, counted; nothing saved yet.
    page.get_by_role("button", name="Preview before saving").click()
    preview = page.locator("#preview")
    expect(preview).to_contain_text("not saved")
    expect(preview.locator(f'[data-preview-rule="{RULE}"]')).to_be_visible()
    look(tab, "form-preview", "[data-cond-row]")
    page.get_by_role("button", name="Save rule").click()
    expect(page.locator(".flash-success")).to_contain_text(f"Rule “{RULE}” saved.")

    # Reorder: up to the top, one POST per click.
    rows = page.locator("table.rules-list tbody tr")
    for _ in range(3):
        page.get_by_role("button", name=f"Move {RULE} up").click()
        expect(page.locator(".flash-success")).to_contain_text("moved up")
    expect(rows.first).to_contain_text(RULE)
    expect(page.get_by_role("button", name=f"Move {RULE} up")).to_have_count(0)
    # The preview panel counts the saved rule first.
    expect(page.locator(f'#rules-preview [data-preview-rule="{RULE}"]')).to_be_visible()
    look(tab, "list-reordered", "table.rules-list tbody tr")

    # Test a transaction: the rule and, for none above it, a reason.
    page.get_by_role("link", name="Test a transaction").click()
    page.get_by_label("Transaction reference").fill(ref)
    page.get_by_role("button", name="Test").click()
    expect(page.get_by_role("heading", level=2)).to_contain_text(RULE)
    look(tab, "test", "section[aria-labelledby=result-title]")

    # Start a recovery on the dashboard: the rule that would match, and what it would do.
    page.goto(f"/transactions/{transaction.id}")
    recovery = page.locator("#recovery")
    expect(recovery).to_contain_text(f"Rule “{RULE}” matched")
    expect(recovery).to_contain_text("New card needed: messages only")
    look(tab, "start", "#recovery")
    recovery.get_by_role("button", name="Start recovery").click()
    expect(page.locator(".flash-success")).to_contain_text("Recovery started")
    timeline = page.locator(".timeline")
    expect(timeline).to_contain_text(f"Rule “{RULE}” matched")
    expect(timeline).to_contain_text(
        "Campaign “New card needed: messages only”, version 1: an email and a text"
    )
    expect(recovery).to_contain_text("version 1, chosen by rule")
    look(tab, "timeline", ".timeline")

    # Campaigns and the review queue, from the navigation.
    nav = page.get_by_role("navigation", name="Main")
    nav.get_by_role("link", name="Campaigns").click()
    expect(page.get_by_role("heading", name="Campaigns")).to_be_visible()
    look(tab, "campaigns", "table.campaigns tbody tr")
    page.get_by_role("link", name="New campaign").click()
    look(tab, "campaign-form", ".step-row")
    page.get_by_role("navigation", name="Main").get_by_role("link", name="Review").click()
    expect(page.locator("table.review-queue")).to_contain_text("Large amount: call first")
    look(tab, "review", "table.review-queue tbody tr")
    assert re.search(r"/review/$", page.url)
