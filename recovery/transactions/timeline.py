"""A transaction's timeline: everything that happened to it, oldest first, for its page.

Read from the audit log, the recovery attempts and the messages; nothing is
stored for the timeline itself.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select

from recovery.models import (
    AttemptStatus,
    AuditEvent,
    CsvImport,
    Message,
    MessageStatus,
    Provider,
    RecoveryAttempt,
    Transaction,
    TransactionSource,
    User,
)
from recovery.models.base import DbSession


@dataclass(frozen=True)
class TimelineEntry:
    at: datetime
    title: str
    detail: str = ""
    actor: str = ""
    kind: str = "event"
    # The Stripe event that caused the entry, if one did (the page links to it).
    webhook_event_id: int | None = None
    # A message staff may send again (its fate is unknown): the page offers to.
    resend_message_id: int | None = None


AUDIT_TITLES = {
    "transaction.created": "Created",
    "transaction.contact_updated": "Contact details changed",
    "stripe.checkout_session_created": "Checkout session created",
    "stripe.payment_link_created": "Payment link created",
    "stripe.payment_link_deactivated": "Payment link deactivated",
    "stripe.payment_recovered": "Recovered",
    "stripe.payment_succeeded": "Payment succeeded",
    "stripe.payment_failed": "Payment attempt failed",
    "stripe.checkout_session_expired": "Checkout session expired",
    "stripe.checkout_session_closed": "Checkout session closed",
    "stripe.checkout_session_awaiting_payment": "Checkout completed, payment pending",
    "stripe.async_payment_failed": "Delayed payment failed",
    "stripe.refunded": "Refunded",
    "stripe.partially_refunded": "Partially refunded",
    "stripe.duplicate_payment": "Paid twice",
    "transaction.closed": "Closed",
    "transaction.reopened": "Reopened",
    "recovery.started": "Recovery started",
    "recovery.cancelled": "Recovery cancelled",
    "recovery.link_opened": "Customer opened the payment link",
    "recovery.unsubscribed": "Customer unsubscribed from emails",
    "recovery.sending_stopped": "No more messages; the payment link still works",
    "recovery.sms_opted_out": "Customer replied STOP: no more text messages",
    "recovery.sms_opted_in": "Customer replied START: text messages allowed again",
    "recovery.sms_undelivered": "Text message not delivered",
    "recovery.auto_start_refused": "Automatic recovery not started",
    "recovery.message_found": "Text found at Twilio after its worker stopped",
    "recovery.message_resent": "Message sent again",
    # Issue 18: rules, campaigns, card retries, staff alerts, the review queue.
    "recovery.not_recovered_by_rule": "Not recovered: a rule says so",
    "transaction.held_for_review": "Held for review",
    "transaction.review_approved": "Approved after review",
    "transaction.review_dismissed": "Dismissed after review",
    "recovery.staff_alerted": "Staff alerted",
    "recovery.card_retry_queued": "Card retry queued",
    "recovery.skipped_to_message": "Card retries passed for a message",
    "card_retry.succeeded": "Card retried: paid",
    "card_retry.declined": "Card retried: declined",
    "card_retry.skipped": "Card retry skipped",
    "card_retry.error": "Card retry failed at Stripe",
}
MESSAGE_TITLES = {
    "sending": "{channel} being sent",
    "sent": "{channel} handed to the provider",  # accepted by it; "delivered" comes with its report
    "delivered": "{channel} delivered",
    "failed": "{channel} failed",
    "undeliverable": "{channel} undeliverable",
    "cancelled": "{channel} cancelled",
    "queued": "{channel} queued",
    "unknown": "{channel}: unknown — check the provider",
}


RAN_OUT = (AttemptStatus.EXPIRED, AttemptStatus.EXHAUSTED)


def timeline(session: DbSession, transaction: Transaction) -> list[TimelineEntry]:
    """Everything that happened to the transaction, oldest first."""
    entries = _import_entries(session, transaction)
    events = list(
        session.scalars(
            select(AuditEvent)
            .where(AuditEvent.transaction_id == transaction.id)
            .order_by(AuditEvent.created_at, AuditEvent.id)
        )
    )
    attempts = {
        str(attempt.id): attempt
        for attempt in session.scalars(
            select(RecoveryAttempt).where(RecoveryAttempt.transaction_id == transaction.id)
        )
    }
    entries.extend(
        TimelineEntry(
            event.created_at,
            AUDIT_TITLES.get(event.action, event.action.replace(".", " ").replace("_", " ").capitalize()),
            _campaign_start(event, attempts.get(event.target_id or "")) or _describe(event),
            event.actor_label,
            kind="audit",
            webhook_event_id=event.webhook_event_id,
        )
        for event in events
    )
    has_created = any(event.action == "transaction.created" for event in events)
    if not has_created and transaction.source != TransactionSource.CSV:
        entries.append(TimelineEntry(transaction.created_at, "Created", f"via {transaction.source}"))
    entries.append(
        TimelineEntry(
            transaction.failed_at,
            "Payment failed",
            transaction.failure_message or transaction.failure_code or "",
            kind="failure",
        )
    )
    started = {event.target_id for event in events if event.action == "recovery.started"}
    entries.extend(_attempt_entries(list(attempts.values()), started))
    entries.extend(_message_entries(session, transaction))
    return sorted(entries, key=lambda e: e.at)


def _import_entries(session: DbSession, transaction: Transaction) -> list[TimelineEntry]:
    """The file a transaction came from, if it was imported."""
    if transaction.source != TransactionSource.CSV or not transaction.import_id:
        return []
    csv_import = session.get(CsvImport, transaction.import_id)
    name = csv_import.filename if csv_import else "a CSV file"
    uploader = session.get(User, csv_import.user_id) if csv_import and csv_import.user_id else None
    return [
        TimelineEntry(
            transaction.created_at,
            "Imported",
            f"from {name}",
            uploader.email if uploader else "",
            kind="import",
        )
    ]


def _attempt_entries(attempts: list[RecoveryAttempt], started: set[str | None]) -> list[TimelineEntry]:
    """Recoveries no audit event says started (`started`: those one does), and their running out."""
    entries: list[TimelineEntry] = []
    for attempt in attempts:
        if str(attempt.id) not in started:
            entries.append(
                TimelineEntry(attempt.created_at, "Recovery started", f"by {attempt.channel}", kind="attempt")
            )
        # Running out is no one's action, so no audit event tells it: the attempt does.
        if attempt.status in RAN_OUT and attempt.ended_at is not None:
            sent = f"{attempt.messages_sent} message{'' if attempt.messages_sent == 1 else 's'} sent"
            if attempt.status == AttemptStatus.EXHAUSTED:
                why = "every reminder went and the link expired unpaid"
            else:
                why = "the link expired unpaid before every reminder went"
            entries.append(
                TimelineEntry(attempt.ended_at, "Recovery ran out", f"{sent}; {why}", kind="attempt")
            )
    return entries


def _message_entries(session: DbSession, transaction: Transaction) -> list[TimelineEntry]:
    entries: list[TimelineEntry] = []
    for message in session.scalars(
        select(Message).where(Message.transaction_id == transaction.id).order_by(Message.id)
    ):
        channel = "Email" if message.channel == "email" else "SMS"
        detail = f"to {message.recipient}, message {message.step + 1}"
        if message.provider == Provider.OUTBOX:
            detail += " (development outbox)"
        if message.error:
            # The title says it already for an unknown message.
            detail += f": {message.error.removeprefix('Unknown — check the provider: ')}"
        entries.append(
            TimelineEntry(
                message.sent_at or message.updated_at or message.created_at,
                MESSAGE_TITLES.get(message.status, "{channel} " + message.status).format(channel=channel),
                detail,
                kind="message",
                resend_message_id=message.id if message.status == MessageStatus.UNKNOWN else None,
            )
        )
    return entries


STEP_WORDS = {
    "email": "an email",
    "sms": "a text message",
    "email_and_sms": "an email and a text message",
    "retry_card": "a card retry",
    "notify_staff": "an alert to staff",
}


def _after(minutes: int) -> str:
    if minutes <= 0:
        return "at once"
    for size, unit in ((1440, "day"), (60, "hour"), (1, "minute")):
        if minutes % size == 0:
            count = minutes // size
            return f"after {count} {unit}{'' if count == 1 else 's'}"
    return f"after {minutes} minutes"  # pragma: no cover -- every whole number divides by 1


def plan_in_words(plan: list[dict[str, object]]) -> str:
    """A campaign's steps as the start fixed them: 'a card retry at once, then an email after 1 day'."""
    parts = [
        f"{STEP_WORDS.get(str(step.get('action')), str(step.get('action')))} "
        f"{_after(int(str(step.get('offset_minutes', 0))))}"
        for step in plan
    ]
    return ", then ".join(parts)


def _campaign_start(event: AuditEvent, attempt: RecoveryAttempt | None) -> str | None:
    """A campaign's start: the rule that matched and why, the campaign and its version, its steps."""
    details = event.details or {}
    if event.action != "recovery.started" or "campaign" not in details or attempt is None:
        return None
    why = f"{attempt.decision} " if attempt.decision else ""
    steps = f": {plan_in_words(attempt.plan)}" if attempt.plan else ""
    return f"{why}Campaign “{details['campaign']}”, version {details.get('campaign_version', '?')}{steps}."


def _describe(event: AuditEvent) -> str:
    details = event.details or {}
    if "summary" in details:
        return str(details["summary"])
    if "changes" in details:
        return ", ".join(
            f"{name.replace('customer_', '')}: {old or '—'} → {new or '—'}"
            for name, (old, new) in details["changes"].items()
        )
    if event.action == "transaction.review_approved" and "campaign_name" in details:
        return f"Campaign “{details['campaign_name']}” started."
    if event.action == "transaction.review_dismissed" and "reason" in details:
        return f"No recovery: {details['reason']}"
    if "source" in details:
        return f"via {details['source']}"
    if "session_id" in details:
        until = str(details.get("expires_at", "?"))[:16].replace("T", " ")
        return f"{details['session_id']}, payable until {until} UTC"
    if "payment_link_id" in details:
        return str(details["payment_link_id"])
    return ""
