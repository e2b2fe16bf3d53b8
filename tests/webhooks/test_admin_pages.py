"""The admin pages of webhook events: filters, detail, replay, reconcile, the import setting."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import select

from recovery.extensions import db as _db
from recovery.models import (
    AuditEvent,
    Organization,
    Transaction,
    TransactionSource,
    WebhookState,
)
from recovery.queue import get_queue
from recovery.webhooks import jobs
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


# --- the admin pages ----------------------------------------------------------------------------


def test_admins_see_their_events_filtered_by_state_and_type(client, signed_in, recovering, make_org):
    paid = se.event(
        "checkout.session.completed", se.checkout_session(txn_of(recovering), id=recovering["session_id"])
    )
    failed = se.event(
        "payment_intent.payment_failed",
        se.payment_intent(txn_of(recovering), status="requires_payment_method"),
    )
    deliver(client, paid)
    deliver(client, failed)
    other_org = make_org(import_stripe_failures=True)
    foreign = se.event(
        "payment_intent.payment_failed",
        se.payment_intent(
            None, status="requires_payment_method", meta={"organization_id": str(other_org.id)}
        ),
    )
    deliver(client, foreign)
    signed_in("admin", org=reload(Organization, recovering["org_id"]))

    page = client.get("/webhooks").get_data(as_text=True)
    assert paid["id"] in page and failed["id"] in page and foreign["id"] not in page

    page = client.get("/webhooks?type=payment_intent.payment_failed").get_data(as_text=True)
    assert failed["id"] in page and paid["id"] not in page
    page = client.get("/webhooks?state=failed").get_data(as_text=True)
    assert paid["id"] not in page and "No events match" in page
    page = client.get(f"/webhooks?q={recovering['session_id']}").get_data(as_text=True)
    assert paid["id"] in page and failed["id"] not in page

    detail = client.get(f"/webhooks/{stored(paid['id']).id}").get_data(as_text=True)
    assert "stripe.payment_recovered" in detail  # the timeline entry it caused
    assert recovering["session_id"] in detail  # the raw payload
    assert "Process again" not in detail
    refused = client.post(f"/webhooks/{stored(paid['id']).id}/process")
    assert refused.status_code == 303  # refused (only failed or unmatched events), flashed, sent back
    assert stored(paid["id"]).status == WebhookState.PROCESSED

    assert client.get(f"/webhooks/{stored(foreign['id']).id}").status_code == 404

    # The transaction's own timeline links the event.
    txn_page = client.get(f"/transactions/{recovering['txn_id']}").get_data(as_text=True)
    assert f"/webhooks/{stored(paid['id']).id}" in txn_page


@pytest.mark.parametrize("role", ["viewer", "operator"])
def test_the_events_pages_are_for_admins(client, signed_in, role):
    signed_in(role)

    assert client.get("/webhooks").status_code == 403
    assert client.post("/webhooks/reconcile").status_code == 403
    assert client.post("/webhooks/settings", data={"import_stripe_failures": "y"}).status_code == 403


def test_reconcile_now_queues_the_job_and_is_audited(client, signed_in):
    user = signed_in("admin")

    response = client.post("/webhooks/reconcile")

    assert response.status_code == 302
    [job] = get_queue().jobs
    assert job.func_name.endswith("reconcile_checkout_sessions") and job.args == (user.organization_id,)
    assert _db.session.scalar(
        select(AuditEvent.action).where(AuditEvent.action == "webhook.reconcile_requested")
    )


def test_owners_switch_on_the_import_of_stripe_failures(client, signed_in):
    user = signed_in("owner")
    org_id = user.organization_id

    response = client.post("/webhooks/settings", data={"import_stripe_failures": "y"})

    assert response.status_code == 302
    assert reload(Organization, org_id).import_stripe_failures is True
    entry = _db.session.scalar(
        select(AuditEvent).where(AuditEvent.action == "organization.stripe_settings_changed")
    )
    assert entry.details["changes"] == {"import_stripe_failures": [False, True]}


@pytest.mark.parametrize("role", ["admin", "owner"])
def test_the_dashboard_cannot_link_a_stripe_account(client, signed_in, role):
    # The account's failed payments, with its customers' details, would become
    # this organization's: typing someone else's acct_ id must not claim it.
    org_id = signed_in(role).organization_id

    client.post(
        "/webhooks/settings", data={"import_stripe_failures": "y", "stripe_account_id": "acct_1Theirs"}
    )

    assert reload(Organization, org_id).stripe_account_id is None
    page = client.get("/webhooks").get_data(as_text=True)
    assert 'name="stripe_account_id"' not in page
    assert "flask link-stripe-account" in page


def test_the_events_page_shows_the_linked_account(client, signed_in):
    org_id = signed_in("admin").organization_id
    org = reload(Organization, org_id)
    org.stripe_account_id = "acct_1Linked"
    _db.session.commit()

    assert "<code>acct_1Linked</code>" in client.get("/webhooks").get_data(as_text=True)


def test_a_transaction_created_from_stripe_is_marked_so(client, make_org):
    org = make_org(import_stripe_failures=True)
    intent = se.payment_intent(None, status="requires_payment_method", meta={"organization_id": str(org.id)})
    deliver(client, se.event("payment_intent.payment_failed", intent))

    txn = _db.session.scalar(select(Transaction))
    assert txn.source == TransactionSource.STRIPE
    assert set(timeline_actions(txn.id)) == {"transaction.created", "stripe.payment_failed"}


@pytest.mark.parametrize("app_config", [{"STRIPE_TIMEOUT_SECONDS": 10, "STRIPE_MAX_NETWORK_RETRIES": 2}])
def test_stripe_job_timeouts_cover_every_retry(app):
    from recovery.payments import jobs as payment_jobs
    from recovery.payments.gateway import StripeSettings

    worst = StripeSettings.from_config(app.config).worst_case_seconds
    assert worst == 3 * 10 + 2 * 2  # three tries of 10 s, and stripe-python's waits between them
    assert payment_jobs.stripe_job_timeout(1) > worst
    assert payment_jobs.stripe_job_timeout(payment_jobs.CLOSE_CALLS) > payment_jobs.CLOSE_CALLS * worst
    job = jobs.enqueue_processing("evt_timeout_check")
    assert job.timeout >= payment_jobs.stripe_job_timeout(1)
