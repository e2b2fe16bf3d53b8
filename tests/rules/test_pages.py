"""Settings → Recovery rules: list, form, buttons, preview, test a transaction (issue 18)."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import pytest
from flask.testing import FlaskClient
from sqlalchemy import select

from recovery.campaigns import builtin
from recovery.models import Campaign, RecoveryRule, Transaction, User
from recovery.rules import services as rules
from tests.conftest import csrf_token


@pytest.fixture
def admin(db: Any, signed_in: Callable[..., User]) -> User:
    user = signed_in("admin")
    builtin.install(db.session, user.organization)
    db.session.commit()
    return user


def campaign_id(db: Any, org_id: int, key: str = builtin.SOFT_DECLINE) -> int:
    return db.session.scalar(
        select(Campaign.id).where(Campaign.organization_id == org_id, Campaign.builtin == key)
    )


def names(db: Any, org_id: int) -> list[str]:
    db.session.expire_all()
    return [rule.name for rule in rules.list_rules(db.session, org_id)]


def form_data(client: FlaskClient, url: str, **values: Any) -> dict[str, Any]:
    page = client.get(url).get_data(as_text=True)
    return {"csrf_token": csrf_token(page), **values}


def big_usd_rule(db: Any, user: User, **extra: Any) -> dict[str, Any]:
    return {
        "name": "Big USD",
        "enabled": "y",
        "action": "start_campaign",
        "campaign_id": str(campaign_id(db, user.organization_id)),
        "c0_type": "amount",
        "c0_currency": "usd",
        "c0_min": "500",
        "c0_max": "",
        **extra,
    }


def test_the_list_shows_each_rule_in_words_in_order(client: FlaskClient, admin: User) -> None:
    page = client.get("/settings/rules/").get_data(as_text=True)
    assert "Recovery rules" in page
    assert page.index(builtin.DEFAULT_RULE_NAME) > page.index("Card may work again")
    assert "Every failure no rule above catches" in page
    assert "The decline category is" in page
    assert "Add a rule" in page


def test_an_admin_creates_a_rule_from_the_form(client: FlaskClient, db: Any, admin: User) -> None:
    data = form_data(client, "/settings/rules/new", **big_usd_rule(db, admin))
    response = client.post("/settings/rules/new", data=data)
    assert response.status_code == 302, response.get_data(as_text=True)
    rule = db.session.scalar(select(RecoveryRule).where(RecoveryRule.name == "Big USD"))
    assert rule is not None
    assert rule.conditions == [{"type": "amount", "currency": "usd", "min": 50000, "max": None}]
    listed = names(db, admin.organization_id)
    assert listed[-2:] == ["Big USD", builtin.DEFAULT_RULE_NAME]  # just above the default
    page = client.get("/settings/rules/").get_data(as_text=True)
    assert "The amount is at least $500.00" in page
    audit = client.get("/audit").get_data(as_text=True)
    assert "added the recovery rule “Big USD”" in audit


@pytest.mark.parametrize(
    ("extra", "field_id", "words"),
    [
        ({"c0_min": "900", "c0_max": "100"}, "c0_min-error", "The minimum is above the maximum."),
        ({"c0_currency": "zzz"}, "c0_currency-error", "not a known ISO 4217"),
        ({"c0_min": "abc"}, "c0_min-error", "is not a number"),
        ({"c0_type": "country_in", "c0_values": "US, XX"}, "c0_values-error", "XX"),
        ({"c0_type": "failed_within_days", "c0_days": "soon"}, "c0_days-error", "whole number of days"),
        ({"c0_type": "decline_category_in"}, "c0_choices", "values must be a non-empty list"),
        ({"name": ""}, "name-error", ""),
        ({"campaign_id": ""}, "campaign_id-error", "Choose the campaign"),
    ],
)
def test_bad_input_is_answered_next_to_its_field_and_nothing_is_saved(
    client: FlaskClient, db: Any, admin: User, extra: dict[str, str], field_id: str, words: str
) -> None:
    before = names(db, admin.organization_id)
    data = form_data(client, "/settings/rules/new", **big_usd_rule(db, admin, **extra))
    response = client.post("/settings/rules/new", data=data)
    page = response.get_data(as_text=True)
    assert response.status_code == 422
    assert field_id in page
    assert words in page
    assert names(db, admin.organization_id) == before
    assert 'value="Big USD"' in page or extra.get("name") == ""  # what was typed stays


def test_preview_before_saving_counts_with_the_unsaved_rule_and_saves_nothing(
    client: FlaskClient, db: Any, admin: User, make_transaction: Callable[..., Transaction]
) -> None:
    make_transaction(org=admin.organization, amount=90000, currency="usd", failure_code="some_new_code")
    make_transaction(org=admin.organization, amount=1000, currency="usd", failure_code="some_new_code")
    before = names(db, admin.organization_id)
    data = form_data(client, "/settings/rules/new", **big_usd_rule(db, admin), preview="1")
    response = client.post("/settings/rules/new", data=data)
    page = response.get_data(as_text=True)
    assert response.status_code == 200
    assert "Preview with this rule" in page
    row = re.search(r'data-preview-rule="Big USD">(.*?)</tr>', page, re.S)
    assert row and "not saved" in row.group(1) and ">1<" in row.group(1) and "$900.00" in row.group(1)
    assert names(db, admin.organization_id) == before
    # "Add another condition" is the same button: one more empty row.
    assert 'name="c1_type"' in page


def test_the_preview_panel_counts_per_rule_and_what_only_the_default_catches(
    client: FlaskClient, admin: User, make_transaction: Callable[..., Transaction]
) -> None:
    make_transaction(org=admin.organization, amount=2000, currency="eur", failure_code="insufficient_funds")
    make_transaction(org=admin.organization, amount=3000, currency="usd", failure_code="some_new_code")
    page = client.get("/settings/rules/preview").get_data(as_text=True)
    funds = re.search(r'data-preview-rule="Card may work again[^"]*">(.*?)</tr>', page, re.S)
    assert funds and "€20.00" in funds.group(1)
    assert "Caught only by the default:</strong> 1 failure ($30.00)" in page


def test_reorder_moves_a_rule_and_a_stale_page_is_refused_with_a_flash(
    client: FlaskClient, db: Any, admin: User
) -> None:
    org_id = admin.organization_id
    first, second = names(db, org_id)[:2]
    rule = db.session.scalar(select(RecoveryRule).where(RecoveryRule.name == second))
    page = client.get("/settings/rules/").get_data(as_text=True)
    version = rules.rules_version(db.session, org_id)
    data = {"csrf_token": csrf_token(page), "direction": "up", "rules_version": str(version)}
    response = client.post(f"/settings/rules/{rule.id}/move", data=data)
    assert response.status_code == 302
    assert names(db, org_id)[:2] == [second, first]
    # The same page again: its version is stale now.
    response = client.post(f"/settings/rules/{rule.id}/move", data=data, follow_redirects=True)
    assert "changed by someone else meanwhile" in response.get_data(as_text=True)
    assert names(db, org_id)[:2] == [second, first]


def test_enable_disable_and_delete_name_the_version_they_were_shown(
    client: FlaskClient, db: Any, admin: User
) -> None:
    org_id = admin.organization_id
    rule = rules.list_rules(db.session, org_id)[0]
    token = csrf_token(client.get("/settings/rules/").get_data(as_text=True))
    response = client.post(
        f"/settings/rules/{rule.id}/enabled",
        data={"csrf_token": token, "enabled": "0", "version": rule.version},
    )
    assert response.status_code == 302
    db.session.refresh(rule)
    assert not rule.enabled
    stale = client.post(
        f"/settings/rules/{rule.id}/delete", data={"csrf_token": token, "version": "1"}, follow_redirects=True
    )
    assert "changed by someone else meanwhile" in stale.get_data(as_text=True)
    assert rule.name in names(db, org_id)
    client.post(f"/settings/rules/{rule.id}/delete", data={"csrf_token": token, "version": str(rule.version)})
    assert rule.name not in names(db, org_id)


def test_the_default_rule_cannot_be_deleted_nor_disabled(client: FlaskClient, db: Any, admin: User) -> None:
    default = rules.list_rules(db.session, admin.organization_id)[-1]
    token = csrf_token(client.get("/settings/rules/").get_data(as_text=True))
    response = client.post(
        f"/settings/rules/{default.id}/delete", data={"csrf_token": token}, follow_redirects=True
    )
    assert "cannot be deleted" in response.get_data(as_text=True)
    response = client.post(
        f"/settings/rules/{default.id}/enabled",
        data={"csrf_token": token, "enabled": "0"},
        follow_redirects=True,
    )
    assert "always on" in response.get_data(as_text=True)
    assert default.name in names(db, admin.organization_id)


def test_editing_a_rule_shows_its_conditions_and_saves_a_new_version(
    client: FlaskClient, db: Any, admin: User
) -> None:
    rule = rules.list_rules(db.session, admin.organization_id)[0]
    page = client.get(f"/settings/rules/{rule.id}/edit").get_data(as_text=True)
    assert 'value="decline_category_in" selected' in page
    data = {
        "csrf_token": csrf_token(page),
        "name": "Renamed",
        "enabled": "y",
        "action": "do_not_recover",
        "reason": "Not worth it",
        "version": str(rule.version),
        "c0_type": "decline_category_in",
        "c0_choices": ["retry_later", "unknown"],
    }
    assert client.post(f"/settings/rules/{rule.id}/edit", data=data).status_code == 302
    db.session.refresh(rule)
    assert (rule.name, rule.action, rule.version) == ("Renamed", "do_not_recover", 2)
    assert rule.conditions == [{"type": "decline_category_in", "values": ["retry_later", "unknown"]}]
    stale = client.post(f"/settings/rules/{rule.id}/edit", data=data)
    assert stale.status_code == 409
    assert "changed by someone else meanwhile" in stale.get_data(as_text=True)


def test_test_a_transaction_names_the_rule_and_why_each_rule_above_failed(
    client: FlaskClient, admin: User, make_transaction: Callable[..., Transaction]
) -> None:
    make_transaction(org=admin.organization, transaction_ref="T-EXP", failure_code="expired_card")
    page = client.get("/settings/rules/test", query_string={"ref": "T-EXP"}).get_data(as_text=True)
    assert "Customer must update card" in page
    assert "does not hold" in page
    missing = client.get("/settings/rules/test", query_string={"ref": "NOPE"})
    assert missing.status_code == 422
    assert "No transaction has the reference" in missing.get_data(as_text=True)


@pytest.mark.parametrize("role", ["viewer", "operator"])
def test_staff_below_admin_read_the_rules_but_change_nothing(
    client: FlaskClient, db: Any, signed_in: Callable[..., User], role: str
) -> None:
    user = signed_in(role)
    builtin.install(db.session, user.organization)
    db.session.commit()
    page = client.get("/settings/rules/").get_data(as_text=True)
    assert "Everything else" in page
    assert "Add a rule" not in page and "Move" not in page
    assert client.get("/settings/rules/preview").status_code == 200
    assert client.get("/settings/rules/new").status_code == 403
    rule = rules.list_rules(db.session, user.organization_id)[0]
    token = csrf_token(page)
    assert client.post(f"/settings/rules/{rule.id}/delete", data={"csrf_token": token}).status_code == 403
    assert client.post(f"/settings/rules/{rule.id}/move", data={"csrf_token": token}).status_code == 403


def test_another_organizations_rule_is_not_found(
    client: FlaskClient, db: Any, admin: User, make_org: Callable[..., Any]
) -> None:
    other = make_org()
    builtin.install(db.session, other)
    db.session.commit()
    theirs = rules.list_rules(db.session, other.id)[0]
    assert client.get(f"/settings/rules/{theirs.id}/edit").status_code == 404


def test_an_organization_without_rules_says_its_schedule_decides(
    client: FlaskClient, signed_in: Callable[..., User]
) -> None:
    signed_in("admin")
    page = client.get("/settings/rules/").get_data(as_text=True)
    assert "every recovery follows your" in page
