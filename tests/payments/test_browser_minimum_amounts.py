"""A transaction Stripe cannot charge: its page says why at every width, with no button that would fail."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from recovery.models import Organization, Transaction
from tests.fixtures.browser import BROWSER, Tab, live_app_config, sign_in

pytestmark = BROWSER

SHOTS = Path("/tmp/shots_stripe")
WIDTHS = (375, 768, 1280, 1920)


@pytest.fixture
def app_config(live_port: int, stripe_sandbox: Any) -> dict[str, Any]:
    return live_app_config(live_port, stripe_sandbox)


def test_a_transaction_under_stripes_minimum_says_why_it_cannot_be_collected(
    open_tab: Callable[..., Tab], demo: Any, db: Any
) -> None:
    from playwright.sync_api import expect

    org = db.session.query(Organization).one()
    small = Transaction(
        organization_id=org.id,
        transaction_ref="DEMO-DIME",
        amount=10,
        currency="usd",
        customer_name="Ada Lovelace",
        customer_email="ada@example.com",
        failure_code="card_declined",
    )
    db.session.add(small)
    db.session.commit()
    tab = open_tab()
    sign_in(tab)

    for width in WIDTHS:
        tab.page.set_viewport_size({"width": width, "height": 900})
        tab.page.goto(f"/transactions/{small.id}")
        note = tab.page.locator("#charge-problem")
        expect(note).to_have_text(
            "Stripe can't charge less than $0.50; this transaction is $0.10. "
            "It can't be collected through Stripe; the transaction stays on record."
        )
        expect(tab.page.get_by_role("button", name="Create checkout session")).to_have_count(0)
        expect(tab.page.get_by_role("button", name="Start recovery")).to_have_count(0)
        note.scroll_into_view_if_needed()
        tab.page.screenshot(path=str(SHOTS / f"transaction-under-minimum-{width}.png"), full_page=True)
        tab.assert_fits_width()
    tab.assert_clean()
