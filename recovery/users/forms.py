from __future__ import annotations

from flask_wtf import FlaskForm
from wtforms import EmailField, HiddenField, PasswordField, SelectField, StringField
from wtforms.fields.choices import SelectChoice
from wtforms.validators import DataRequired, Length, ValidationError

from recovery.models import Role

# SelectChoice, not (value, label) tuples: WTForms 3.3 deprecates tuples.
ROLE_CHOICES = [SelectChoice(r.value, r.value.capitalize()) for r in reversed(Role)]


class InviteForm(FlaskForm):
    email = EmailField("Email", [DataRequired(), Length(max=254)])
    name = StringField("Name", [Length(max=200)])
    role = SelectField("Role", choices=ROLE_CHOICES, default=Role.VIEWER.value)


class AcceptInviteForm(FlaskForm):
    name = StringField("Your name", [Length(max=200)])
    password = PasswordField(
        "Choose a password", [DataRequired(), Length(max=256)], description="At least 12 characters."
    )
    confirm = PasswordField("The password again", [DataRequired(), Length(max=256)])

    def validate_confirm(self, field: PasswordField) -> None:
        if field.data != self.password.data:
            raise ValidationError("The two passwords are not the same.")


class InvitationForm(FlaskForm):
    """Resend or revoke: the CSRF token alone."""


class RoleForm(FlaskForm):
    role = SelectField("Role", choices=ROLE_CHOICES)


class ActiveForm(FlaskForm):
    active = HiddenField()
