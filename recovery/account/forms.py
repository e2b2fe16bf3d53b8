from __future__ import annotations

from flask_wtf import FlaskForm
from wtforms import PasswordField, StringField
from wtforms.validators import DataRequired, Length, ValidationError


class NameForm(FlaskForm):
    name = StringField("Your name", [Length(max=200)], description="Shown to your colleagues.")


class PasswordForm(FlaskForm):
    current = PasswordField("Current password", [DataRequired(), Length(max=256)])
    password = PasswordField(
        "New password", [DataRequired(), Length(max=256)], description="At least 12 characters."
    )
    confirm = PasswordField("New password again", [DataRequired(), Length(max=256)])

    def validate_confirm(self, field: PasswordField) -> None:
        if field.data != self.password.data:
            raise ValidationError("The two passwords are not the same.")
