"""Finding things in a browser (issue 16, #6-#9): search by a fragment, reversed dates, amount
sort without a currency, the exact "select all" count, and the CSV export of what is shown.

Screenshots of the list with these controls at four widths go to /tmp/shots_finding/.
"""

from __future__ import annotations

import csv
import io
import re
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from playwright.sync_api import expect

from recovery.models import Transaction
from tests.fixtures.browser import BROWSER, live_app_config, sign_in

pytestmark = BROWSER

SHOTS = Path("/tmp/shots_finding")
WIDTHS = (375, 768, 1280, 1920)


@pytest.fixture
def app_config(live_port: int, stripe_sandbox: Any) -> dict[str, Any]:
    return live_app_config(live_port, stripe_sandbox)


def shoot(tab: Any, name: str, focus: str) -> None:
    """The page at each width, scrolled so that `focus` (what the step is about) is in view."""
    for width in WIDTHS:
        tab.page.set_viewport_size({"width": width, "height": 900})
        tab.assert_fits_width()
        tab.page.locator(focus).first.scroll_into_view_if_needed()
        SHOTS.mkdir(parents=True, exist_ok=True)
        tab.page.screenshot(path=str(SHOTS / f"{name}-{width}.png"))
    tab.page.set_viewport_size({"width": 1280, "height": 800})


def listed_refs(page: Any) -> list[str]:
    return page.locator('#results td[data-label="Reference"] a').all_inner_texts()


def test_search_dates_sort_and_export(open_tab: Any, demo: Any, db: Any) -> None:
    tab = open_tab()
    sign_in(tab)
    page = tab.page

    # A fragment of a reference, in the wrong case, as merchants paste it.
    page.get_by_label("Search").fill("dEmO-001")
    page.get_by_role("button", name="Apply").click()
    expect(page).to_have_url(re.compile(r"q=dEmO-001"))
    refs = listed_refs(page)
    assert refs and all(ref.startswith("DEMO-001") for ref in refs), refs
    assert "DEMO-0012" in refs
    shoot(tab, "search", "#results")

    # The export link carries the filter; the file holds exactly the rows listed.
    with page.expect_download() as download_info:
        page.get_by_role("link", name="Export CSV").click()
    download = download_info.value
    assert re.fullmatch(r"transactions-\d{4}-\d{2}-\d{2}\.csv", download.suggested_filename)
    text = Path(download.path()).read_text(encoding="utf-8-sig")
    rows = list(csv.DictReader(io.StringIO(text, newline="")))
    assert sorted(r["transaction_ref"] for r in rows) == sorted(refs)
    assert all(r["failed_at_utc"].endswith("Z") for r in rows)

    # Dates the wrong way round: said by the fields, not an empty list.
    page.get_by_label("Search").fill("")
    page.get_by_label("Failed from").fill("2025-02-01")
    page.get_by_label("Failed to").fill("2025-01-01")
    page.get_by_role("button", name="Apply").click()
    expect(page.get_by_role("alert")).to_contain_text("'To' (1 Jan 2025) is before 'From' (1 Feb 2025)")
    expect(page.get_by_label("Failed to")).to_have_attribute("aria-invalid", "true")
    expect(page.get_by_role("heading", name="'To' is before 'From'")).to_be_visible()
    shoot(tab, "reversed-dates", "#results")
    page.get_by_role("link", name=re.compile(r"^Show 1 Jan 2025 to 1 Feb 2025 instead")).click()
    expect(page.get_by_label("Failed from")).to_have_value("2025-01-01")
    expect(page.get_by_role("alert")).to_have_count(0)

    # Sort by amount across currencies: refused, the currency picker marked.
    page.goto("/transactions")
    page.get_by_label("Sort by").select_option("amount")
    page.get_by_role("button", name="Apply").click()
    expect(page.get_by_role("alert")).to_contain_text("Choose a currency to sort by amount")
    expect(page.get_by_label("Currency")).to_have_attribute("aria-invalid", "true")
    shoot(tab, "amount-needs-currency", "#filter-errors")
    page.get_by_label("Currency").fill("GBP")
    page.get_by_role("button", name="Apply").click()
    expect(page.get_by_role("alert")).to_have_count(0)
    amounts = page.locator('#results td[data-label="Amount"]').all_inner_texts()
    assert amounts and all("£" in a for a in amounts), amounts
    tab.assert_clean()


def test_select_all_names_the_exact_count_before_starting(open_tab: Any, demo: Any, db: Any) -> None:
    organization_id = db.session.scalar(sa.select(Transaction.organization_id).limit(1))
    db.session.execute(
        sa.insert(Transaction),
        [
            {
                "organization_id": organization_id,
                "transaction_ref": f"MANY-{i:05}",
                "amount": 1000 + i,
                "currency": "usd",
                "source": "csv",
                "meta": {},
            }
            for i in range(1100)
        ],
    )
    db.session.commit()
    total = db.session.scalar(
        sa.select(sa.func.count())
        .select_from(Transaction)
        .where(Transaction.organization_id == organization_id)
    )
    tab = open_tab()
    sign_in(tab)
    page = tab.page
    expect(page.locator(".results-head .count")).to_contain_text("1,000+")

    page.get_by_label("Select all on this page").check()
    choice = page.get_by_label(f"Select all {total:,} matching this filter")
    expect(choice).to_be_visible()
    choice.check()
    button = page.locator("#bulk-form button[type=submit]")
    expect(button).to_have_text(f"Start recovery for all {total:,} matching")
    shoot(tab, "select-all-exact", "#bulk-form")
    messages: list[str] = []

    def dismiss(dialog: Any) -> None:
        messages.append(dialog.message)
        dialog.dismiss()

    page.once("dialog", dismiss)
    button.click()
    assert messages and f"all {total:,} transactions" in messages[0], messages
    tab.assert_clean()
