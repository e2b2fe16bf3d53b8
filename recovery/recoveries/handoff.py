"""Handing a claimed message to its provider: the hand-off committed first, then the call.

Each message's hand-off is committed just before its provider call, so a
worker killed during the call leaves that message, and only it, handed off
without an answer: `repair.repair_abandoned` reports it as unknown, never as
sent, and sends again every claim never handed off.
"""

from __future__ import annotations

import time
from datetime import timedelta

from sqlalchemy import update

from recovery.logs import get_logger
from recovery.messaging.providers import Delivery, Outcome, OutgoingEmail, Postman
from recovery.models import Message, MessageStatus, Provider, utcnow
from recovery.models.base import DbSession
from recovery.recoveries.messages import Outgoing
from recovery.unit_of_work import commit_now

log = get_logger("recovery.recoveries")

M = MessageStatus

# A batch starts no new delivery after this long; the rest are retried a minute later.
BATCH_SENDING_SECONDS = 60
# A claim still not handed to its provider this long after it was made belongs to a run
# that stopped (a live batch starts no hand-off after BATCH_SENDING_SECONDS): the message
# never left, and is sent again.
CLAIM_ABANDONED = timedelta(seconds=BATCH_SENDING_SECONDS + 60)
# A hand-off still unanswered this long after it began lost its worker during the
# provider call: the provider may have the message, so it is reported as unknown.
# Longer than a send job may live (recovery.recoveries.scheduling.SEND_JOB_TIMEOUT).
HANDOFF_ABANDONED = timedelta(minutes=10)


def hand_off(
    session: DbSession, postman: Postman, item: Outgoing, tries: int, deadline: float
) -> Delivery | None:
    """Hand one claimed message to its provider, the hand-off committed first; None if the claim was lost.

    The commit also carries what the batch recorded since the last one (the
    previous message's answer): a crash from here on leaves this message, and
    only it, handed off without an answer. Unless the batch's time is up: then
    it is not handed off and is retried shortly by a later job, which keeps a
    batch well inside its job's timeout however slow the provider.
    """
    if time.monotonic() > deadline:
        late = "Not sent: the batch ran out of time; tried again shortly."
        return Delivery(Outcome.RETRY, _provider_of(item), error=late)
    at = utcnow()
    marked = session.execute(
        update(Message)
        .where(
            Message.id == item.message_id,
            Message.status == M.SENDING,
            Message.tries == tries,
            Message.handed_off_at.is_(None),
        )
        .values(handed_off_at=at, updated_at=at)
        .execution_options(synchronize_session=False)
    )
    # Keeping the batch's loaded rows: the next answer is recorded without reading them again.
    commit_now(session, "the hand-off must be on record before the provider has the message", keep_state=True)
    if marked.rowcount != 1:  # type: ignore[attr-defined]  # a DML result has a rowcount
        # A slow run whose claim `repair.repair_abandoned` gave to another: theirs now.
        log.warning("recovery_message_claim_lost", message_id=item.message_id)
        return None
    return _safe_deliver(postman, item)


def _safe_deliver(postman: Postman, item: Outgoing) -> Delivery:
    """Deliver one message of a batch; an unexpected error makes that message unknown, not the batch.

    Left unrecorded, the batch's other claimed messages would never go out.
    Not retried: the error may have come after the provider accepted the
    message, and a retry could duplicate it.
    """
    try:
        return _deliver(postman, item)
    except Exception as error:  # recorded on the message and logged with its traceback
        log.exception("recovery_message_error", message_id=item.message_id)
        text = f"Unknown — check the provider: {type(error).__name__}: {error}"[:300]
        return Delivery(Outcome.UNKNOWN, _provider_of(item), error=text)


def _provider_of(item: Outgoing) -> str:
    return Provider.SMTP if isinstance(item, OutgoingEmail) else Provider.TWILIO


def _deliver(postman: Postman, item: Outgoing) -> Delivery:
    if isinstance(item, OutgoingEmail):
        return postman.send_email(item)
    return postman.send_sms(item)
