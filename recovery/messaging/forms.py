"""Forms of the messaging pages."""

from __future__ import annotations

from flask_wtf import FlaskForm


class ResendForm(FlaskForm):
    """Send a message again (CSRF only)."""
