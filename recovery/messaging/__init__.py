"""Emails and text messages to customers: content, providers (SMTP, Twilio) and the development outbox."""
