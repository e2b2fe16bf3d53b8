"""The import mapping in Chromium: a Stripe-export-shaped file, the proposed mapping, one
choice changed, the import, its warnings and skipped rows; screenshots at four widths."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from recovery.models import Transaction
from tests.fixtures.browser import BROWSER, Tab, live_app_config, sign_in
from tests.fixtures.csvdata import csv_text
from tests.imports.test_import_mapping import STRIPE_HEADER, stripe_row

pytestmark = BROWSER

SHOTS = Path("/tmp/shots_imports")
WIDTHS = (375, 768, 1280, 1920)


@pytest.fixture
def app_config(live_port: int, stripe_sandbox: Any) -> dict[str, Any]:
    return live_app_config(live_port, stripe_sandbox)


def stripe_file() -> bytes:
    header = [*STRIPE_HEADER, "Customer Phone"]
    records = [
        stripe_row("ch_3WebFailed1", "Failed", "50.00", **{"Customer Description": "Ana from the web shop"}),
        stripe_row("ch_3WebPaid", "Paid", "19.99"),
        # A UK drama-range number: no network routes it; the email still reaches Omar.
        stripe_row(
            "ch_3WebFailed2",
            "Failed",
            "1,234.50",
            "gbp",
            **{"Customer Email": "omar@example.com", "Customer Phone": "+44 7700 900123"},
        ),
        stripe_row("ch_3WebRefunded", "Refunded", "5.00"),
        stripe_row(
            "py_3WebFailed3", "Failed", "¥5000", "jpy", **{"Customer Email": "", "Card Name": "Kenji"}
        ),
    ]
    return csv_text(records, header).encode()


def widths(tab: Tab, name: str) -> None:
    for width in WIDTHS:
        tab.page.set_viewport_size({"width": width, "height": 900})
        tab.assert_fits_width()
        SHOTS.mkdir(parents=True, exist_ok=True)
        tab.page.screenshot(path=str(SHOTS / f"{name}-{width}.png"), full_page=True)
    tab.page.set_viewport_size({"width": 1280, "height": 800})


def test_a_stripe_export_is_mapped_changed_and_imported_with_its_warnings(
    open_tab: Callable[..., Tab], demo: Any, db: Any
) -> None:
    from playwright.sync_api import expect

    tab = open_tab()
    page = tab.page
    sign_in(tab)
    page.goto("/imports")
    expect(page.get_by_role("link", name="Download the template CSV")).to_be_visible()
    widths(tab, "imports-index")
    page.get_by_label("CSV file").set_input_files(
        {"name": "stripe-payments.csv", "mimeType": "text/csv", "buffer": stripe_file()}
    )
    page.get_by_role("button", name="Upload and match columns").click()

    expect(page.get_by_role("heading", name="Match the columns of stripe-payments.csv")).to_be_visible()
    preview = page.locator("#file-preview")
    expect(preview.locator("thead th")).to_have_count(len(STRIPE_HEADER) + 1)
    expect(preview.locator("tbody tr")).to_have_count(5)
    expect(preview.locator("thead th").first).to_contain_text("Transaction reference")  # id → reference
    # The proposal: Stripe's names recognised.
    expect(page.get_by_label("Transaction reference", exact=True)).to_have_value("id")
    expect(page.get_by_label("Amount", exact=True)).to_have_value("amount")
    expect(page.get_by_label("Payment status")).to_have_value("status")
    expect(page.get_by_label("Customer phone")).to_have_value("customer phone")
    expect(page.get_by_label("Failure code")).to_have_value("decline reason")
    expect(page.get_by_label("Failed at")).to_have_value("created date (utc)")
    expect(page.get_by_label("Customer name")).to_have_value("card name")
    widths(tab, "imports-mapping")

    # The merchant prefers the customer's description to the name on the card.
    page.get_by_label("Customer name").select_option(label="Customer Description")
    page.get_by_role("button", name="Import 5 rows").click()

    expect(page.get_by_role("heading", name="Import of stripe-payments.csv")).to_be_visible()
    expect(page.locator("#import-progress .status")).to_have_text("done")
    expect(page.locator("#imported-count")).to_have_text("3")
    expect(page.locator("#skipped-count")).to_have_text("2")
    warning = page.locator("table.warnings tbody tr")
    expect(warning).to_have_count(1)
    expect(warning).to_contain_text("4")  # row 4 of the file
    expect(warning).to_contain_text("ch_3WebFailed2")
    expect(warning).to_contain_text("'+44 7700 900123' is not a valid phone number. Imported without it.")
    widths(tab, "imports-result")
    tab.assert_clean()

    db.session.expire_all()
    names = {
        r: n for r, n in db.session.execute(select(Transaction.transaction_ref, Transaction.customer_name))
    }
    assert names["ch_3WebFailed1"] == "Ana from the web shop"
    omar = db.session.scalar(select(Transaction).where(Transaction.transaction_ref == "ch_3WebFailed2"))
    assert (omar.amount, omar.currency, omar.customer_phone) == (123450, "gbp", None)

    # The next upload of that shape opens with the changed choice.
    page.goto("/imports")
    page.get_by_label("CSV file").set_input_files(
        {"name": "stripe-payments-2.csv", "mimeType": "text/csv", "buffer": stripe_file()}
    )
    page.get_by_role("button", name="Upload and match columns").click()
    expect(page.locator("#mapping-source")).to_contain_text("the matching you confirmed last time")
    expect(page.get_by_label("Customer name")).to_have_value("customer description")

    # A bad choice is answered on the page, and the upload is kept for the corrected one.
    page.get_by_label("Currency", exact=True).select_option(label="— not in the file —")
    page.get_by_role("button", name="Import 5 rows").click()
    expect(page.locator("#mapping-errors")).to_contain_text("your file is kept")
    expect(page.locator("#currency-error")).to_have_text("Choose the column that holds this; it is required.")
    widths(tab, "imports-mapping-error")
    # The browser logs the 422 answer as an error: the one expected here, and nothing else.
    assert len(tab.errors) == 1 and "422" in tab.errors[0] and tab.errors[0].endswith("/mapping)")
    tab.errors.clear()
    page.get_by_label("Currency", exact=True).select_option(label="Currency")
    page.get_by_role("button", name="Import 5 rows").click()
    expect(page.locator("#import-progress .status")).to_have_text("done")
    expect(page.locator("#imported-count")).to_have_text("0")  # the same payments: duplicates
    tab.assert_clean()
