"""The JSON API for transactions: create, list with cursor pagination, get by reference.

The rules are the dashboard's (recovery.transactions); this module only maps
JSON to them and their answers to HTTP.
"""

from __future__ import annotations

from typing import Annotated, Any, Required

from flask import Blueprint, jsonify, request, url_for
from pydantic import Field, with_config
from sqlalchemy import select
from typing_extensions import TypedDict

from recovery import declines
from recovery.api.auth import current_token, install_token_auth, require_token_role, token_actor
from recovery.api.bodies import json_object
from recovery.api.errors import ApiError, install_error_handlers
from recovery.api.openapi import CLOSED, documented, enum_of
from recovery.api.serializers import TransactionObject, transaction_json
from recovery.extensions import db
from recovery.logs import get_logger
from recovery.models import Role, Transaction, TransactionSource, TransactionStatus, utcnow
from recovery.transactions import closing, services
from recovery.transactions.validation import clean_transaction

bp = Blueprint("api", __name__, url_prefix="/v1")
install_token_auth(bp)
install_error_handlers(bp)

log = get_logger("recovery.api")

TEXT_FIELDS = (
    "transaction_ref",
    "currency",
    "failure_code",
    "failure_message",
    "customer_name",
    "customer_email",
    "customer_phone",
    "customer_country",
    "customer_locale",
    "failed_at",
)
DEFAULT_LIMIT = 50
MAX_LIMIT = 100


@with_config(CLOSED)
class TransactionCreate(TypedDict, total=False):
    """A failed payment to record; the rules are the dashboard's and the CSV import's."""

    transaction_ref: Required[
        Annotated[
            str,
            Field(
                description="Unique in the organization; letters, digits and `. _ : # -`, at most 64.",
                max_length=64,
            ),
        ]
    ]
    amount: Annotated[
        int,
        Field(
            description="Required unless amount_decimal: a whole number of the currency's smallest unit "
            "(5000 for USD 50.00).",
            gt=0,
        ),
    ]
    amount_decimal: Annotated[
        str,
        Field(
            description='Instead of amount: the amount with the currency\'s decimals, as a string ("50.00").',
            examples=["50.00"],
        ),
    ]
    currency: Required[Annotated[str, Field(description="ISO 4217 code, any case.", examples=["usd"])]]
    failure_code: Annotated[str, Field(description="e.g. card_declined: lower-case letters, digits and _.")]
    failure_message: Annotated[str, Field(description="At most 500 characters.", max_length=500)]
    customer_name: Annotated[str, Field(max_length=200)]
    customer_email: Annotated[str, Field(description="Stored lower-cased.")]
    customer_phone: Annotated[
        str, Field(description="International (+44 20 7946 0958), or national with customer_country.")
    ]
    customer_country: Annotated[str, Field(description="ISO 3166 two-letter code.")]
    customer_locale: Annotated[str, Field(description="e.g. en, en-GB.")]
    metadata: Annotated[
        dict[str, str | int | float | bool],
        Field(description="Strings, numbers and booleans, at most 4 KiB; null values are refused."),
    ]
    failed_at: Annotated[
        str, Field(description="ISO 8601 date or time, not in the future; default now; no offset means UTC.")
    ]


@with_config(CLOSED)
class TransactionListQuery(TypedDict, total=False):
    status: Annotated[str, enum_of(TransactionStatus.ALL, "Only transactions with this status.")]
    q: Annotated[
        str,
        Field(
            description=(
                "The start of a transaction_ref or customer email, in any case (ord-10 finds ORD-1001), "
                "or a whole phone number in any form."
            ),
            max_length=254,
        ),
    ]
    currency: Annotated[str, Field(description="An ISO 4217 code, e.g. usd.")]
    category: Annotated[
        str,
        enum_of(
            declines.CATEGORIES,
            "Why it failed, from failure_code; unknown: no code, or one Stripe does not list.",
        ),
    ]
    date_from: Annotated[str, Field(description="Failed on or after this day (UTC), e.g. 2025-01-31.")]
    date_to: Annotated[str, Field(description="Failed on or before this day (UTC).")]
    sort: Annotated[
        str,
        enum_of(
            tuple(services.SORTS),
            "Default date; amount needs currency (amounts in different currencies do not compare).",
        ),
    ]
    order: Annotated[str, enum_of(("asc", "desc"), "Default desc.")]
    after: Annotated[str, Field(description="The next_cursor of the previous page.")]
    before: Annotated[str, Field(description="The prev_cursor of the page, to go back.")]
    limit: Annotated[
        int, Field(description=f"1 to {MAX_LIMIT}, default {DEFAULT_LIMIT}.", ge=1, le=MAX_LIMIT)
    ]


@with_config(CLOSED)
class TransactionList(TypedDict):
    """One page of transactions, newest failure first; pages are cut by keyset, not offset."""

    object: Annotated[str, Field(json_schema_extra={"const": "list"})]
    data: list[TransactionObject]
    has_more: bool
    next_cursor: Annotated[str | None, Field(description="Pass as `after` for the next page.")]
    prev_cursor: Annotated[str | None, Field(description="Pass as `before` for the page before.")]


# The fields and arguments the API takes are the ones it documents.
CREATE_FIELDS = TransactionCreate.__required_keys__ | TransactionCreate.__optional_keys__
LIST_ARGS = TransactionListQuery.__required_keys__ | TransactionListQuery.__optional_keys__

TRANSACTION_EXAMPLE = {
    "transaction_ref": "TXN-001",
    "amount": 5000,
    "currency": "usd",
    "failure_code": "insufficient_funds",
    "customer_email": "ada@example.com",
    "metadata": {"order_id": "ORD-123"},
}


def invalid(fields: dict[str, str], message: str | None = None) -> ApiError:
    names = ", ".join(fields)
    return ApiError(422, "validation_error", message or f"Some fields are not valid: {names}.", fields)


def _type_errors(body: dict[str, Any]) -> dict[str, str]:
    """What JSON's types make wrong before any rule runs.

    JSON has types, so the API is stricter than a form: text must be a string,
    `amount` an integer of minor units, `amount_decimal` a string of major units.
    """
    errors = {name: "Unknown field." for name in sorted(set(body) - CREATE_FIELDS)}
    for name in TEXT_FIELDS:
        if body.get(name) is not None and not isinstance(body[name], str):
            errors[name] = "Must be a string."
    if body.get("metadata") is not None and not isinstance(body["metadata"], dict):
        errors["metadata"] = 'Must be a JSON object, e.g. {"order_id": "ORD-123"}.'
    amount, decimal = body.get("amount"), body.get("amount_decimal")
    if amount is not None and decimal is not None:
        errors["amount"] = (
            "Give amount (a whole number of the currency's smallest unit: 5000 for USD 50.00) "
            'or amount_decimal (with the decimals: "50.00"), not both.'
        )
    elif decimal is not None and not isinstance(decimal, str):
        errors["amount_decimal"] = 'Must be a string with the currency\'s decimals, e.g. "50.00".'
    elif amount is not None and (isinstance(amount, bool) or not isinstance(amount, int)):
        errors["amount"] = (
            "Must be a whole number of the currency's smallest unit (5000 for USD 50.00); "
            'for a decimal amount send amount_decimal: "50.00".'
        )
    return errors


@bp.post("/transactions")
@documented(
    summary="Record a failed payment",
    tag="Transactions",
    request=TransactionCreate,
    response=TransactionObject,
    status=201,
    headers={"Location": "The new transaction's URL, /v1/transactions/{transaction_ref}."},
    errors={409: "A transaction with this transaction_ref already exists."},
    request_example=TRANSACTION_EXAMPLE,
    description="Text fields must be JSON strings; any other field is refused as unknown.",
)
@require_token_role(Role.OPERATOR)
def create_transaction() -> Any:
    body = json_object()
    major_units = body.get("amount_decimal") is not None and body.get("amount") is None
    amount_field = "amount_decimal" if major_units else "amount"
    raw = {name: body[name] for name in CREATE_FIELDS - {"amount_decimal"} if name in body}
    if major_units:
        raw["amount"] = body["amount_decimal"]
    wrong_types = _type_errors(body)
    if wrong_types:
        # Report every problem at once: the rules still judge the other fields.
        rest = {name: value for name, value in raw.items() if name not in wrong_types}
        rule_errors = clean_transaction(rest, major_units=major_units).errors
        if {"amount", "amount_decimal"} & set(wrong_types):
            rule_errors.pop("amount", None)  # judged already; not also "Amount is required."
        fields = {**services.named(rule_errors, amount_field), **wrong_types}
        unknown = [name for name, message in wrong_types.items() if message == "Unknown field."]
        others = [name for name in fields if name not in unknown]
        message = None
        if unknown:
            message = f"Unknown fields: {', '.join(unknown)}."
            message += f" Not valid: {', '.join(others)}." if others else ""
        raise invalid(fields, message)
    transaction = services.create_transaction(
        db.session,
        token_actor(),
        raw,
        source=TransactionSource.API,
        major_units=major_units,
        amount_field=amount_field,
    )
    log.info(
        "api_transaction_created",
        transaction_ref=transaction.transaction_ref,
        amount=transaction.amount,
        currency=transaction.currency,
        api_token_id=current_token().id,
    )
    response = jsonify(transaction_json(transaction, with_attempts=True))
    response.status_code = 201
    response.headers["Location"] = url_for("api.get_transaction", transaction_ref=transaction.transaction_ref)
    return response


def _list_query() -> tuple[services.ListQuery, int]:
    args = request.args
    errors: dict[str, str] = {}
    for name in sorted(set(args) - LIST_ARGS):
        errors[name] = f"Unknown query parameter; use {', '.join(sorted(LIST_ARGS))}."
    query = services.ListQuery.from_args(args)
    errors.update(query.errors)
    if "cursor" in errors:
        del errors["cursor"]
        name = "before" if args.get("before") else "after"
        errors[name] = "Not a cursor of this list: pass next_cursor or prev_cursor as given, same sort."
    if query.amount_needs_currency and "sort" in errors:
        errors["sort"] = (
            "Sorting by amount needs a currency filter (e.g. currency=usd): "
            "amounts in different currencies cannot be compared."
        )
    if args.get("sort", query.sort) not in services.SORTS:
        errors["sort"] = f"Use one of: {', '.join(services.SORTS)}."
    if args.get("order", query.order) not in ("asc", "desc"):
        errors["order"] = "Use asc or desc."
    if args.get("after") and args.get("before"):
        errors["before"] = "Give after or before, not both."
    limit = DEFAULT_LIMIT
    raw_limit = args.get("limit")
    if raw_limit is not None:
        if raw_limit.isascii() and raw_limit.isdigit() and 1 <= int(raw_limit) <= MAX_LIMIT:
            limit = int(raw_limit)
        else:
            errors["limit"] = f"Use a whole number from 1 to {MAX_LIMIT}."
    if errors:
        raise invalid(errors, f"Some query parameters are not valid: {', '.join(errors)}.")
    return query, limit


@bp.get("/transactions")
@documented(
    summary="List transactions, one page at a time",
    tag="Transactions",
    query=TransactionListQuery,
    response=TransactionList,
    errors={422: "A query parameter is unknown or not valid, or a cursor does not fit; `fields` names each."},
    description="Keep the other parameters the same from page to page: a cursor belongs to its sort.",
)
@require_token_role(Role.VIEWER)
def list_transactions() -> Any:
    query, limit = _list_query()
    organization_id = current_token().organization_id
    page = services.list_transactions(db.session, organization_id, query, limit=limit)
    # The page's rows carry only the columns the dashboard shows; the API
    # returns whole objects, fetched in one more query by primary key.
    ids = [row.id for row in page.rows]
    found = {
        t.id: t
        for t in db.session.scalars(
            select(Transaction).where(Transaction.organization_id == organization_id, Transaction.id.in_(ids))
        )
    }
    return jsonify(
        {
            "object": "list",
            "data": [transaction_json(found[i]) for i in ids if i in found],
            "has_more": page.next_cursor is not None,
            "next_cursor": page.next_cursor,
            "prev_cursor": page.prev_cursor,
        }
    )


@bp.get("/transactions/<transaction_ref>")
@documented(
    summary="Read one transaction with its recoveries",
    tag="Transactions",
    response=TransactionObject,
    path_params={"transaction_ref": "Your reference, URL-encoded (ORD#42 is ORD%2342)."},
    errors={404: "No such transaction in the token's organization."},
)
@require_token_role(Role.VIEWER)
def get_transaction(transaction_ref: str) -> Any:
    transaction = services.get_by_ref(db.session, current_token().organization_id, transaction_ref)
    if transaction is None:
        raise ApiError(404, "not_found", "Transaction not found")
    return jsonify(transaction_json(transaction, with_attempts=True))


@with_config(CLOSED)
class TransactionClose(TypedDict, total=False):
    """Why the transaction is closed; optional."""

    reason: Annotated[str | None, Field(max_length=closing.REASON_MAX, description="Shown to staff.")]


def _org_transaction(transaction_ref: str) -> Transaction:
    transaction = services.get_by_ref(db.session, current_token().organization_id, transaction_ref)
    if transaction is None:
        raise ApiError(404, "not_found", "Transaction not found")
    return transaction


@bp.post("/transactions/<transaction_ref>/close")
@documented(
    summary="Close a transaction: nothing more is asked for it",
    tag="Transactions",
    request=TransactionClose,
    request_required=False,
    response=TransactionObject,
    path_params={"transaction_ref": "Your reference, URL-encoded (ORD#42 is ORD%2342)."},
    errors={
        404: "No such transaction in the token's organization.",
        409: "It is already closed, or paid.",
        422: "The reason is not text, is too long, or the body has an unknown field.",
    },
    description=(
        "Its running recovery is cancelled, its Payment Link and open checkouts are switched off, and no "
        "recovery, checkout or payment link can be started (409) until it is reopened. Status becomes "
        "`cancelled` (the dashboard says Closed), with `closed_at`, `closed_by` and `closed_reason`."
    ),
)
@require_token_role(Role.OPERATOR)
def close_transaction(transaction_ref: str) -> Any:
    body = json_object() if request.get_data() else {}
    unknown = sorted(set(body) - {"reason"})
    if unknown:
        raise invalid(dict.fromkeys(unknown, "Unknown field."), f"Unknown field(s): {', '.join(unknown)}.")
    transaction = _org_transaction(transaction_ref)
    closing.close_transaction(db.session, transaction, token_actor(), now=utcnow(), reason=body.get("reason"))
    return jsonify(transaction_json(transaction, with_attempts=True))


@bp.post("/transactions/<transaction_ref>/reopen")
@documented(
    summary="Reopen a closed transaction",
    tag="Transactions",
    response=TransactionObject,
    path_params={"transaction_ref": "Your reference, URL-encoded (ORD#42 is ORD%2342)."},
    errors={404: "No such transaction in the token's organization.", 409: "It is not closed."},
    description="Status goes back to `failed`: a recovery or a payment can be started again.",
)
@require_token_role(Role.OPERATOR)
def reopen_transaction(transaction_ref: str) -> Any:
    transaction = _org_transaction(transaction_ref)
    closing.reopen_transaction(db.session, transaction, token_actor(), now=utcnow())
    return jsonify(transaction_json(transaction, with_attempts=True))
