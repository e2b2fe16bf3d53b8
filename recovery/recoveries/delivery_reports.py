"""What Twilio tells us after a send: delivery reports, and customers replying STOP or START.

Plain functions over a SQLAlchemy session; the request that carried the
callback (recovery/recoveries/twilio_hooks.py) commits. Twilio's callbacks
arrive out of order and may repeat: a report only ever moves a message's
delivery status forward.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import delete, func, select

from recovery import audit
from recovery.audit import Actor
from recovery.logs import get_logger
from recovery.messaging.contacts import suppress
from recovery.messaging.providers import TWILIO_UNDELIVERABLE, TWILIO_UNSUBSCRIBED
from recovery.models import (
    Channel,
    ContactSuppression,
    Message,
    MessageStatus,
    Provider,
    RecoveryAttempt,
    SuppressionReason,
)
from recovery.models.base import DbSession
from recovery.models.message import DELIVERY_FAILED
from recovery.recoveries.claims import MAX_TRIES
from recovery.recoveries.repair import mark_found

log = get_logger("recovery.messaging")

M = MessageStatus

# Twilio's message statuses in the order they happen. Equal ranks are final
# alternatives: once delivered, a late "failed" changes nothing, and vice versa.
DELIVERY_RANK = {
    "accepted": 0,
    "scheduled": 0,
    "queued": 0,
    "sending": 1,
    "sent": 2,
    "delivered": 3,
    "undelivered": 3,
    "failed": 3,
    "canceled": 3,
}
# Delivery errors that no later try will fix (https://www.twilio.com/docs/api/errors):
# unknown handset, landline, plus the send-time refusals.
TWILIO_DEAD_NUMBER = TWILIO_UNDELIVERABLE | {30005, 30006}

# Twilio's opt-out and opt-in keywords (Advanced Opt-Out defaults), compared trimmed and case-blind.
STOP_WORDS = frozenset({"STOP", "STOPALL", "UNSUBSCRIBE", "END", "QUIT", "CANCEL", "OPTOUT", "REVOKE"})
START_WORDS = frozenset({"START", "UNSTOP", "YES"})
# Which organizations a reply is about: those that texted the number lately.
REPLY_LOOKBACK = timedelta(days=60)
# An SMS delivery report, as the AuditEvent actor.
TWILIO_LABEL = "Twilio"


@dataclass(frozen=True)
class ReportApplied:
    """What a delivery report did: `changed` False when it was stale, repeated or unknown."""

    changed: bool
    message_id: int | None = None
    status: str | None = None


def _find(session: DbSession, message_id: int | None, provider_id: str) -> Message | None:
    if message_id is not None:
        message = session.get(Message, message_id, with_for_update=True)
        # The callback URL names the message; the SID must agree once we know it.
        if message is not None and message.provider_id not in (None, provider_id):
            return None
        return message
    return session.scalar(
        select(Message)
        .where(Message.provider_id == provider_id, Message.provider == Provider.TWILIO)
        .with_for_update()
    )


def apply_status(
    session: DbSession,
    *,
    provider_id: str,
    status: str,
    error_code: int | None,
    now: datetime,
    message_id: int | None = None,
) -> ReportApplied:
    """Move the message's delivery status forward to `status`; never backwards. Safe to repeat.

    "delivered" makes a sent message delivered; "undelivered"/"failed" make it
    failed for good (never re-sent: the customer may have it after all), and an
    error code that proves the number dead suppresses it like the send path does.
    """
    status = status.strip().lower()
    rank = DELIVERY_RANK.get(status)
    if rank is None:
        return ReportApplied(False)
    message = _find(session, message_id, provider_id)
    if message is None or message.channel != Channel.SMS:
        log.info("twilio_status_unmatched", provider_id=provider_id, status=status, message_id=message_id)
        return ReportApplied(False)
    current = DELIVERY_RANK.get(message.delivery_status or "", -1)
    if rank <= current:
        return ReportApplied(False, message.id, message.delivery_status)
    message.delivery_status = status
    # Twilio's id, for a report that beats our record of the send (and outlives its worker).
    message.provider_id = message.provider_id or provider_id
    if message.status == M.UNKNOWN:
        # Its worker stopped while Twilio had it: a report proves Twilio took it.
        attempt = session.get(RecoveryAttempt, message.attempt_id, with_for_update=True)
        assert attempt is not None
        mark_found(message, attempt, provider_id=provider_id, status=status)
    if status == "delivered":
        message.delivered_at = now
        if message.status == M.SENT:
            message.transition(M.DELIVERED)
    elif status in DELIVERY_FAILED:
        _undelivered(session, message, status, error_code)
    log.info(
        "twilio_status_applied",
        message_id=message.id,
        provider_id=provider_id,
        status=status,
        error_code=error_code,
    )
    return ReportApplied(True, message.id, status)


def _undelivered(session: DbSession, message: Message, status: str, error_code: int | None) -> None:
    """A text Twilio could not deliver: failed for good, its number suppressed if the error proves it dead."""
    message.error = f"Twilio {error_code or 'delivery'}: {status}"
    dead = error_code in TWILIO_DEAD_NUMBER or error_code == TWILIO_UNSUBSCRIBED
    if message.status == M.SENT:
        if dead:
            message.transition(M.UNDELIVERABLE)
        else:
            message.transition(M.FAILED)
            message.tries = MAX_TRIES  # failed after the provider took it: never re-sent
    if dead:
        reason = (
            SuppressionReason.OPTED_OUT
            if error_code == TWILIO_UNSUBSCRIBED
            else SuppressionReason.UNDELIVERABLE
        )
        suppress(
            session,
            message.organization_id,
            Channel.SMS,
            message.recipient,
            reason,
            detail=message.error,
            message_id=message.id,
        )
    audit.record(
        session,
        Actor.system(message.organization_id, TWILIO_LABEL),
        "recovery.sms_undelivered",
        transaction_id=message.transaction_id,
        target_type="message",
        target_id=message.id,
        status=status,
        error_code=error_code,
        suppressed=dead,
    )


# --- replies ------------------------------------------------------------------------


def keyword(body: str | None) -> str | None:
    """ "stop", "STOP " → "stop"; "start" → "start"; anything else → None."""
    word = (body or "").strip().upper()
    if word in STOP_WORDS:
        return "stop"
    if word in START_WORDS:
        return "start"
    return None


def _latest_by_organization(session: DbSession, phone: str, now: datetime) -> dict[int, int]:
    """Organization id → transaction id of its latest SMS to `phone` (recent ones; else the last ever)."""
    recent = session.execute(
        select(Message.organization_id, func.max(Message.id))
        .where(
            Message.channel == Channel.SMS,
            Message.recipient == phone,
            Message.created_at >= now - REPLY_LOOKBACK,
        )
        .group_by(Message.organization_id)
    ).all()
    ids = [message_id for _, message_id in recent]
    if not ids:
        last = session.scalar(
            select(func.max(Message.id)).where(Message.channel == Channel.SMS, Message.recipient == phone)
        )
        ids = [last] if last is not None else []
    rows = session.execute(
        select(Message.organization_id, Message.transaction_id).where(Message.id.in_(ids))
    ).all()
    return {organization_id: transaction_id for organization_id, transaction_id in rows}


def apply_reply(session: DbSession, *, phone: str, body: str | None, now: datetime) -> list[int]:
    """Opt `phone` out of (STOP) or back into (START) the texts of the organizations that texted it.

    Returns the organization ids changed. Only opt-outs are undone by START: a
    number found dead stays suppressed. Safe to repeat.
    """
    word = keyword(body)
    if word is None or not phone:
        return []
    changed: list[int] = []
    for organization_id, transaction_id in sorted(_latest_by_organization(session, phone, now).items()):
        existing = session.scalar(
            select(ContactSuppression).where(
                ContactSuppression.organization_id == organization_id,
                ContactSuppression.channel == Channel.SMS,
                ContactSuppression.address == phone,
            )
        )
        if word == "stop":
            if existing is not None:
                continue
            session.add(
                ContactSuppression(
                    organization_id=organization_id,
                    channel=Channel.SMS,
                    address=phone,
                    reason=SuppressionReason.OPTED_OUT,
                    detail=f"Replied {(body or '').strip().upper()[:20]}",
                    created_at=now,
                )
            )
            action = "recovery.sms_opted_out"
        else:
            if existing is None or existing.reason != SuppressionReason.OPTED_OUT:
                continue
            session.execute(delete(ContactSuppression).where(ContactSuppression.id == existing.id))
            action = "recovery.sms_opted_in"
        audit.record(
            session,
            Actor.system(organization_id, "customer"),
            action,
            transaction_id=transaction_id,
            target_type="contact",
            channel=Channel.SMS,
            keyword=(body or "").strip().upper()[:20],
        )
        log.info(action.replace(".", "_"), organization_id=organization_id, transaction_id=transaction_id)
        changed.append(organization_id)
    return changed
