from __future__ import annotations

from flask_wtf import FlaskForm
from wtforms import HiddenField
from wtforms.validators import Optional, Regexp


class CreatePaymentForm(FlaskForm):
    # A one-time nonce rendered with the page: a double click or a resubmitted
    # form is the same logical action, so Stripe returns the same object.
    action = HiddenField(validators=[Optional(), Regexp(r"^[0-9a-f]{32}$")])


class RefreshForm(FlaskForm):
    pass
