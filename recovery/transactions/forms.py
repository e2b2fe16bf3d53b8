"""Transaction forms. Field rules live in `validation`; these only carry the input."""

from __future__ import annotations

from typing import Any

from flask_wtf import FlaskForm
from wtforms import EmailField, StringField, TelField, TextAreaField
from wtforms.validators import Optional

from recovery import money
from recovery.transactions.validation import MAX_LENGTHS


def _attrs(name: str) -> dict[str, Any]:
    limit = MAX_LENGTHS.get(name)
    return {"maxlength": limit} if limit else {}


class ContactForm(FlaskForm):
    customer_name = StringField("Customer name", [Optional()], render_kw=_attrs("customer_name"))
    customer_email = EmailField(
        "Email", [Optional()], render_kw={**_attrs("customer_email"), "autocomplete": "off"}
    )
    customer_phone = TelField(
        "Phone",
        [Optional()],
        description="International form, e.g. +44 20 7946 0958, or local with a country.",
        render_kw={"maxlength": 32},
    )
    customer_country = StringField(
        "Country", [Optional()], description="Two letters, e.g. US, DE, GB.", render_kw={"maxlength": 2}
    )
    customer_locale = StringField(
        "Language", [Optional()], description="e.g. en, en-GB, de-DE.", render_kw={"maxlength": 35}
    )

    def apply_errors(self, errors: dict[str, str]) -> None:
        """Show service-side validation messages next to their fields."""
        for name, message in errors.items():
            field = getattr(self, name, None)
            if field is not None:
                field.errors = [*field.errors, message]


class TransactionForm(ContactForm):
    transaction_ref = StringField(
        "Transaction reference", render_kw={**_attrs("transaction_ref"), "required": True}
    )
    amount = StringField(
        "Amount",
        description=f"{money.AMOUNT_RULE} {money.AMOUNT_MINOR_RULE}",
        render_kw={"inputmode": "decimal", "required": True, "maxlength": 20},
    )
    currency = StringField(
        "Currency",
        description="ISO 4217 code, e.g. USD, EUR, GBP, JPY.",
        render_kw={"maxlength": 3, "required": True, "list": "currencies"},
    )
    failure_code = StringField(
        "Failure code",
        [Optional()],
        description="e.g. card_declined, insufficient_funds.",
        render_kw=_attrs("failure_code"),
    )
    failure_message = TextAreaField("Failure message", [Optional()], render_kw=_attrs("failure_message"))
    failed_at = StringField(
        "Failed on",
        [Optional()],
        description="When the payment failed; empty means now.",
        render_kw={"type": "date"},
    )
    metadata = TextAreaField(
        "Metadata (JSON)",
        [Optional()],
        description='e.g. {"order_id": "ORD-123"}',
        render_kw={"maxlength": 4096, "rows": 2},
    )


class CloseForm(FlaskForm):
    """Close a transaction; the reason is optional and shown on its page and timeline."""

    reason = StringField(
        "Reason (optional)",
        [Optional()],
        description="Shown on the transaction's page, e.g. “Paid by bank transfer”.",
        render_kw={"maxlength": 500, "autocomplete": "off"},
    )


class ReopenForm(FlaskForm):
    """Reopen a closed transaction (the CSRF token only)."""
