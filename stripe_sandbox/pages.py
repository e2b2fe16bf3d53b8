"""The hosted pages: Checkout's pay page (`/c/pay/<session>`) and Payment Links (`/b/<link>`).

Plain server-rendered forms: a test (or a person) pays by posting the card
fields, with Stripe's test cards and Stripe's wording for every refusal.
"""

from __future__ import annotations

import re
from datetime import date
from typing import Any

from flask import Blueprint, redirect, render_template, request
from werkzeug.wrappers import Response

from stripe_sandbox import payments
from stripe_sandbox.context import current
from stripe_sandbox.errors import StripeError
from stripe_sandbox.objects import PRIVATE, THREE_DECIMAL, ZERO_DECIMAL

bp = Blueprint("pages", __name__)

SYMBOLS = {"usd": "$", "eur": "€", "gbp": "£", "jpy": "¥", "inr": "₹", "krw": "₩", "cny": "¥", "brl": "R$"}
_EXPIRY = re.compile(r"^\s*(\d{1,2})\s*/\s*(\d{2}|\d{4})\s*$")


def format_amount(amount: int, currency: str) -> str:
    """Show minor units in the currency's major unit: 5000 usd → $50.00, 5000 jpy → ¥5,000."""
    code = currency.lower()
    digits = 0 if code in ZERO_DECIMAL else 3 if code in THREE_DECIMAL else 2  # ISK, UGX: 2 at Stripe
    number = f"{amount / 10**digits:,.{digits}f}"
    symbol = SYMBOLS.get(code)
    return f"{symbol}{number}" if symbol else f"{number} {code.upper()}"


def _message(title: str, message: str, status: int = 200, **extra: Any) -> Response:
    html = render_template("message.html", title=title, message=message, **extra)
    return Response(html, status=status, mimetype="text/html")


def _render_pay(session: dict[str, Any], form: dict[str, str], error: str | None, status: int) -> Response:
    sandbox = current()
    prefilled = payments.customer_email(sandbox, session)
    html = render_template(
        "pay.html",
        session=session,
        items=[
            {**item, "display": format_amount(item["amount_total"], item["currency"])}
            for item in session[PRIVATE]["line_items"]
        ],
        total=format_amount(session["amount_total"], session["currency"]),
        email=form.get("email") or prefilled or "",
        email_locked=bool(prefilled),
        form=form,
        error=error,
    )
    return Response(html, status=status, mimetype="text/html")


def _deactivated() -> Response:
    return _message(
        "This link has been deactivated",
        "This payment link is no longer active. Contact the merchant for another way to pay.",
    )


def _closed(session: dict[str, Any]) -> Response:
    if session["status"] == "open":  # open, but its Payment Link was switched off or used up
        return _deactivated()
    if session["status"] == "complete":
        return _message(
            "You've already paid",
            "This payment has already been completed. There is nothing more to do here.",
            link=payments.success_redirect(session),
        )
    return _message(
        "This Checkout Session is no longer available",
        "The payment page has expired. Return to the merchant's site to start again.",
        link=session["cancel_url"],
    )


def _expiry(value: str) -> tuple[int, int]:
    """Parse `MM / YY`; raise ValueError with Stripe's wording when it is unusable."""
    match = _EXPIRY.match(value)
    if not match:
        raise ValueError("Your card's expiration date is incomplete.")
    month, year = int(match.group(1)), int(match.group(2))
    year = year + 2000 if year < 100 else year
    if not 1 <= month <= 12:
        raise ValueError("Your card's expiration date is incomplete.")
    today = date.today()
    if year < today.year:
        raise ValueError("Your card's expiration year is in the past.")
    if (year, month) < (today.year, today.month):
        raise ValueError("Your card's expiration date is in the past.")
    return month, year


@bp.route("/c/pay/<session_id>", methods=["GET", "POST"])
def pay(session_id: str) -> Response:
    sandbox = current()
    session = payments.open_session(sandbox, session_id)
    if session is None:
        return _message("Something went wrong", "The page you were looking for could not be found.", 404)
    if session["status"] != "open" or (
        session["payment_link"] and not payments.link_active(sandbox, session["payment_link"])
    ):
        return _closed(session)
    if request.method == "GET":
        return _render_pay(session, {}, None, 200)

    form = {key: request.form.get(key, "").strip() for key in ("email", "name", "card_number", "card_expiry")}
    email = form["email"] or payments.customer_email(sandbox, session) or ""
    problem = None
    if not re.fullmatch(r"[^@\s]+@[^@\s]+\.[^@\s]+", email):
        problem = "Your email address is invalid." if email else "Your email is incomplete."
    elif not form["card_number"]:
        problem = "Your card number is incomplete."
    if problem is None:
        try:
            month, year = _expiry(form["card_expiry"])
        except ValueError as error:
            problem = str(error)
    if problem is None and not re.fullmatch(r"\d{3,4}", request.form.get("card_cvc", "").strip()):
        problem = "Your card's security code is incomplete."
    if problem:
        return _render_pay(session, form, problem, 400)
    try:
        attempt = payments.pay(
            sandbox,
            session_id,
            card_number=form["card_number"],
            exp_month=month,
            exp_year=year,
            email=email,
            name=form["name"] or None,
        )
    except StripeError as error:  # an unknown card number
        return _render_pay(session, form, error.message, 400)
    except payments.NotPayable:
        return _closed(sandbox.store.get(session_id) or session)
    if attempt.error:
        return _render_pay(attempt.session, form, attempt.error.message, 402)
    target = payments.success_redirect(attempt.session)
    if target:
        return redirect(target, 302)  # type: ignore[return-value]
    return _message("Thanks for your payment", "Your payment is complete. You can close this page.")


@bp.get("/b/<link_id>")
def payment_link(link_id: str) -> Response:
    """Open a fresh Checkout Session for the link and send the visitor to it."""
    sandbox = current()
    with sandbox.store.transaction():
        link = sandbox.store.get(link_id, "payment_link")
        if link is None:
            return _message("Something went wrong", "The page you were looking for could not be found.", 404)
        if not link["active"]:
            return _deactivated()
        session = payments.session_for_link(sandbox, link)
    return redirect(session["url"], 302)  # type: ignore[return-value]


@bp.get("/")
def index() -> Response:
    return _message(
        "Stripe sandbox",
        "A local stand-in for Stripe's API (under /v1) and its hosted Checkout and Payment Link pages.",
    )
