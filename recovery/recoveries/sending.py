"""Sending each step of an attempt's schedule: a batch of due sends over one SMTP connection.

A send job's batch claims (recovery/recoveries/claims.py), hands off
(handoff.py) and records the answers (answers.py). It commits on purpose in
the middle: the claims before any provider is called, so that a job that runs
twice, or is retried after a crash, sends once; and each message's hand-off
before its call, so that after a crash the messages that never left are told
apart from the one that may have (recovery/recoveries/repair.py,
docs/fault-model.md).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime

from sqlalchemy import select

from recovery.campaigns import engine
from recovery.messaging.contacts import BatchContacts
from recovery.messaging.providers import Outcome, OutgoingSms, Postman
from recovery.models import Message, Organization, RecoveryAttempt
from recovery.models.base import DbSession
from recovery.recoveries.answers import Answer, SendResult, finish_step, record_answers, record_locked
from recovery.recoveries.claims import (
    Claims,
    claim,
    fill_batch,
    lock_attempt,
    lock_with_step_messages,
    messages_at_steps,
    stop_reason,
    store_claims,
)
from recovery.recoveries.handoff import BATCH_SENDING_SECONDS, hand_off
from recovery.recoveries.messages import Outgoing
from recovery.recoveries.paying import paid_at_stripe
from recovery.unit_of_work import commit_now


@dataclass(frozen=True)
class BatchSent:
    """What a batch did: one result per attempt, the asked sends first."""

    results: list[SendResult]
    # (attempt id, step, due) of each send taken to fill the batch: a job
    # waiting to send it is redundant now (it would find nothing to do).
    taken: list[tuple[int, int, datetime]]
    # (message id, tries) of texts Twilio may or may not have taken: to look up in its list.
    unknown_sms: list[tuple[int, int]] = field(default_factory=list)


@dataclass
class _Run:
    """One batch as it goes: what it works with, and what it found so far."""

    session: DbSession
    postman: Postman
    base_url: str
    now: datetime
    # Attempt ids in the batch's order; kept aside, since reading attempt.id after a
    # commit would reload the row.
    order: list[int]
    # The step each attempt was asked to send.
    steps: dict[int, int]
    contacts: BatchContacts
    # Held for the batch: the identity map keeps objects weakly, and each
    # `session.get(Organization, ...)` or attempt.transaction of the checks
    # would otherwise query again.
    held: list[object]
    results: dict[int, SendResult] = field(default_factory=dict)
    # Each claim's fence: the `tries` it was claimed with (see `claims.claim`).
    tries: dict[int, int] = field(default_factory=dict)
    unknown_sms: list[tuple[int, int]] = field(default_factory=list)


def send_batch(
    session: DbSession,
    postman: Postman,
    sends: Sequence[tuple[int, int]],
    *,
    base_url: str,
    now: datetime,
    size: int = 1,
) -> BatchSent:
    """Send the asked (attempt id, step) sends, plus other due ones up to `size`, over one SMTP connection.

    Each message keeps the guarantees of a single send: its attempt is locked
    and re-checked (`claims.stop_reason`) right before it is claimed; its unique
    key (attempt, step, channel) is committed before any provider is called, so
    a batch that runs twice, or overlaps another, sends each message once; each
    provider answer is recorded on its own message (a transient failure is
    retried with backoff as for one send, and fails nobody else). The claims
    take one commit; then each message one more, made just before its
    provider call, which records its hand-off and the previous message's
    answer: a worker killed at any point leaves at most one message whose fate
    is unknown, and every other claim either answered or plainly never sent.
    """
    batch, missing, taken = _lock_batch(session, sends, now, size)
    run = _start(session, postman, batch, base_url=base_url, now=now)
    pending = _store(run, _first_claims(run, batch))
    # Kept loaded (the transactions, organizations): each attempt's decision below
    # re-reads and locks what can change under it, the attempt and its messages.
    commit_now(session, "the claims must be on record before any provider is called", keep_state=True)
    deadline = time.monotonic() + BATCH_SENDING_SECONDS
    with postman.session():
        while pending:
            claims: Claims = {}
            for attempt_id in sorted(pending):
                # One message at a time: no lock is held while a provider talks, and
                # each answer is recorded (committed with the next hand-off) before
                # the next message leaves.
                answers, dead = _hand_off_all(run, attempt_id, pending[attempt_id], deadline)
                more = _settle(run, attempt_id, answers, dead)
                if more is not None:
                    claims[attempt_id] = more
            pending = _store(run, claims)
            commit_now(session, "the round's answers are recorded before the fallback's claims are sent")
    ordered = missing + [run.results[attempt_id] for attempt_id in run.order]
    return BatchSent(ordered, taken, run.unknown_sms)


def send_due(
    session: DbSession, postman: Postman, attempt_id: int, step: int, *, base_url: str, now: datetime
) -> SendResult:
    """Send step `step` of the attempt if it is still due, and schedule what follows.

    A batch of one (see `send_batch` for the guarantees). Commits.
    """
    return send_batch(session, postman, [(attempt_id, step)], base_url=base_url, now=now).results[0]


def _lock_batch(
    session: DbSession, sends: Sequence[tuple[int, int]], now: datetime, size: int
) -> tuple[list[tuple[RecoveryAttempt, int]], list[SendResult], list[tuple[int, int, datetime]]]:
    """Lock the asked attempts, then due others up to `size`.

    Returns the batch's (attempt, step)s, the asked attempts that do not
    exist, and the (attempt id, step, due) of the others taken along.
    """
    asked = sorted(set(sends))  # one lock order for every batch: no deadlock between them
    batch: list[tuple[RecoveryAttempt, int]] = []
    missing: list[SendResult] = []
    for attempt_id, step in asked:
        attempt = lock_attempt(session, attempt_id)
        if attempt is None:
            missing.append(SendResult("missing", attempt_id, step, None))
        else:
            batch.append((attempt, step))
    # Only now the others, without waiting: a batch waits for no lock while holding a filler's.
    fillers = fill_batch(session, now, size - len(asked), exclude=[a for a, _ in asked])
    taken = [(a.id, a.step, a.next_send_at) for a in fillers if a.next_send_at is not None]
    batch += [(attempt, attempt.step) for attempt in fillers]
    return batch, missing, taken


def _start(
    session: DbSession,
    postman: Postman,
    batch: list[tuple[RecoveryAttempt, int]],
    *,
    base_url: str,
    now: datetime,
) -> _Run:
    """The batch's run, with its organizations, transactions and suppressed contacts read once."""
    organizations = list(
        session.scalars(
            select(Organization).where(Organization.id.in_({a.organization_id for a, _ in batch}))
        )
    )
    transactions = [attempt.transaction for attempt, _ in batch]
    return _Run(
        session,
        postman,
        base_url,
        now,
        order=[attempt.id for attempt, _ in batch],
        steps={attempt.id: step for attempt, step in batch},
        contacts=BatchContacts(session, transactions),
        held=[*organizations, *transactions],
    )


def _first_claims(run: _Run, batch: list[tuple[RecoveryAttempt, int]]) -> Claims:
    """Re-check each attempt and claim what its step owes; an attempt with nothing to send is settled."""
    session = run.session
    paid = paid_at_stripe(session, [attempt.transaction_id for attempt, _ in batch])
    at_step = messages_at_steps(session, [attempt for attempt, _ in batch])
    run.held.append(at_step)  # the step's messages, read again by `session.get` when answers come
    claims: Claims = {}
    for attempt, step in batch:
        stop = stop_reason(attempt, step, run.now, is_paid_at_stripe=attempt.transaction_id in paid)
        if stop is not None:
            run.results[attempt.id] = _ended(attempt, stop)
            continue
        if attempt.plan is not None and not attempt.is_message_step:
            # A campaign's card retry or staff alert: the engine does it and moves the attempt on.
            run.results[attempt.id] = engine.run_step(
                session, attempt, step, now=run.now, base_url=run.base_url
            )
            continue
        suppressed = run.contacts.suppressed(attempt.transaction)
        claimed = claim(session, attempt, at_step[attempt.id], suppressed, run.base_url, run.now)
        if claimed:
            claims[attempt.id] = (attempt, claimed)
        else:
            run.results[attempt.id] = finish_step(
                session, attempt, step, run.now, at_step[attempt.id], suppressed
            )
    return claims


def _store(run: _Run, claims: Claims) -> dict[int, list[Outgoing]]:
    """Store the claims; the messages to send, by attempt id. Each claim's `tries` is kept as its fence."""
    pending = store_claims(run.session, claims, run.base_url)
    run.results |= _lost_claims(claims, pending, run.steps)
    run.tries |= {message.id: message.tries for _, messages in claims.values() for message in messages}
    return pending


def _hand_off_all(
    run: _Run, attempt_id: int, items: list[Outgoing], deadline: float
) -> tuple[list[Answer], bool]:
    """Hand off the attempt's claimed messages one by one.

    Returns the answers not yet recorded, and whether an address died.
    """
    answers: list[Answer] = []
    dead = False
    for item in items:
        if answers:  # the attempt's other channel: its first answer goes in first
            dead = record_locked(run.session, attempt_id, answers, run.now, run.contacts) or dead
            answers = []
        tries = run.tries[item.message_id]
        delivery = hand_off(run.session, run.postman, item, tries, deadline)
        if delivery is not None:
            answers.append((item.message_id, tries, delivery))
            if delivery.outcome == Outcome.UNKNOWN and isinstance(item, OutgoingSms):
                run.unknown_sms.append((item.message_id, tries))
    return answers, dead


def _settle(
    run: _Run, attempt_id: int, answers: list[Answer], dead: bool
) -> tuple[RecoveryAttempt, list[Message]] | None:
    """Record the last answers under the attempt's lock; then claim the other channel, or finish the step."""
    session = run.session
    attempt, step_messages = lock_with_step_messages(session, attempt_id)
    # Written in one UPDATE per row at the next commit, not flushed bit by bit.
    with session.no_autoflush:
        dead = record_answers(session, attempt, answers, run.now, run.contacts) or dead
        suppressed = run.contacts.suppressed(attempt.transaction)
        # A dead address at this step: the other channel, if allowed, takes over at once.
        if dead and attempt.is_active:
            more = claim(session, attempt, step_messages, suppressed, run.base_url, run.now)
            if more:
                return attempt, more
        step = run.steps[attempt_id]
        if attempt.is_active:
            run.results[attempt_id] = finish_step(session, attempt, step, run.now, step_messages, suppressed)
        else:
            run.results[attempt_id] = SendResult("inactive", attempt_id, step, None)
    return None


def _ended(attempt: RecoveryAttempt, outcome: str) -> SendResult:
    return SendResult(outcome, attempt.id, attempt.step, attempt.next_send_at if attempt.is_active else None)


def _lost_claims(
    claims: Claims, stored: dict[int, list[Outgoing]], steps: dict[int, int]
) -> dict[int, SendResult]:
    """Attempts whose every claim another run stored first (SQLite, which has no row locks).

    That run sends them and finishes the step; this one leaves it alone.
    """
    return {
        attempt_id: SendResult("in_progress", attempt_id, steps[attempt_id], attempt.next_send_at)
        for attempt_id, (attempt, _) in claims.items()
        if attempt_id not in stored
    }
