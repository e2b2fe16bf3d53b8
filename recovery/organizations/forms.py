from __future__ import annotations

from flask_wtf import FlaskForm
from wtforms import BooleanField, IntegerField, SelectMultipleField, StringField, TextAreaField
from wtforms.fields.choices import SelectChoice
from wtforms.validators import DataRequired, Length, Optional
from wtforms.widgets import CheckboxInput, ListWidget

FALLBACK_CHOICES = [
    SelectChoice("email", "A refused email address falls back to SMS"),
    SelectChoice("sms", "A dead phone number falls back to email"),
]


class MultiCheckboxField(SelectMultipleField):
    widget = ListWidget(prefix_label=False)
    option_widget = CheckboxInput()


class RecoverySettingsForm(FlaskForm):
    """Field checks are for the browser's sake; recovery.organizations.services decides."""

    recovery_schedule = StringField(
        "Schedule (days)",
        [DataRequired("Give at least one day, e.g. 0."), Length(max=100)],
        description="Days after the start for each message: 0,1,3,6 sends at once, then after 1, 3, 6 days.",
    )
    attempt_lifetime_days = IntegerField(
        "Payment link lifetime (days)",
        [DataRequired("Give a number of days.")],
        description="After this the link stops working and the recovery expires.",
        render_kw={"min": 1, "max": 90, "inputmode": "numeric"},
    )
    email_from_name = StringField(
        "Email sender name",
        [Optional(), Length(max=100)],
        description="Empty: the organization's name.",
    )
    reply_to_email = StringField(
        "Reply-to address",
        [Optional(), Length(max=254)],
        description="Where customers' replies go; also shown on the payment pages. Empty: none.",
        render_kw={"type": "email", "autocomplete": "email"},
    )
    excluded_failure_codes = TextAreaField(
        "Failure codes not to recover",
        [Optional(), Length(max=500)],
        description="Stripe failure codes, comma-separated, e.g. fraudulent, stolen_card.",
        render_kw={"rows": 2},
    )
    quiet_hours = StringField(
        "Quiet hours (customer's local time)",
        [Optional(), Length(max=20)],
        description="No message between these hours, e.g. 21:00-08:00; one due then waits. Empty: any hour.",
    )
    fallback_channels = MultiCheckboxField("Fallback", choices=FALLBACK_CHOICES)
    auto_start_recoveries = BooleanField(
        "Start a recovery automatically for failed payments imported from Stripe"
    )
