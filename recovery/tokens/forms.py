from __future__ import annotations

from flask_wtf import FlaskForm
from wtforms import IntegerField, SelectField, StringField
from wtforms.fields.choices import SelectChoice
from wtforms.validators import DataRequired, Length, NumberRange, Optional

from recovery.models import Role
from recovery.tokens.services import MAX_EXPIRES_DAYS, NAME_MAX


def role_choices(up_to: Role | str) -> list[SelectChoice]:
    """The roles a user may give a token: their own and below, weakest first."""
    return [SelectChoice(r.value, r.value.capitalize()) for r in Role if Role(up_to).at_least(r)]


class TokenForm(FlaskForm):
    name = StringField(
        "Name",
        [DataRequired("Give the token a name, e.g. the system that will use it."), Length(max=NAME_MAX)],
        description="What uses it, e.g. “Billing system” or “Zapier”.",
        render_kw={"maxlength": NAME_MAX, "autocomplete": "off"},
    )
    role = SelectField(
        "Role",
        default=Role.VIEWER.value,
        description="Viewer reads; operator also creates transactions and payment links.",
    )
    expires_days = IntegerField(
        "Expires after (days)",
        [Optional(), NumberRange(1, MAX_EXPIRES_DAYS, f"Use 1 to {MAX_EXPIRES_DAYS} days, or leave empty.")],
        description="Empty: the token works until it is revoked.",
        render_kw={"min": 1, "max": MAX_EXPIRES_DAYS, "inputmode": "numeric"},
    )


class RevokeForm(FlaskForm):
    """Only the CSRF token: revoking takes no input."""
