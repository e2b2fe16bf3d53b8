"""Emails to staff (password reset, invitation) through the customer messages' provider path."""
