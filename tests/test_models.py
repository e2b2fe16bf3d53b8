"""Status transitions: one table per model, illegal moves refused."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from recovery.models import (
    AttemptStatus,
    CsvImport,
    IllegalTransition,
    ImportStatus,
    Message,
    MessageStatus,
    RecoveryAttempt,
    Transaction,
    TransactionStatus,
    WebhookEvent,
    WebhookState,
)

T = TransactionStatus
A = AttemptStatus
M = MessageStatus


@pytest.mark.parametrize(
    ("start", "new"),
    [
        (T.FAILED, T.RECOVERING),
        (T.RECOVERING, T.RECOVERED),
        (T.RECOVERING, T.UNRECOVERED),
        (T.RECOVERING, T.FAILED),  # its recovery was cancelled: open again
        (T.UNRECOVERED, T.RECOVERED),  # a late payment still counts
        (T.FAILED, T.CANCELLED),  # closed by staff
        (T.CANCELLED, T.FAILED),  # reopened
        (T.CANCELLED, T.RECOVERED),  # paid all the same
        (T.RECOVERED, T.REFUNDED),
    ],
)
def test_transaction_allowed_moves(start: str, new: str) -> None:
    transaction = Transaction(status=start)
    assert transaction.transition(new) is True
    assert transaction.status == new


@pytest.mark.parametrize(
    ("start", "new"),
    [
        (T.RECOVERED, T.FAILED),
        (T.RECOVERED, T.RECOVERING),
        (T.RECOVERED, T.CANCELLED),
        (T.RECOVERED, T.UNRECOVERED),
        (T.REFUNDED, T.RECOVERED),
        (T.RECOVERING, T.CANCELLED),  # closing cancels the recovery first
        (T.CANCELLED, T.RECOVERING),  # a closed transaction is reopened first
        (T.FAILED, T.REFUNDED),
    ],
)
def test_transaction_illegal_moves_are_refused(start: str, new: str) -> None:
    transaction = Transaction(status=start)
    with pytest.raises(IllegalTransition) as error:
        transaction.transition(new)
    assert transaction.status == start
    assert start in str(error.value) and new in str(error.value)


def test_same_status_is_a_no_op_and_unknown_status_is_an_error() -> None:
    transaction = Transaction(status=T.FAILED)
    assert transaction.transition(T.FAILED) is False
    with pytest.raises(ValueError, match="unknown status"):
        transaction.transition("paid")


@pytest.mark.parametrize(
    ("model", "start", "allowed", "refused"),
    [
        (RecoveryAttempt, A.CREATED, A.SCHEDULED, None),
        (RecoveryAttempt, A.NOTIFIED, A.CLICKED, A.SCHEDULED),
        (RecoveryAttempt, A.EXPIRED, A.COMPLETED, A.NOTIFIED),
        (RecoveryAttempt, A.COMPLETED, None, A.EXPIRED),
        (RecoveryAttempt, A.CANCELLED, None, A.SCHEDULED),
        (Message, M.SENT, M.DELIVERED, M.QUEUED),
        (Message, M.DELIVERED, None, M.SENT),
        (Message, M.UNDELIVERABLE, None, M.DELIVERED),
        (WebhookEvent, WebhookState.PENDING, WebhookState.PROCESSED, None),
        (WebhookEvent, WebhookState.PROCESSED, None, WebhookState.PENDING),
        (CsvImport, ImportStatus.RUNNING, ImportStatus.DONE, ImportStatus.QUEUED),
        (CsvImport, ImportStatus.DONE, None, ImportStatus.RUNNING),
    ],
)
def test_other_models_follow_their_tables(
    model: type, start: str, allowed: str | None, refused: str | None
) -> None:
    if allowed:
        obj = model(status=start)
        assert obj.transition(allowed)
    if refused:
        obj = model(status=start)
        with pytest.raises(IllegalTransition):
            obj.transition(refused)
        assert obj.status == start


def test_every_status_has_a_row_in_its_table() -> None:
    for model, statuses in [
        (Transaction, T.ALL),
        (RecoveryAttempt, A.ALL),
        (Message, M.ALL),
        (WebhookEvent, WebhookState.ALL),
    ]:
        assert set(model.TRANSITIONS) == set(statuses), model
        for targets in model.TRANSITIONS.values():
            assert targets <= set(statuses), model


def test_timestamps_come_back_aware_from_the_database(db, make_transaction) -> None:
    failed_at = datetime(2025, 1, 19, 10, 0, tzinfo=UTC)
    transaction = make_transaction(failed_at=failed_at)
    db.session.expire_all()
    reloaded = db.session.get(Transaction, transaction.id)
    assert reloaded.failed_at == failed_at
    assert reloaded.failed_at.tzinfo is not None
    assert reloaded.created_at > failed_at


def test_naive_datetimes_are_refused(db, make_transaction) -> None:
    with pytest.raises(Exception, match="naive datetime"):
        make_transaction(failed_at=datetime(2025, 1, 19) - timedelta(days=1))
    db.session.rollback()
