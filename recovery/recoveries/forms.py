from __future__ import annotations

from flask_wtf import FlaskForm
from wtforms import BooleanField, RadioField, SelectMultipleField, StringField
from wtforms.fields.choices import SelectChoice
from wtforms.validators import Length, Optional
from wtforms.widgets import CheckboxInput, ListWidget

# SelectChoice, not (value, label) tuples: WTForms 3.3 deprecates tuples.
CHANNEL_CHOICES = [SelectChoice("email", "Email"), SelectChoice("sms", "SMS")]


class MultiCheckboxField(SelectMultipleField):
    widget = ListWidget(prefix_label=False)
    option_widget = CheckboxInput()


class StartRecoveryForm(FlaskForm):
    channels = MultiCheckboxField("Send by", choices=CHANNEL_CHOICES)
    schedule = StringField(
        "Schedule (days)",
        validators=[Optional(), Length(max=100)],
        description="Days after the start, e.g. 0,1,3,6. Empty: the organization's schedule.",
    )
    # Pre-checked from the organization's settings (any channel allowed to fall back).
    allow_fallback = BooleanField("If an address turns out dead, use the other channel")
    # "": what the organization's rules decide; a campaign's id: that campaign instead.
    campaign = StringField("Campaign", validators=[Optional(), Length(max=20)])


class CancelRecoveryForm(FlaskForm):
    pass


class BulkStartForm(FlaskForm):
    """Start recoveries for the transactions selected on the list (recovery.recoveries.bulk)."""

    channel = RadioField(
        "Send by",
        choices=[
            SelectChoice("any", "Email and SMS, where the customer has them"),
            SelectChoice("email", "Email only"),
            SelectChoice("sms", "SMS only"),
        ],
        default="any",
    )
