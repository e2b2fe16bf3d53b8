"""Events about nothing we know, of the other mode, or contradicting our records: kept, never applied."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import func, select

from recovery.extensions import db as _db
from recovery.models import (
    PaymentFulfilment,
    Transaction,
    TransactionStatus,
    WebhookState,
)
from tests.fixtures import stripe_events as se
from tests.fixtures.webhooks import (
    deliver,
    reload,
    stored,
    timeline_actions,
    txn_of,
)


@pytest.fixture
def app_config() -> dict[str, Any]:
    return {"STRIPE_WEBHOOK_SECRET": se.SECRET, "STRIPE_WEBHOOK_RETRY_SECONDS": "0,0"}


# --- unknown, unmatched, refused ------------------------------------------------------------


@pytest.mark.parametrize(
    ("app_config", "livemode"),
    [
        ({"STRIPE_WEBHOOK_SECRET": se.SECRET, "STRIPE_SECRET_KEY": "sk_live_configured"}, False),
        ({"STRIPE_WEBHOOK_SECRET": se.SECRET, "STRIPE_SECRET_KEY": "sk_test_configured"}, True),
    ],
)
def test_an_event_of_the_other_mode_than_our_key_is_kept_and_ignored(client, recovering, livemode):
    """Stripe sends connected accounts' test-mode events to live endpoints too."""
    evt = se.event(
        "payment_intent.payment_failed",
        se.declined(txn_of(recovering)),
    )
    evt["livemode"] = livemode

    assert deliver(client, evt) == WebhookState.IGNORED

    assert stored(evt["id"]).last_error.startswith(f"Ignored: a {'live' if livemode else 'test'}-mode event")
    assert timeline_actions(recovering["txn_id"]) == []


def test_an_unknown_type_is_stored_and_ignored(client):
    evt = se.event("customer.subscription.created", {"id": "sub_1", "object": "subscription"})

    assert deliver(client, evt) == WebhookState.IGNORED
    assert stored(evt["id"]).last_error is None


def test_an_event_about_nothing_we_know_is_unmatched_not_an_error(client, log_lines):
    evt = se.event("checkout.session.completed", se.checkout_session(None, meta={}))

    assert deliver(client, evt) == WebhookState.UNMATCHED
    assert stored(evt["id"]).last_error is None
    assert any(e["event"] == "stripe_webhook_unmatched" for e in log_lines())


def test_metadata_naming_another_organization_is_refused(client, recovering, make_org, log_lines):
    other = make_org()
    # The session is ours (org A) but its metadata claims organization B.
    session = se.checkout_session(
        txn_of(recovering),
        id=recovering["session_id"],
        meta=se.metadata(txn_of(recovering), organization_id=other.id),
    )
    evt = se.event("checkout.session.completed", session)

    assert deliver(client, evt) == WebhookState.UNMATCHED

    row = stored(evt["id"])
    assert row.last_error.startswith("Refused: metadata names organization")
    assert row.organization_id is None  # shown to neither organization
    assert reload(Transaction, recovering["txn_id"]).status == TransactionStatus.RECOVERING
    assert _db.session.scalar(select(func.count()).select_from(PaymentFulfilment)) == 0
    assert any(e["event"] == "stripe_webhook_refused" for e in log_lines())


def test_a_session_of_one_organization_claimed_by_metadata_of_another_transaction(
    client, recovering, make_transaction
):
    stranger = make_transaction()  # another organization's transaction
    stranger_id = stranger.id
    session = se.checkout_session(stranger, id=recovering["session_id"])

    assert deliver(client, se.event("checkout.session.completed", session)) == WebhookState.UNMATCHED

    assert reload(Transaction, stranger_id).status == TransactionStatus.FAILED
    assert reload(Transaction, recovering["txn_id"]).status == TransactionStatus.RECOVERING
