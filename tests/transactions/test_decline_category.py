"""Why a payment failed, in a merchant's words: the list's column and filter, the detail page (issue 18)."""

from __future__ import annotations

import re
from collections.abc import Callable

import pytest
from flask.testing import FlaskClient

from recovery import declines
from recovery.models import Organization, Transaction, User
from recovery.transactions import services

CODES = {
    "T-FUNDS": "insufficient_funds",
    "T-HONOR": "do_not_honor",
    "T-EXPIRED": "expired_card",
    "T-STOLEN": "stolen_card",
    "T-FRAUD": "fraudulent",
    "T-NONE": None,
    "T-NEW": "some_code_stripe_added_later",
    "T-DUP": "duplicate_transaction",
}
EXPECTED = {
    declines.RETRY_LATER: ["T-FUNDS", "T-HONOR"],
    declines.CUSTOMER_ACTION: ["T-EXPIRED"],
    declines.DO_NOT_CONTACT: ["T-FRAUD", "T-STOLEN"],
    declines.UNKNOWN: ["T-DUP", "T-NEW", "T-NONE"],
}


def listed(client: FlaskClient, **args: str) -> list[str]:
    response = client.get("/transactions", query_string=args)
    assert response.status_code == 200
    return re.findall(
        r'<td data-label="Reference"><bdi><a [^>]*>([^<]+)</a>', response.get_data(as_text=True)
    )


@pytest.fixture
def rows(signed_in: Callable[..., User], make_transaction: Callable[..., Transaction]) -> Organization:
    user = signed_in("viewer")
    for ref, code in CODES.items():
        make_transaction(org=user.organization, transaction_ref=ref, failure_code=code)
    return user.organization


@pytest.mark.parametrize("category", declines.CATEGORIES)
def test_the_filter_finds_each_category_in_sql(
    client: FlaskClient, rows: Organization, category: str
) -> None:
    assert sorted(listed(client, category=category)) == EXPECTED[category]


def test_every_row_is_in_exactly_one_category(client: FlaskClient, rows: Organization) -> None:
    found = [ref for category in declines.CATEGORIES for ref in listed(client, category=category)]
    assert sorted(found) == sorted(CODES)


def test_the_list_shows_the_category_in_words_and_offers_the_filter(
    client: FlaskClient, rows: Organization
) -> None:
    page = client.get("/transactions").get_data(as_text=True)
    assert "Why it failed" in page
    for name in declines.CATEGORIES:
        assert f'<option value="{name}"' in page
        assert declines.category_label(name) in page
    selected = client.get("/transactions", query_string={"category": "do_not_contact"}).get_data(as_text=True)
    assert '<option value="do_not_contact" selected>' in selected


def test_an_unknown_category_is_explained_and_the_list_left_unfiltered(
    client: FlaskClient, rows: Organization
) -> None:
    response = client.get("/transactions", query_string={"category": "stolen"})
    page = response.get_data(as_text=True)
    assert response.status_code == 200
    assert "Unknown reason &#39;stolen&#39;: choose one from the list." in page
    assert sorted(listed(client, category="stolen")) == sorted(CODES)


def test_the_category_filter_combines_with_the_others_and_travels_with_bulk_start() -> None:
    query = services.ListQuery.from_args({"category": "retry_later", "currency": "usd"})
    assert query.errors == {}
    assert query.is_filtered()
    assert query.filter_args()["category"] == "retry_later"
    assert "category" in services.FILTER_ARGS


def test_the_detail_page_gives_the_category_and_its_sentence(
    client: FlaskClient, rows: Organization, make_transaction: Callable[..., Transaction]
) -> None:
    stolen = make_transaction(org=rows, transaction_ref="T-DETAIL", failure_code="stolen_card")
    page = client.get(f"/transactions/{stolen.id}").get_data(as_text=True)
    assert "Do not contact" in page
    assert "the card is never tried again" in page
    assert "Card reported stolen" in page  # the decline's own description stays


def test_the_export_takes_the_same_filter(client: FlaskClient, rows: Organization) -> None:
    response = client.get("/transactions/export.csv", query_string={"category": "do_not_contact"})
    assert response.status_code == 200
    body = response.get_data(as_text=True)
    assert "T-STOLEN" in body and "T-FRAUD" in body
    assert "T-FUNDS" not in body and "T-NONE" not in body
