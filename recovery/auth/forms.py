from __future__ import annotations

from flask_wtf import FlaskForm
from wtforms import BooleanField, EmailField, HiddenField, PasswordField
from wtforms.validators import DataRequired, Length, ValidationError

from recovery.transactions.validation import clean_email


class LoginForm(FlaskForm):
    email = EmailField("Email", validators=[DataRequired(), Length(max=254)])
    password = PasswordField("Password", validators=[DataRequired(), Length(max=256)])
    remember = BooleanField("Keep me signed in on this device")
    next = HiddenField()


class LogoutForm(FlaskForm):
    pass


class ForgotPasswordForm(FlaskForm):
    email = EmailField("Email", validators=[DataRequired(), Length(max=254)])

    def validate_email(self, field: EmailField) -> None:
        # The rules every stored address passed: one that breaks them has no account to reset.
        try:
            clean_email(field.data)
        except ValueError as error:
            raise ValidationError(str(error)) from None


class NewPasswordForm(FlaskForm):
    password = PasswordField(
        "New password",
        validators=[DataRequired(), Length(max=256)],
        description="At least 12 characters.",
    )
    confirm = PasswordField("New password again", validators=[DataRequired(), Length(max=256)])

    def validate_confirm(self, field: PasswordField) -> None:
        if field.data != self.password.data:
            raise ValidationError("The two passwords are not the same.")
