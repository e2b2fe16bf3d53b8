"""/v1/rules and the rules' part of /v1/recoveries and /v1/transactions: roles, versions, tenancy, errors."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from flask.testing import FlaskClient
from sqlalchemy import select

from recovery.models import Organization, RecoveryAttempt, RecoveryRule, Role, Transaction
from tests.rules.conftest import campaign, rules_of

HOLD = {
    "name": "Big ones: review",
    "conditions": [{"type": "amount", "currency": "usd", "min": 100_000, "max": None}],
    "action": "hold_for_review",
    "reason": "Over $1,000: staff call first.",
}


@pytest.fixture
def admin(rules_org: Organization, token_for: Callable[..., dict[str, str]]) -> dict[str, str]:
    return token_for(rules_org, Role.ADMIN)


def test_the_rules_are_listed_in_order_with_the_set_version(
    client: FlaskClient, rules_org: Organization, token_for: Callable[..., dict[str, str]]
) -> None:
    response = client.get("/v1/rules", headers=token_for(rules_org, Role.VIEWER))
    assert response.status_code == 200
    body = response.get_json()
    assert body["object"] == "list" and response.headers["ETag"] == f'"{body["version"]}"'
    assert [r["position"] for r in body["data"]] == [0, 1, 2, 3]
    assert (
        body["data"][-1]["is_default"]
        and body["data"][-1]["description"] == "everything no rule above catches"
    )
    assert body["data"][1]["description"] == "the decline category is “Card may work again”"


def test_create_edit_delete_with_versions(
    client: FlaskClient, db: Any, rules_org: Organization, admin: dict[str, str]
) -> None:
    created = client.post("/v1/rules", json=HOLD, headers=admin)
    assert created.status_code == 201, created.get_json()
    rule = created.get_json()
    assert rule["position"] == 3 and rule["version"] == 1 and created.headers["ETag"] == '"1"'
    assert created.headers["Location"].endswith(f"/v1/rules/{rule['id']}")
    url = f"/v1/rules/{rule['id']}"
    assert client.patch(url, json={"enabled": False}, headers=admin).status_code == 428
    edited = client.patch(url, json={"enabled": False}, headers={**admin, "If-Match": '"1"'})
    assert edited.status_code == 200 and edited.get_json()["version"] == 2
    stale = client.patch(url, json={"name": "x", "version": 1}, headers=admin)
    assert stale.status_code == 409 and stale.get_json()["error"]["type"] == "conflict"
    assert client.delete(url, headers={**admin, "If-Match": '"1"'}).status_code == 409
    assert client.delete(url, headers={**admin, "If-Match": '"2"'}).status_code == 204
    assert client.get(url, headers=admin).status_code == 404
    default = rules_of(db, rules_org)[-1]
    refused = client.delete(f"/v1/rules/{default.id}", headers={**admin, "If-Match": '"1"'})
    assert refused.status_code == 409 and "default" in refused.get_json()["error"]["message"]


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"conditions": [{"type": "country_in", "values": ["XX"]}]}, "conditions[0].values"),
        ({"conditions": [{"type": "amount", "currency": "usd", "min": 5, "max": 1}]}, "conditions[0].min"),
        ({"conditions": [{"type": "amount", "currency": "abc", "min": 5}]}, "conditions[0].currency"),
        ({"conditions": [{"type": "shoe_size", "values": ["9"]}]}, "conditions[0].type"),
        ({"action": "start_campaign", "campaign_id": 10**9}, "campaign_id"),
        ({"priority": 1}, "priority"),
        ({"name": ""}, "name"),
    ],
)
def test_a_bad_rule_is_422_naming_the_field(
    client: FlaskClient, rules_org: Organization, admin: dict[str, str], change: dict[str, Any], field: str
) -> None:
    response = client.post("/v1/rules", json={**HOLD, **change}, headers=admin)
    assert response.status_code == 422
    assert field in response.get_json()["error"]["fields"]


def test_writes_need_an_admin(
    client: FlaskClient, rules_org: Organization, token_for: Callable[..., dict[str, str]]
) -> None:
    operator = token_for(rules_org, Role.OPERATOR)
    assert client.post("/v1/rules", json=HOLD, headers=operator).status_code == 403
    assert (
        client.post("/v1/rules/reorder", json={"ids": [], "version": 1}, headers=operator).status_code == 403
    )
    assert client.post("/v1/rules/preview", headers=token_for(rules_org, Role.VIEWER)).status_code == 200


def test_another_organizations_rules_and_campaigns_are_out_of_reach(
    client: FlaskClient,
    db: Any,
    rules_org: Organization,
    admin: dict[str, str],
    make_rules_org: Callable[..., Organization],
) -> None:
    other = make_rules_org()
    theirs = rules_of(db, other)[0]
    url = f"/v1/rules/{theirs.id}"
    assert client.get(url, headers=admin).status_code == 404
    assert client.patch(url, json={"enabled": False}, headers={**admin, "If-Match": '"1"'}).status_code == 404
    assert client.delete(url, headers={**admin, "If-Match": '"1"'}).status_code == 404
    their_campaign = campaign(db, other, "soft_decline").id
    response = client.post(
        "/v1/rules", json={**HOLD, "action": "start_campaign", "campaign_id": their_campaign}, headers=admin
    )
    assert response.status_code == 422 and "campaign_id" in response.get_json()["error"]["fields"]
    mine = rules_of(db, rules_org)
    mixed = [theirs.id, *[r.id for r in mine[:2]]]
    reorder = client.post(
        "/v1/rules/reorder", json={"ids": mixed, "version": rules_org.rules_version}, headers=admin
    )
    assert reorder.status_code == 422
    db.session.refresh(theirs)
    assert theirs.position == 0


def test_reorder_takes_the_set_version(
    client: FlaskClient, db: Any, rules_org: Organization, admin: dict[str, str]
) -> None:
    first, second, third, default = rules_of(db, rules_org)
    version = client.get("/v1/rules", headers=admin).get_json()["version"]
    ids = [third.id, first.id, second.id]
    assert client.post("/v1/rules/reorder", json={"ids": ids}, headers=admin).status_code == 428
    response = client.post(
        "/v1/rules/reorder", json={"ids": ids}, headers={**admin, "If-Match": f'"{version}"'}
    )
    assert response.status_code == 200
    assert [r["id"] for r in response.get_json()["data"]] == [*ids, default.id]
    assert response.get_json()["version"] == version + 1
    stale = client.post("/v1/rules/reorder", json={"ids": ids, "version": version}, headers=admin)
    assert stale.status_code == 409
    bad = client.post("/v1/rules/reorder", json={"ids": ids[:2], "version": version + 1}, headers=admin)
    assert bad.status_code == 422 and "ids" in bad.get_json()["error"]["fields"]


def test_preview_saved_and_unsaved(
    client: FlaskClient,
    db: Any,
    rules_org: Organization,
    admin: dict[str, str],
    make_transaction: Callable[..., Transaction],
) -> None:
    make_transaction(rules_org, failure_code="insufficient_funds", amount=12345)
    make_transaction(rules_org, failure_code="duplicate_transaction", amount=500, currency="eur")
    saved = client.post("/v1/rules/preview", headers=admin)
    assert saved.status_code == 200
    body = saved.get_json()
    assert [(r["name"], r["count"], r["amounts"]) for r in body["rules"]][1] == (
        "Card may work again: retry it",
        1,
        {"usd": 12345},
    )
    assert body["unmatched"] == {"count": 1, "amounts": {"eur": 500}}
    unsaved = client.post(
        "/v1/rules/preview",
        json={
            "rules": [
                {
                    "name": "Euros",
                    "conditions": [{"type": "currency_in", "values": ["eur"]}],
                    "action": "hold_for_review",
                }
            ]
        },
        headers=admin,
    )
    assert unsaved.status_code == 200
    assert [(r["rule_id"], r["name"], r["count"]) for r in unsaved.get_json()["rules"]] == [
        (None, "Euros", 1),
        (rules_of(db, rules_org)[-1].id, "Everything else", 1),
    ]
    bad = client.post(
        "/v1/rules/preview",
        json={"rules": [{"name": "x", "conditions": [{"type": "country_in", "values": ["QQ"]}]}]},
        headers=admin,
    )
    assert bad.status_code == 422 and "rules[0].conditions[0].values" in bad.get_json()["error"]["fields"]
    assert client.post("/v1/rules/preview", json={"rulez": []}, headers=admin).status_code == 422


def test_explain(
    client: FlaskClient,
    rules_org: Organization,
    admin: dict[str, str],
    make_transaction: Callable[..., Transaction],
) -> None:
    transaction = make_transaction(rules_org, failure_code="expired_card")
    response = client.post(
        "/v1/rules/explain", json={"transaction_ref": transaction.transaction_ref}, headers=admin
    )
    assert response.status_code == 200
    body = response.get_json()
    assert body["matched"]["name"] == "New card needed: ask the customer"
    assert body["decline_category"] == "customer_action" and body["action"] == "start_campaign"
    assert [s["reason"].split(" does not hold")[0] for s in body["skipped"]] == [
        "the decline category is “Do not contact”",
        "the decline category is “Card may work again”",
    ]
    assert (
        client.post("/v1/rules/explain", json={"transaction_ref": "nope"}, headers=admin).status_code == 404
    )
    assert client.post("/v1/rules/explain", json={}, headers=admin).status_code == 422


# --- the rules at work in /v1/recoveries and /v1/transactions -----------------------------


def test_a_start_without_campaign_or_schedule_follows_the_rules(
    client: FlaskClient,
    db: Any,
    rules_org: Organization,
    token_for: Callable[..., dict[str, str]],
    make_transaction: Callable[..., Transaction],
) -> None:
    operator = token_for(rules_org, Role.OPERATOR)
    transaction = make_transaction(rules_org, failure_code="insufficient_funds")
    response = client.post(
        "/v1/recoveries", json={"transaction_ref": transaction.transaction_ref}, headers=operator
    )
    assert response.status_code == 201, response.get_json()
    body = response.get_json()
    soft_rule = rules_of(db, rules_org)[1]
    assert body["rule"] == {"id": soft_rule.id, "name": soft_rule.name, "version": 1}
    soft = campaign(db, rules_org, "soft_decline")
    assert body["campaign"] == {"id": soft.id, "name": soft.name, "version": 1}
    attempt = db.session.get(RecoveryAttempt, body["id"])
    assert attempt.decision.startswith("Rule “Card may work again: retry it” matched")
    again = client.get(f"/v1/recoveries/{body['id']}", headers=operator).get_json()
    assert again["rule"] == body["rule"] and again["campaign"] == body["campaign"]


def test_a_start_with_a_campaign_id(
    client: FlaskClient,
    db: Any,
    rules_org: Organization,
    token_for: Callable[..., dict[str, str]],
    make_transaction: Callable[..., Transaction],
    make_rules_org: Callable[..., Organization],
) -> None:
    operator = token_for(rules_org, Role.OPERATOR)
    ref = make_transaction(rules_org, failure_code="insufficient_funds").transaction_ref
    chosen = campaign(db, rules_org, "customer_action")
    both = client.post(
        "/v1/recoveries",
        json={"transaction_ref": ref, "campaign_id": chosen.id, "schedule": [0, 1]},
        headers=operator,
    )
    assert both.status_code == 422 and "campaign_id" in both.get_json()["error"]["fields"]
    theirs = campaign(db, make_rules_org(), "customer_action").id
    foreign = client.post(
        "/v1/recoveries", json={"transaction_ref": ref, "campaign_id": theirs}, headers=operator
    )
    assert foreign.status_code == 422 and "campaign_id" in foreign.get_json()["error"]["fields"]
    response = client.post(
        "/v1/recoveries", json={"transaction_ref": ref, "campaign_id": chosen.id}, headers=operator
    )
    assert response.status_code == 201, response.get_json()
    body = response.get_json()
    assert body["rule"] is None and body["campaign"] == {"id": chosen.id, "name": chosen.name, "version": 1}


@pytest.mark.parametrize(
    ("code", "status_field"), [("stolen_card", "no_recovery_reason"), ("big", "review_status")]
)
def test_a_rule_that_starts_nothing_answers_409_and_what_it_did_stands(
    client: FlaskClient,
    db: Any,
    rules_org: Organization,
    admin: dict[str, str],
    make_transaction: Callable[..., Transaction],
    code: str,
    status_field: str,
) -> None:
    if code == "big":
        rule = client.post("/v1/rules", json=HOLD, headers=admin).get_json()
        first = rules_of(db, rules_org)[0].id
        others = [r.id for r in rules_of(db, rules_org) if not r.is_default and r.id != rule["id"]]
        version = client.get("/v1/rules", headers=admin).get_json()["version"]
        client.post(
            "/v1/rules/reorder", json={"ids": [rule["id"], *others], "version": version}, headers=admin
        )
        assert rules_of(db, rules_org)[1].id == first
        transaction = make_transaction(rules_org, amount=250_000, failure_code="insufficient_funds")
    else:
        transaction = make_transaction(rules_org, failure_code=code)
    response = client.post(
        "/v1/recoveries", json={"transaction_ref": transaction.transaction_ref}, headers=admin
    )
    assert response.status_code == 409
    assert "No recovery started: Rule “" in response.get_json()["error"]["message"]
    db.session.expire_all()
    stored = db.session.get(Transaction, transaction.id)
    assert getattr(stored, status_field)
    assert (
        db.session.scalar(select(RecoveryAttempt.id).where(RecoveryAttempt.transaction_id == transaction.id))
        is None
    )
    shown = client.get(f"/v1/transactions/{transaction.transaction_ref}", headers=admin).get_json()
    assert shown[status_field] == getattr(stored, status_field)


def test_an_organization_without_rules_starts_as_before(
    client: FlaskClient,
    db: Any,
    org: Organization,
    token_for: Callable[..., dict[str, str]],
    make_transaction: Callable[..., Transaction],
) -> None:
    transaction = make_transaction(org, failure_code="stolen_card")
    response = client.post(
        "/v1/recoveries", json={"transaction_ref": transaction.transaction_ref}, headers=token_for(org)
    )
    assert response.status_code == 201
    body = response.get_json()
    assert body["rule"] is None and body["campaign"] is None and body["schedule"] == [0, 1, 3, 6]
    assert db.session.scalar(select(RecoveryRule.id).where(RecoveryRule.organization_id == org.id)) is None


@pytest.mark.parametrize(
    ("code", "category"),
    [
        ("insufficient_funds", "retry_later"),
        ("expired_card", "customer_action"),
        ("fraudulent", "do_not_contact"),
        (None, "unknown"),
    ],
)
def test_a_transaction_shows_its_decline_category(
    client: FlaskClient,
    org: Organization,
    token_for: Callable[..., dict[str, str]],
    make_transaction: Callable[..., Transaction],
    code: str | None,
    category: str,
) -> None:
    transaction = make_transaction(org, failure_code=code)
    body = client.get(
        f"/v1/transactions/{transaction.transaction_ref}", headers=token_for(org, Role.VIEWER)
    ).get_json()
    assert body["decline_category"] == category
