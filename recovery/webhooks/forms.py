from __future__ import annotations

from flask_wtf import FlaskForm
from wtforms import BooleanField


class ProcessAgainForm(FlaskForm):
    """No fields: the CSRF token is the point."""


class ReconcileForm(FlaskForm):
    """No fields: the CSRF token is the point."""


class ImportSettingsForm(FlaskForm):
    import_stripe_failures = BooleanField("Import failed payments from Stripe")
