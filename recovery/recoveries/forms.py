from __future__ import annotations

from flask_wtf import FlaskForm
from wtforms import SelectMultipleField, StringField
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


class CancelRecoveryForm(FlaskForm):
    pass
