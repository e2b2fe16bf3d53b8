"""In Chromium: cancel a recovery, close and reopen a transaction, and read the KPIs, on the demo's rows."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from recovery.models import Transaction, TransactionStatus
from tests.fixtures.browser import BROWSER, Tab, live_app_config, sign_in

pytestmark = BROWSER

SHOTS = Path("/tmp/shots_state")
WIDTHS = (375, 768, 1280, 1920)


@pytest.fixture
def app_config(live_port: int, stripe_sandbox: Any) -> dict[str, Any]:
    return live_app_config(live_port, stripe_sandbox)


def shots(tab: Tab, name: str) -> None:
    """The page at each width, whole; each fits its width and stayed clean."""
    SHOTS.mkdir(parents=True, exist_ok=True)
    for width in WIDTHS:
        tab.page.set_viewport_size({"width": width, "height": 900})
        tab.assert_fits_width()
        tab.page.screenshot(path=str(SHOTS / f"{name}-{width}.png"), full_page=True)
    tab.page.set_viewport_size({"width": 1280, "height": 900})
    tab.assert_clean()


def demo_ref(db: Any, demo: Any, status: str) -> str:
    ref = db.session.scalar(
        select(Transaction.transaction_ref)
        .where(Transaction.organization_id == demo.organization.id, Transaction.status == status)
        .order_by(Transaction.transaction_ref)
        .limit(1)
    )
    assert ref is not None, status
    return ref


def accept_dialogs(tab: Tab) -> list[str]:
    seen: list[str] = []

    def accept(dialog: Any) -> None:
        seen.append(dialog.message)
        dialog.accept()

    tab.page.on("dialog", accept)
    return seen


def test_cancel_a_recovery_then_close_and_reopen_the_transaction(
    open_tab: Callable[..., Tab], demo: Any, db: Any
) -> None:
    from playwright.sync_api import expect

    ref = demo_ref(db, demo, TransactionStatus.RECOVERING)
    tab = open_tab()
    page = tab.page
    dialogs = accept_dialogs(tab)
    sign_in(tab, "operator@demo.example")
    page.goto(f"/transactions/by-ref/{ref}")
    recovery = page.locator("#recovery")
    heading = page.get_by_role("heading", level=1)
    expect(heading).to_contain_text("recovering")
    expect(recovery).to_contain_text("A recovery is running")
    shots(tab, "detail-recovering")

    # Cancel the recovery: the attempt ends, the transaction stays open and says so.
    recovery.get_by_role("button", name="Cancel recovery").click()
    expect(page.locator(".flash-success")).to_contain_text(
        "Recovery cancelled: no more messages will be sent."
    )
    note = page.locator("#transaction-state")
    expect(note).to_contain_text(re.compile(r"Recovery cancelled on \d+ \w+ \d{4}, \d\d:\d\d UTC"))
    expect(note).to_contain_text("by operator@demo.example; the customer's link no longer works.")
    expect(note).to_contain_text("The transaction is still open: you can start a new recovery.")
    expect(heading).to_contain_text("failed")
    expect(recovery.get_by_role("button", name="Start recovery")).to_be_visible()
    expect(recovery.get_by_role("button", name="Close transaction")).to_be_visible()
    expect(page.locator(".timeline")).to_contain_text("Recovery cancelled")
    assert dialogs and dialogs[-1].startswith("Cancel this recovery?")
    shots(tab, "detail-recovery-cancelled")

    # Close it, with a reason: nothing is offered but Reopen.
    recovery.get_by_label("Reason for closing (optional)").fill("Paid by bank transfer")
    recovery.get_by_role("button", name="Close transaction").click()
    expect(page.locator(".flash-success")).to_contain_text(f"Transaction {ref} closed: nothing will be sent.")
    expect(note).to_contain_text(
        re.compile(r"Closed by operator@demo\.example on .+ UTC: nothing will be sent")
    )
    expect(note).to_contain_text("(Paid by bank transfer)")
    expect(heading).to_contain_text("closed")
    expect(recovery.get_by_role("button", name="Reopen transaction")).to_be_visible()
    for offer in ("Start recovery", "Close transaction", "Create checkout session", "Create payment link"):
        expect(page.get_by_role("button", name=offer)).to_have_count(0)
    expect(page.locator(".timeline")).to_contain_text("Closed — nothing will be sent: Paid by bank transfer")
    assert dialogs[-1].startswith("Close this transaction?")
    shots(tab, "detail-closed")

    # The list says the same word.
    page.goto(f"/transactions?q={ref}")
    expect(page.locator("#results tbody .status")).to_have_text("closed")

    # Reopen: open again, a recovery can start.
    page.goto(f"/transactions/by-ref/{ref}")
    recovery.get_by_role("button", name="Reopen transaction").click()
    expect(page.locator(".flash-success")).to_contain_text(f"Transaction {ref} reopened")
    expect(heading).to_contain_text("failed")
    expect(recovery.get_by_role("button", name="Start recovery")).to_be_visible()
    expect(page.locator(".timeline")).to_contain_text("Reopened")
    shots(tab, "detail-reopened")


def test_a_recovered_and_an_unrecovered_demo_row_tell_their_story(
    open_tab: Callable[..., Tab], demo: Any, db: Any
) -> None:
    from playwright.sync_api import expect

    tab = open_tab()
    page = tab.page
    sign_in(tab, "viewer@demo.example")
    for status, last in (
        (TransactionStatus.RECOVERED, "Recovered"),
        (TransactionStatus.UNRECOVERED, "Recovery ran out"),
    ):
        page.goto(f"/transactions/by-ref/{demo_ref(db, demo, status)}")
        expect(page.get_by_role("heading", level=1)).to_contain_text(status)
        timeline = page.locator(".timeline")
        expect(timeline).to_contain_text("Recovery started")
        expect(timeline).to_contain_text("Email handed to the provider")
        expect(timeline.locator("li").last).to_contain_text(last)
        shots(tab, f"detail-{status}")


def test_the_dashboard_kpis_say_what_they_count_and_when(open_tab: Callable[..., Tab], demo: Any) -> None:
    from playwright.sync_api import expect

    tab = open_tab()
    page = tab.page
    sign_in(tab, "viewer@demo.example")
    kpis = page.locator("#kpis")
    expect(kpis.locator(".kpi")).to_have_count(4)
    expect(kpis).to_contain_text("Recovery rate, last 30 days")
    expect(kpis).to_contain_text(
        re.compile(r"\d+ recovered of \d+ recoveries that ended \(\d+ ran out, \d+ cancelled\)")
    )
    expect(kpis).to_contain_text(re.compile(r"\d+ still in progress, not counted"))
    expect(kpis.locator(".kpi-as-of")).to_contain_text(re.compile(r"As of \d\d:\d\d UTC"))
    shots(tab, "dashboard-kpis")
    for width in WIDTHS:  # the tiles alone, legible at each width
        page.set_viewport_size({"width": width, "height": 900})
        kpis.screenshot(path=str(SHOTS / f"kpi-tiles-{width}.png"))
