"""Which transaction a Stripe object is about: its metadata first, then the Stripe ids our rows keep.

Raises EventContradicts when the two disagree about the organization or the
transaction: an object of one organization must never move another's rows.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from typing import Any

from sqlalchemy import CompoundSelect, bindparam, cast, literal, null, select, text, union_all

from recovery.models import (
    CheckoutSession,
    Organization,
    PaymentFulfilment,
    Transaction,
)
from recovery.models.base import DbSession
from recovery.payments.fulfilment import (
    EventContradicts,
)
from recovery.webhooks.context import Context

_CLIENT_REFERENCE = re.compile(r"^recovery:(\d{1,18}):(\d{1,18})(?::(\d{1,18}))?$")


@dataclass(frozen=True)
class Claims:
    """What the object's metadata (or client_reference_id) says it belongs to."""

    organization_id: int | None
    transaction_id: int | None
    attempt_id: int | None
    transaction_ref: str | None


@dataclass(frozen=True)
class Match:
    transaction: Transaction
    attempt_id: int | None
    by: str  # metadata, session, payment_intent, payment_link


def stripe_id(value: Any) -> str | None:
    """An expandable field: an id, an object with an id, or neither."""
    if isinstance(value, str):
        return value
    if isinstance(value, dict) and isinstance(value.get("id"), str):
        return str(value["id"])
    return None


def as_dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _int(value: Any) -> int | None:
    try:
        number = int(str(value))
    except (TypeError, ValueError):
        return None
    return number if 0 < number < 2**63 else None


def claims_of(obj: dict[str, Any]) -> Claims:
    metadata = as_dict(obj.get("metadata"))
    org = _int(metadata.get("organization_id"))
    txn = _int(metadata.get("transaction_id"))
    attempt = _int(metadata.get("attempt_id"))
    ref = metadata.get("transaction_ref") if isinstance(metadata.get("transaction_ref"), str) else None
    reference = obj.get("client_reference_id")
    if txn is None and isinstance(reference, str):
        found = _CLIENT_REFERENCE.match(reference)
        if found:
            org, txn = int(found.group(1)), int(found.group(2))
            attempt = int(found.group(3)) if found.group(3) else None
    return Claims(org, txn, attempt, ref)


def load_claimed_transactions(session: DbSession, objects: list[dict[str, Any]]) -> list[Transaction]:
    """Load, in one query, the transactions that these objects' metadata names.

    For a batch of events: `match` then finds each in the session instead of
    selecting it on its own (one round trip, and one row load, fewer an event).
    The session holds its objects weakly: keep the list for as long as the batch runs.
    """
    ids = {claims.transaction_id for claims in map(claims_of, objects) if claims.transaction_id is not None}
    if not ids:
        return []
    return list(session.scalars(select(Transaction).where(Transaction.id.in_(sorted(ids)))))


# Where our rows keep a Stripe id, best match first: what the id is, the
# column holding it, the transaction the row ties it to, and its attempt if known.
_STORED_IDS: tuple[tuple[str, Any, Any, Any], ...] = (
    (
        "session",
        CheckoutSession.stripe_session_id,
        CheckoutSession.transaction_id,
        CheckoutSession.attempt_id,
    ),
    ("session", Transaction.stripe_checkout_session_id, Transaction.id, None),
    (
        "payment_intent",
        CheckoutSession.stripe_payment_intent_id,
        CheckoutSession.transaction_id,
        CheckoutSession.attempt_id,
    ),
    ("payment_intent", Transaction.stripe_payment_intent_id, Transaction.id, None),
    ("payment_intent", PaymentFulfilment.stripe_payment_intent_id, PaymentFulfilment.transaction_id, None),
    ("payment_link", Transaction.stripe_payment_link_id, Transaction.id, None),
)


@functools.cache
def _stored_ids_query(kinds: frozenset[str]) -> CompoundSelect[Any]:
    """The ranked lookup for the kinds of ids an object has; built once per combination (seven at most)."""
    no_attempt = cast(null(), CheckoutSession.attempt_id.type)
    return (
        union_all(
            *(
                select(
                    transaction, no_attempt if attempt is None else attempt, literal(rank).label("priority")
                ).where(column == bindparam(by))
                for rank, (by, column, transaction, attempt) in enumerate(_STORED_IDS)
                if by in kinds
            )
        )
        .order_by(text("priority"))
        .limit(1)
    )


def _by_stored_ids(
    session: DbSession, session_id: str | None, payment_intent_id: str | None, link_id: str | None
) -> Match | None:
    """The transaction that our rows tie to one of the object's Stripe ids: the best of them, in one query.

    One round trip instead of up to six separate lookups, which every event paid.
    """
    ids = {"session": session_id, "payment_intent": payment_intent_id, "payment_link": link_id}
    present = {by: value for by, value in ids.items() if value}
    if not present:
        return None
    best = session.execute(_stored_ids_query(frozenset(present)), present).first()
    if best is None:
        return None
    transaction_id, attempt_id, rank = best
    found = session.get(Transaction, transaction_id)
    assert found is not None  # every row above holds it by foreign key
    return Match(found, attempt_id, _STORED_IDS[rank][0])


def match(
    ctx: Context,
    obj: dict[str, Any],
    *,
    session_id: str | None = None,
    payment_intent_id: str | None = None,
    link_id: str | None = None,
) -> Match | None:
    """Find the transaction the object is about: metadata first, then our stored Stripe ids.

    Raises EventContradicts when the two disagree about the organization (or the
    transaction): an object of one organization must never move another's rows.
    """
    claims = claims_of(obj)
    stored = _by_stored_ids(ctx.session, session_id, payment_intent_id, link_id)
    found: Match | None = None
    if claims.transaction_id is not None:
        txn = ctx.session.get(Transaction, claims.transaction_id)
        if txn is not None:
            if claims.organization_id != txn.organization_id:
                raise EventContradicts(
                    f"metadata names organization {claims.organization_id} but transaction "
                    f"{txn.id} belongs to organization {txn.organization_id}"
                )
            if claims.transaction_ref is not None and claims.transaction_ref != txn.transaction_ref:
                raise EventContradicts(
                    f"metadata names transaction_ref {claims.transaction_ref!r} but transaction "
                    f"{txn.id} is {txn.transaction_ref!r}"
                )
            found = Match(txn, claims.attempt_id, "metadata")
    if stored is not None:
        stored_org = stored.transaction.organization_id
        if claims.organization_id is not None and claims.organization_id != stored_org:
            raise EventContradicts(
                f"metadata names organization {claims.organization_id} but the {stored.by} "
                f"belongs to organization {stored_org}"
            )
        if found is not None and found.transaction.id != stored.transaction.id:
            raise EventContradicts(
                f"metadata names transaction {found.transaction.id} but the {stored.by} "
                f"belongs to transaction {stored.transaction.id}"
            )
        if found is None:
            found = stored
        elif found.attempt_id is None and stored.attempt_id is not None:
            found = Match(found.transaction, stored.attempt_id, found.by)
    if found is not None and ctx.event is not None and ctx.event.account:
        # A connected account's event may only touch the organization linked to that account,
        # whatever its metadata says.
        owner = account_organization(ctx, ctx.event.account)
        if owner is None or owner.id != found.transaction.organization_id:
            raise EventContradicts(
                f"the event comes from connected account {ctx.event.account}, which is not linked to "
                f"organization {found.transaction.organization_id}"
            )
    if found is not None:
        ctx.organization_id = found.transaction.organization_id
    return found


def account_organization(ctx: Context, account: str) -> Organization | None:
    return ctx.session.scalar(select(Organization).where(Organization.stripe_account_id == account))
