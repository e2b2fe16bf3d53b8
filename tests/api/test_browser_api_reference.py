"""The API reference page (/api): found from the nav and the tokens page, readable at every width.

Screenshots go to /tmp/shots_openapi/ (full pages at each width), and to
BROWSER_SCREENSHOTS when set.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import expect

from tests.fixtures.browser import BROWSER, DESKTOP, Tab, live_app_config, sign_in

pytestmark = BROWSER

SHOTS = Path("/tmp/shots_openapi")
WIDTHS = (375, 768, 1280, 1920)


@pytest.fixture
def app_config(live_port: int, stripe_sandbox: Any) -> dict[str, Any]:
    return live_app_config(live_port, stripe_sandbox)


def test_the_reference_page_from_the_nav_at_four_widths(demo: Any, open_tab: Any) -> None:
    tab: Tab = open_tab(DESKTOP)
    page = tab.page
    sign_in(tab)
    page.get_by_role("navigation", name="Main").get_by_role("link", name="API docs").click()
    expect(page).to_have_url(re.compile(r"/api$"))
    expect(page.get_by_role("heading", name="API reference", level=1)).to_be_visible()

    # Every endpoint of the document is on the page, with its method, path and summary.
    document = json.loads(page.request.get("/v1/openapi.json").text())
    for path, methods in document["paths"].items():
        for method, entry in methods.items():
            card = page.locator(f"section#{entry['operationId']}")
            expect(card.locator("h3")).to_contain_text(method.upper())
            expect(card.locator("h3")).to_contain_text(path)
            expect(card).to_contain_text(entry["summary"])
    create = page.locator("section#api_create_transaction")
    expect(create).to_contain_text("API token, role operator or above")
    expect(create.get_by_role("table", name="Body of POST /v1/transactions")).to_contain_text(
        "amount_decimal"
    )
    expect(create.get_by_role("table", name="Errors of POST /v1/transactions")).to_contain_text(
        "validation_error"
    )
    expect(create.locator("pre.api-example").first).to_contain_text('"transaction_ref": "TXN-001"')
    expect(page.locator("section#receive_stripe_webhook")).to_contain_text("Signed by Stripe; no API token")

    # The table of contents jumps to an endpoint; a type links to its object.
    toc_link = page.locator("nav.api-toc").get_by_role("link").filter(has_text="/v1/recoveries/{attempt_id}")
    expect(toc_link.first).to_contain_text("GET")
    toc_link.first.click()
    expect(page).to_have_url(re.compile(r"#recoveries_api_get$"))
    create.get_by_role("link", name="TransactionObject").first.click()
    expect(page).to_have_url(re.compile(r"#object-TransactionObject$"))
    expect(page.locator("#object-TransactionObject")).to_contain_text("recovery_attempts")

    for width in WIDTHS:
        page.set_viewport_size({"width": width, "height": 900})
        page.goto("/api")  # laid out afresh at this width
        tab.assert_fits_width()
        SHOTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(SHOTS / f"api-reference-{width}.png"))
        page.locator("section#api_create_transaction").scroll_into_view_if_needed()
        page.screenshot(path=str(SHOTS / f"api-reference-{width}-endpoint.png"))
        page.locator("section#api_create_transaction table.api-errors").scroll_into_view_if_needed()
        page.screenshot(path=str(SHOTS / f"api-reference-{width}-errors.png"))
        tab.shot(f"api-reference-{width}")
    tab.assert_clean()


def test_the_tokens_page_links_to_the_reference_and_the_json(demo: Any, open_tab: Any) -> None:
    tab: Tab = open_tab(DESKTOP)
    page = tab.page
    sign_in(tab, "admin@demo.example")
    page.goto("/settings/api-tokens")
    page.locator("main").get_by_role("link", name="API reference").click()
    expect(page.get_by_role("heading", name="API reference", level=1)).to_be_visible()
    link = page.get_by_role("link", name="/v1/openapi.json", exact=True)
    href = link.get_attribute("href")
    assert href == "/v1/openapi.json"
    tab.assert_clean()
    # Public: a fresh context with no session cookie reads it too.
    answer = open_tab(DESKTOP).page.request.get(href)
    assert answer.status == 200 and answer.json()["openapi"] == "3.1.0"
    tab.assert_clean()


def test_a_viewer_reads_the_reference_without_the_admin_links(demo: Any, open_tab: Any) -> None:
    tab: Tab = open_tab(DESKTOP)
    page = tab.page
    sign_in(tab, "viewer@demo.example")
    nav = page.get_by_role("navigation", name="Main")
    expect(nav.get_by_role("link", name="API docs")).to_have_count(0)
    page.goto("/api")
    expect(page.get_by_role("heading", name="API reference", level=1)).to_be_visible()
    expect(page.locator("main")).to_contain_text("Owners and admins create tokens.")
    expect(page.locator("main").get_by_role("link", name="API tokens")).to_have_count(0)
    tab.assert_clean()
