from __future__ import annotations

from flask_wtf import FlaskForm
from wtforms import BooleanField, StringField
from wtforms.validators import Length, Optional


class ProcessAgainForm(FlaskForm):
    """No fields: the CSRF token is the point."""


class ReconcileForm(FlaskForm):
    """No fields: the CSRF token is the point."""


class ImportSettingsForm(FlaskForm):
    import_stripe_failures = BooleanField("Import failed payments from Stripe")
    stripe_account_id = StringField(
        "Connected Stripe account",
        [Optional(), Length(max=255)],
        description="Only with Stripe Connect: events of this account (acct_...) are this organization's.",
    )
