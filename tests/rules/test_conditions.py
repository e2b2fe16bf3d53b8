"""Each condition type: what it accepts, what it refuses (naming the field), and that Python and SQL agree."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import select

from recovery.models import Organization, Transaction, utcnow
from recovery.rules.conditions import RuleRefused, read_condition, read_conditions

NOW = utcnow()

# (condition, transaction fields for which it holds, fields for which it does not)
CASES: list[tuple[dict[str, Any], dict[str, Any], dict[str, Any]]] = [
    (
        {"type": "amount", "currency": "usd", "min": 1000, "max": 5000},
        {"amount": 5000, "currency": "usd"},
        {"amount": 5001, "currency": "usd"},
    ),
    ({"type": "amount", "currency": "usd", "min": 1000, "max": None}, {"amount": 1000}, {"amount": 999}),
    (
        {"type": "amount", "currency": "usd", "min": None, "max": 1000},
        {"amount": 10},
        {"amount": 5000, "currency": "eur"},
    ),
    ({"type": "currency_in", "values": ["eur", "GBP"]}, {"currency": "gbp"}, {"currency": "usd"}),
    ({"type": "country_in", "values": ["us", "CA"]}, {"customer_country": "CA"}, {"customer_country": None}),
    ({"type": "country_not_in", "values": ["US"]}, {"customer_country": None}, {"customer_country": "US"}),
    ({"type": "country_not_in", "values": ["US"]}, {"customer_country": "FR"}, {"customer_country": "US"}),
    (
        {"type": "decline_category_in", "values": ["retry_later"]},
        {"failure_code": "insufficient_funds"},
        {"failure_code": "stolen_card"},
    ),
    (
        {"type": "decline_category_in", "values": ["unknown"]},
        {"failure_code": None},
        {"failure_code": "expired_card"},
    ),
    (
        {"type": "decline_category_in", "values": ["unknown", "do_not_contact"]},
        {"failure_code": "some_new_code"},
        {"failure_code": "do_not_honor"},
    ),
    (
        {"type": "decline_code_in", "values": ["expired_card"]},
        {"failure_code": "expired_card"},
        {"failure_code": None},
    ),
    ({"type": "source_in", "values": ["stripe", "csv"]}, {"source": "csv"}, {"source": "api"}),
    (
        {"type": "metadata_equals", "key": "plan", "value": "gold"},
        {"meta": {"plan": "gold"}},
        {"meta": {"plan": "silver"}},
    ),
    ({"type": "metadata_equals", "key": "n", "value": "3"}, {"meta": {"n": "3"}}, {"meta": {"n": 3}}),
    (
        {"type": "metadata_equals", "key": "b", "value": "true"},
        {"meta": {"b": "true"}},
        {"meta": {"b": True}},
    ),
    ({"type": "metadata_equals", "key": "plan", "value": "gold"}, {"meta": {"plan": "gold"}}, {"meta": {}}),
    ({"type": "has_email", "value": True}, {"customer_email": "a@example.com"}, {"customer_email": None}),
    ({"type": "has_email", "value": False}, {"customer_email": None}, {"customer_email": "a@example.com"}),
    ({"type": "has_phone", "value": True}, {"customer_phone": "+14155550100"}, {"customer_phone": None}),
    ({"type": "has_phone", "value": False}, {"customer_phone": ""}, {"customer_phone": "+14155550100"}),
    (
        {"type": "failed_within_days", "days": 7},
        {"failed_at": NOW - timedelta(days=6, hours=23)},
        {"failed_at": NOW - timedelta(days=7, minutes=1)},
    ),
]


def _ids(case: tuple[dict[str, Any], Any, Any]) -> str:
    return str(case[0]["type"])


@pytest.mark.parametrize("case", CASES, ids=[_ids(c) for c in CASES])
def test_the_condition_holds_in_python_and_sql_alike(
    case: tuple[dict[str, Any], dict[str, Any], dict[str, Any]],
    db: Any,
    org: Organization,
    make_transaction: Callable[..., Transaction],
) -> None:
    raw, yes, no = case
    condition = read_condition(raw, "conditions[0]")
    holding = make_transaction(org, **{"failed_at": NOW - timedelta(days=1), **yes})
    failing = make_transaction(org, **{"failed_at": NOW - timedelta(days=1), **no})
    assert condition.holds(holding, NOW)
    assert not condition.holds(failing, NOW)
    dialect = db.engine.dialect.name
    found = set(
        db.session.scalars(
            select(Transaction.id).where(
                Transaction.organization_id == org.id, condition.clause(dialect, NOW)
            )
        )
    )
    assert found == {holding.id}
    # The words: what must hold, and what the failing transaction has instead.
    assert condition.sentence().startswith("the ")
    assert condition.why_not(failing, NOW).startswith("the ")
    # Stored as given, normalised: reading it back gives the same condition.
    assert read_condition(condition.as_dict(), "c") == condition


def test_values_are_normalised_and_deduplicated() -> None:
    condition = read_condition({"type": "currency_in", "values": ["USD", "usd", " eur "]}, "c")
    assert condition.as_dict() == {"type": "currency_in", "values": ["usd", "eur"]}
    country = read_condition({"type": "country_in", "values": ["de"]}, "c")
    assert country.as_dict()["values"] == ["DE"]


def test_a_decline_category_reads_as_the_merchant_does() -> None:
    condition = read_condition({"type": "decline_category_in", "values": ["retry_later"]}, "c")
    transaction = Transaction(failure_code="insufficient_funds", currency="usd", amount=1)
    assert condition.sentence() == "the decline category is “Card may work again”"
    assert (
        condition.matched(transaction, NOW)
        == "the decline category is “Card may work again” (insufficient_funds)"
    )


BAD: list[tuple[Any, str]] = [
    ("not an object", "conditions[0]"),
    ({"type": "nope"}, "conditions[0].type"),
    ({"values": ["usd"]}, "conditions[0].type"),
    ({"type": "currency_in", "values": ["usd"], "extra": 1}, "conditions[0].extra"),
    ({"type": "currency_in"}, "conditions[0].values"),
    ({"type": "currency_in", "values": []}, "conditions[0].values"),
    ({"type": "currency_in", "values": "usd"}, "conditions[0].values"),
    ({"type": "currency_in", "values": ["xyz"]}, "conditions[0].values"),
    ({"type": "currency_in", "values": [5]}, "conditions[0].values"),
    ({"type": "amount", "currency": "usd"}, "conditions[0].min"),
    ({"type": "amount", "currency": "usd", "min": 10, "max": 5}, "conditions[0].min"),
    ({"type": "amount", "currency": "usd", "min": -1}, "conditions[0].min"),
    ({"type": "amount", "currency": "usd", "max": 1.5}, "conditions[0].max"),
    ({"type": "amount", "currency": "usd", "max": True}, "conditions[0].max"),
    ({"type": "amount", "currency": "dem", "min": 1}, "conditions[0].currency"),
    ({"type": "amount", "min": 1}, "conditions[0].currency"),
    ({"type": "amount", "currency": "usd", "min": 1, "step": 2}, "conditions[0].step"),
    ({"type": "country_in", "values": ["XX"]}, "conditions[0].values"),
    ({"type": "country_in", "values": ["SU"]}, "conditions[0].values"),
    ({"type": "country_not_in", "values": ["USA"]}, "conditions[0].values"),
    ({"type": "decline_category_in", "values": ["soft"]}, "conditions[0].values"),
    ({"type": "decline_code_in", "values": ["Not A Code!"]}, "conditions[0].values"),
    ({"type": "source_in", "values": ["email"]}, "conditions[0].values"),
    ({"type": "metadata_equals", "key": "", "value": "x"}, "conditions[0].key"),
    ({"type": "metadata_equals", "key": 'a"b', "value": "x"}, "conditions[0].key"),
    ({"type": "metadata_equals", "key": "plan", "value": 3}, "conditions[0].value"),
    ({"type": "metadata_equals", "key": "plan"}, "conditions[0].value"),
    ({"type": "has_email", "value": "yes"}, "conditions[0].value"),
    ({"type": "has_phone"}, "conditions[0].value"),
    ({"type": "failed_within_days", "days": 0}, "conditions[0].days"),
    ({"type": "failed_within_days", "days": 3651}, "conditions[0].days"),
    ({"type": "failed_within_days", "days": "7"}, "conditions[0].days"),
]


@pytest.mark.parametrize(("raw", "field"), BAD)
def test_a_bad_condition_is_refused_naming_its_field(raw: Any, field: str) -> None:
    with pytest.raises(RuleRefused) as refused:
        read_conditions([raw])
    assert refused.value.field == field
    assert refused.value.status == 422
    assert refused.value.message


def test_the_field_names_the_condition_by_its_place() -> None:
    with pytest.raises(RuleRefused) as refused:
        read_conditions([{"type": "has_email", "value": True}, {"type": "currency_in", "values": ["nope"]}])
    assert refused.value.field == "conditions[1].values"


@pytest.mark.parametrize("raw", [{"type": "has_email", "value": True}, "x", 5])
def test_conditions_must_be_a_short_list(raw: Any) -> None:
    with pytest.raises(RuleRefused) as refused:
        read_conditions(raw if not isinstance(raw, dict) else [raw] * 21)
    assert refused.value.field == "conditions"
