"""Write, store and send an email to a staff member.

Staff emails take the same path out as customer messages (the Postman:
SMTP in production, the development outbox without an SMTP server) but they
are no Message of a recovery: no transaction, no unsubscribe, no retry
schedule. A failed send is shown to whoever asked for it, who can ask again.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy import select

from recovery.logs import get_logger
from recovery.messaging.providers import Outcome, OutgoingEmail, Postman
from recovery.models import Provider, Role, StaffEmail, StaffEmailStatus, User, utcnow
from recovery.models.base import DbSession

log = get_logger("recovery.staffmail")


@dataclass(frozen=True)
class SendResult:
    sent: bool
    error: str | None = None


def compose(session: DbSession, user: User, kind: str, subject: str, text: str) -> StaffEmail:
    """Store an email to `user`, ready to send; the caller commits before sending it."""
    email = StaffEmail(
        organization_id=user.organization_id,
        user_id=user.id,
        kind=kind,
        recipient=user.email,
        subject=subject[:300],
        body_text=text,
        status=StaffEmailStatus.QUEUED,
    )
    session.add(email)
    session.flush()
    return email


def send(postman: Postman, email: StaffEmail, from_name: str) -> SendResult:
    """Hand the email to its provider and record how it went on the row; the caller commits.

    Sent over SMTP, the body (a link that opens the account) is not kept:
    the recipient's inbox has it, and a read of our database must not.
    """
    delivery = postman.send_email(
        OutgoingEmail(
            message_id=email.id,
            to=email.recipient,
            subject=email.subject,
            text=email.body_text,
            html="",
            from_name=from_name,
            reply_to=None,
            unsubscribe_url="",
            kind="staff",
        )
    )
    email.provider = delivery.provider
    if delivery.outcome == Outcome.SENT:
        email.status = StaffEmailStatus.SENT
        email.sent_at = utcnow()
        if delivery.provider != Provider.OUTBOX:
            email.body_text = ""
        log.info("staff_email_sent", staff_email_id=email.id, kind=email.kind, provider=delivery.provider)
        return SendResult(True)
    # Retry, unknown or refused: the person who asked sees it and can ask again; no schedule.
    email.status = StaffEmailStatus.FAILED
    email.error = delivery.error
    email.body_text = ""
    log.warning("staff_email_failed", staff_email_id=email.id, kind=email.kind, error=delivery.error)
    return SendResult(False, delivery.error or "The email could not be sent.")


def outbox(
    session: DbSession, organization_id: int | None, viewer: User | None, limit: int = 50
) -> Sequence[StaffEmail]:
    """Staff emails the development outbox shows, newest first.

    Signed in (`viewer`): their organization's emails to people whose role is
    not above theirs, since each holds a link that opens that account.
    Without a viewer (the public development page), every organization's.
    """
    query = select(StaffEmail).where(StaffEmail.provider == Provider.OUTBOX)
    if organization_id is not None:
        query = query.where(StaffEmail.organization_id == organization_id)
    if viewer is not None:
        allowed = [role.value for role in Role if Role(viewer.role).at_least(role)]
        query = query.join(User, User.id == StaffEmail.user_id).where(User.role.in_(allowed))
    return session.scalars(query.order_by(StaffEmail.id.desc()).limit(limit)).all()
