"""People in a browser (issue 16, #12 #13): a forgotten password reset through the development
outbox, an invitation accepted, the account page, and the audit log filtered.

Screenshots of these pages at four widths go to /tmp/shots_people/.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import expect

from recovery.demo import DEMO_PASSWORD
from tests.fixtures.browser import BROWSER, live_app_config, sign_in

pytestmark = BROWSER

SHOTS = Path("/tmp/shots_people")
WIDTHS = (375, 768, 1280, 1920)
NEW_PASSWORD = "a brand new demo passphrase"


@pytest.fixture
def app_config(live_port: int, stripe_sandbox: Any) -> dict[str, Any]:
    return live_app_config(live_port, stripe_sandbox)


def shoot(tab: Any, name: str) -> None:
    # A click's navigation may have committed before the stylesheet applied: measure the laid-out page.
    tab.page.wait_for_load_state("load")
    for width in WIDTHS:
        tab.page.set_viewport_size({"width": width, "height": 900})
        tab.assert_fits_width()
        SHOTS.mkdir(parents=True, exist_ok=True)
        tab.page.screenshot(path=str(SHOTS / f"{name}-{width}.png"), full_page=True)
    tab.page.set_viewport_size({"width": 1280, "height": 800})


def expect_refused(tab: Any, status: int) -> None:
    """The one console line a deliberately refused form leaves (the page answered `status`): expected."""
    assert len(tab.errors) == 1 and f"status of {status}" in tab.errors[0], tab.errors
    tab.errors.clear()


def open_staff_email(page: Any, subject: str) -> None:
    """Open the newest staff email with `subject` in the development outbox, waiting for the worker."""
    for _ in range(50):
        page.goto("/outbox/staff")
        link = page.get_by_role("link", name=subject).first
        if link.count():
            link.click()
            page.wait_for_load_state("load")
            return
        page.wait_for_timeout(200)
    raise AssertionError(f"no staff email {subject!r} reached the outbox")


def test_forgotten_password_through_the_outbox(open_tab: Any, demo: Any, background_worker: Any) -> None:
    tab = open_tab()
    page = tab.page
    page.goto("/login")
    page.get_by_role("link", name="Forgot your password?").click()
    expect(page.get_by_role("heading", name="Forgot your password?")).to_be_visible()
    shoot(tab, "forgot")

    page.get_by_label("Email").fill("viewer@demo.example")
    page.get_by_role("button", name="Send the reset link").click()
    expect(page.get_by_role("heading", name="Check your email")).to_be_visible()
    shoot(tab, "reset-sent")
    page.get_by_role("link", name="development outbox").click()

    open_staff_email(page, "Reset your Recovery password")
    shoot(tab, "staff-email")
    page.locator("#staff-email-link").click()
    expect(page.get_by_role("heading", name="Choose a new password")).to_be_visible()
    page.get_by_label("New password", exact=True).fill(NEW_PASSWORD)
    page.get_by_label("New password again").fill("not the same")
    page.get_by_role("button", name="Set the password and sign in").click()
    expect(page.locator("#confirm-error")).to_contain_text("not the same")
    expect_refused(tab, 422)
    shoot(tab, "reset-form-error")
    page.get_by_label("New password", exact=True).fill(NEW_PASSWORD)
    page.get_by_label("New password again").fill(NEW_PASSWORD)
    page.get_by_role("button", name="Set the password and sign in").click()

    expect(page).to_have_url(re.compile(r"/transactions$"))
    expect(page.get_by_text("Your password is changed.")).to_be_visible()
    # The old password no longer opens the account.
    other = open_tab()
    other.page.goto("/login")
    other.page.get_by_label("Email").fill("viewer@demo.example")
    other.page.get_by_label("Password").fill(DEMO_PASSWORD)
    other.page.get_by_role("button", name="Sign in").click()
    expect(other.page.get_by_text("The email or password is not right.")).to_be_visible()
    expect_refused(other, 401)
    tab.assert_clean()


def test_invite_accept_account_and_audit_log(open_tab: Any, demo: Any) -> None:
    tab = open_tab()
    page = tab.page
    sign_in(tab)
    page.get_by_role("navigation", name="Main").get_by_role("link", name="Users").click()
    invite = page.locator("form", has=page.get_by_role("heading", name="Invite a user"))
    invite.get_by_label("Email").fill("new.barista@demo.example")
    invite.get_by_label("Name").fill("Nia Barista")
    invite.get_by_label("Role").select_option("operator")
    invite.get_by_role("button", name="Send the invitation").click()
    expect(page.get_by_text("Invitation for new.barista@demo.example is in the staff outbox")).to_be_visible()
    expect(page.get_by_role("button", name="Send again to new.barista@demo.example")).to_be_visible()
    shoot(tab, "users")

    invitee = open_tab()
    open_staff_email(invitee.page, "invited you to Demo Coffee Roasters on Recovery")
    invitee.page.locator("#staff-email-link").click()
    expect(invitee.page.get_by_role("heading", name="Join Demo Coffee Roasters")).to_be_visible()
    shoot(invitee, "accept")
    invitee.page.get_by_label("Choose a password").fill(NEW_PASSWORD)
    invitee.page.get_by_label("The password again").fill(NEW_PASSWORD)
    invitee.page.get_by_role("button", name="Set the password and sign in").click()
    expect(invitee.page).to_have_url(re.compile(r"/transactions$"))
    expect(invitee.page.get_by_text("Welcome to Demo Coffee Roasters")).to_be_visible()

    invitee.page.get_by_role("link", name="new.barista@demo.example").click()
    expect(invitee.page.get_by_role("heading", name="Your account")).to_be_visible()
    shoot(invitee, "account")
    invitee.assert_clean()

    page.get_by_role("navigation", name="Main").get_by_role("link", name="Audit log").click()
    expect(page.get_by_role("heading", name="Audit log")).to_be_visible()
    page.get_by_label("What").select_option("users")
    page.get_by_role("button", name="Apply").click()
    rows = page.locator("table.audit-log tbody tr")
    expect(rows.first).to_contain_text("accepted the invitation")
    expect(page.locator("table.audit-log")).to_contain_text("invited new.barista@demo.example as operator")
    shoot(tab, "audit")

    page.get_by_label("From").fill("2026-12-31")
    page.get_by_label("To").fill("2026-01-01")
    page.get_by_role("button", name="Apply").click()
    expect(page.locator("#filter-errors")).to_contain_text("is after the “to” date")
    expect_refused(tab, 400)
    shoot(tab, "audit-error")
    tab.assert_clean()
