"""An attempt's messages as the customer reads them: rendered for a step, and handed to a provider.

The links in them (pay, unsubscribe) lead to the customer's pages on our
domain; the outbox page shows a stored message through `outgoing` too, so it
is exactly what the provider got.
"""

from __future__ import annotations

from datetime import datetime

from recovery.campaigns import plan
from recovery.messaging.contacts import address_for
from recovery.messaging.content import MessageFacts, render_email, render_sms
from recovery.messaging.providers import OutgoingEmail, OutgoingSms
from recovery.models import (
    Channel,
    Message,
    MessageStatus,
    Organization,
    RecoveryAttempt,
    Transaction,
    utcnow,
)
from recovery.models.base import DbSession

M = MessageStatus


def pay_url(base_url: str, token: str) -> str:
    return f"{base_url.rstrip('/')}/pay/{token}"


def unsubscribe_url(base_url: str, token: str) -> str:
    return f"{base_url.rstrip('/')}/pay/{token}/unsubscribe"


def message_facts(
    organization: Organization, transaction: Transaction, attempt: RecoveryAttempt, base_url: str
) -> MessageFacts:
    return MessageFacts(
        merchant=organization.name,
        brand_color=organization.brand_color,
        customer_name=transaction.customer_name,
        amount=transaction.amount,
        currency=transaction.currency,
        transaction_ref=transaction.transaction_ref,
        failure_code=transaction.failure_code,
        link=pay_url(base_url, attempt.token),
        unsubscribe_url=unsubscribe_url(base_url, attempt.token),
        expires_at=attempt.expires_at,
        timezone=organization.timezone,
        country=transaction.customer_country,
        phone=transaction.customer_phone,
        locale=transaction.customer_locale,
        # The how-manieth message: a campaign's card retries and staff alerts are not reminders.
        step=attempt.step if attempt.plan is None else plan.messages_before(attempt, attempt.step),
        contact_email=organization.reply_to_email,
    )


Outgoing = OutgoingEmail | OutgoingSms


def outgoing(message: Message, organization: Organization, base_url: str, token: str) -> Outgoing:
    """The provider-ready form of a stored message (also what the outbox page shows)."""
    if message.channel == Channel.EMAIL:
        return OutgoingEmail(
            message_id=message.id,
            to=message.recipient,
            subject=message.subject or "",
            text=message.body_text,
            html=message.body_html or "",
            from_name=organization.email_from_name or organization.name,
            reply_to=organization.reply_to_email,
            unsubscribe_url=unsubscribe_url(base_url, token),
        )
    return OutgoingSms(message_id=message.id, to=message.recipient, body=message.body_text)


def new_message(
    session: DbSession, attempt: RecoveryAttempt, channel: str, base_url: str, now: datetime
) -> Message:
    """A rendered message for the attempt's step, claimed (sending, first try); transient until stored."""
    transaction = attempt.transaction
    organization = session.get(Organization, attempt.organization_id)
    assert organization is not None
    message = Message(
        organization_id=attempt.organization_id,
        attempt_id=attempt.id,
        transaction_id=attempt.transaction_id,
        step=attempt.step,
        channel=channel,
        recipient=address_for(transaction, channel) or "",
        status=M.QUEUED,
        tries=0,
        created_at=now,
        # The claim's own time: CLAIM_ABANDONED is measured from it, not from the batch's start.
        updated_at=utcnow(),
    )
    facts = message_facts(organization, transaction, attempt, base_url)
    if channel == Channel.EMAIL:
        email = render_email(facts)
        message.subject, message.body_text, message.body_html = email.subject, email.text, email.html
    else:
        message.body_text = render_sms(facts)
    message.transition(M.SENDING)
    message.tries = 1
    return message
