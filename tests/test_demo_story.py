"""The demo tells the story a real account would: every row made by the product's own services."""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import pytest
from sqlalchemy import select

from recovery.demo import seed
from recovery.models import (
    AttemptStatus,
    AuditEvent,
    Message,
    MessageStatus,
    PaymentFulfilment,
    RecoveryAttempt,
    Transaction,
    TransactionStatus,
    WebhookEvent,
)
from recovery.models.recovery_attempt import ATTEMPT_TRANSITIONS
from recovery.models.transaction import TRANSACTION_TRANSITIONS
from recovery.transactions.timeline import timeline

S = TransactionStatus
A = AttemptStatus
NOW = datetime(2026, 12, 7, 15, 0, tzinfo=UTC)


def reachable(table: Mapping[str, frozenset[str]], start: str) -> set[str]:
    seen, todo = {start}, deque([start])
    while todo:
        for nxt in table[todo.popleft()]:
            if nxt not in seen:
                seen.add(nxt)
                todo.append(nxt)
    return seen


@pytest.fixture
def story(db: Any) -> dict[str, Any]:
    result = seed(db.session, now=NOW)
    db.session.commit()
    db.session.expire_all()
    org_id = result.organization.id
    transactions = db.session.scalars(select(Transaction).where(Transaction.organization_id == org_id)).all()
    attempts = db.session.scalars(
        select(RecoveryAttempt).where(RecoveryAttempt.organization_id == org_id)
    ).all()
    by_txn: dict[int, list[RecoveryAttempt]] = {}
    for attempt in sorted(attempts, key=lambda a: a.created_at):
        by_txn.setdefault(attempt.transaction_id, []).append(attempt)
    return {"result": result, "transactions": transactions, "attempts": by_txn}


def test_every_recovered_demo_row_has_its_recovery_messages_payment_and_timeline(db, story):
    recovered = [t for t in story["transactions"] if t.status == S.RECOVERED]
    assert len(recovered) >= 10
    for txn in recovered:
        attempts = story["attempts"].get(txn.id, [])
        assert [a.status for a in attempts] == [A.COMPLETED], txn.transaction_ref
        assert attempts[0].completed_at == txn.recovered_at and attempts[0].messages_sent >= 1
        sent = db.session.scalars(
            select(Message).where(Message.attempt_id == attempts[0].id, Message.status == MessageStatus.SENT)
        ).all()
        assert sent and all(m.provider == "outbox" for m in sent)
        assert all(m.sent_at < txn.recovered_at for m in sent)
        fulfilment = db.session.scalar(
            select(PaymentFulfilment).where(PaymentFulfilment.transaction_id == txn.id)
        )
        assert fulfilment is not None and fulfilment.attempt_id == attempts[0].id
        assert (fulfilment.amount, fulfilment.currency) == (txn.amount, txn.currency)
        event = db.session.get(WebhookEvent, fulfilment.webhook_event_id)
        assert event.type == "checkout.session.completed" and event.status == "processed"
        titles = [entry.title for entry in timeline(db.session, txn)]
        assert titles[:2] == ["Payment failed", "Created"], titles
        assert "Recovery started" in titles and "Customer opened the payment link" in titles
        assert titles[-1] == "Recovered", titles
        # The story happens in order, in the past.
        times = [entry.at for entry in timeline(db.session, txn)]
        assert times == sorted(times) and times[-1] <= NOW


def test_no_demo_row_is_in_a_state_the_transitions_could_not_reach(db, story):
    transaction_states = reachable(TRANSACTION_TRANSITIONS, S.FAILED)
    attempt_states = reachable(ATTEMPT_TRANSITIONS, A.CREATED)
    seen = {t.status for t in story["transactions"]}
    assert seen <= transaction_states
    # Each state the demo means to show is there.
    assert seen == {S.FAILED, S.RECOVERING, S.RECOVERED, S.UNRECOVERED, S.CANCELLED}
    for txn in story["transactions"]:
        attempts = story["attempts"].get(txn.id, [])
        assert {a.status for a in attempts} <= attempt_states
        active = [a for a in attempts if a.is_active]
        last = attempts[-1] if attempts else None
        ref = txn.transaction_ref
        # The same invariants the services keep: a recovering transaction has exactly one
        # running recovery and nothing else has one; an unrecovered one ran out.
        assert len(active) == (1 if txn.status == S.RECOVERING else 0), ref
        if txn.status == S.UNRECOVERED:
            assert last is not None and last.status == A.EXHAUSTED, ref
            assert last.step == len(last.schedule_days) and last.messages_sent >= last.step, ref
        if txn.status == S.CANCELLED:
            assert txn.closed_at is not None and txn.closed_by == "owner@demo.example", ref
            assert txn.closed_reason == "Paid by bank transfer"
        else:
            assert txn.closed_at is None, ref
        if txn.status == S.FAILED and last is not None:
            assert last.status == A.CANCELLED, ref
        for attempt in attempts:
            assert (attempt.ended_at is None) == attempt.is_active, ref
            assert attempt.created_at >= txn.failed_at, ref
    # A recovery staff cancelled leaves its transaction open (failed), and the timeline says who.
    cancelled = [
        t
        for t in story["transactions"]
        if t.status == S.FAILED and [a.status for a in story["attempts"].get(t.id, [])] == [A.CANCELLED]
    ]
    assert cancelled
    for txn in cancelled:
        assert "Recovery cancelled" in [entry.title for entry in timeline(db.session, txn)]
        actors = db.session.scalars(
            select(AuditEvent.actor_label).where(
                AuditEvent.transaction_id == txn.id, AuditEvent.action == "recovery.cancelled"
            )
        ).all()
        assert actors == ["owner@demo.example"]
