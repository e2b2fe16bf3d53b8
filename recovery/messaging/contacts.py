"""Whom a customer may be messaged at: their addresses, the ones suppressed, the channels left.

An address is suppressed per organization when the customer opted out (the
unsubscribe link, a STOP reply) or a provider proved it dead. Every send
re-reads this; a send batch reads its customers' suppressions in one query
(`BatchContacts`).
"""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import select

from recovery.models import (
    Channel,
    ContactSuppression,
    Organization,
    RecoveryAttempt,
    SuppressionReason,
    Transaction,
)
from recovery.models.base import DbSession, insert_ignoring_duplicates


def address_for(transaction: Transaction, channel: str) -> str | None:
    return transaction.customer_email if channel == Channel.EMAIL else transaction.customer_phone


def other_channel(channel: str) -> str:
    return Channel.SMS if channel == Channel.EMAIL else Channel.EMAIL


class BatchContacts:
    """Suppressed addresses of a batch's customers: read in one query, kept current as the batch adds some."""

    def __init__(self, session: DbSession, transactions: Sequence[Transaction]) -> None:
        wanted = {
            (t.organization_id, c, address)
            for t in transactions
            for c in (Channel.EMAIL, Channel.SMS)
            if (address := address_for(t, c))
        }
        self._reasons: dict[tuple[int, str, str], str] = {}
        if wanted:
            rows = session.execute(
                select(
                    ContactSuppression.organization_id,
                    ContactSuppression.channel,
                    ContactSuppression.address,
                    ContactSuppression.reason,
                ).where(
                    ContactSuppression.organization_id.in_({org for org, _, _ in wanted}),
                    ContactSuppression.address.in_({address for _, _, address in wanted}),
                )
            )
            self._reasons = {(org, c, a): reason for org, c, a, reason in rows if (org, c, a) in wanted}

    def suppressed(self, transaction: Transaction) -> dict[str, str]:
        """Channel → reason, as `suppressed_channels` would answer."""
        found: dict[str, str] = {}
        for channel in (Channel.EMAIL, Channel.SMS):
            address = address_for(transaction, channel)
            reason = self._reasons.get((transaction.organization_id, channel, address or ""))
            if address and reason:
                found[channel] = reason
        return found

    def add(self, organization_id: int, channel: str, address: str, reason: str) -> None:
        self._reasons.setdefault((organization_id, channel, address), reason)


def suppressed_channels(session: DbSession, transaction: Transaction) -> dict[str, str]:
    """Channel → reason, for the customer's addresses this organization may no longer use."""
    return BatchContacts(session, [transaction]).suppressed(transaction)


def available_channels(
    session: DbSession, transaction: Transaction, suppressed: dict[str, str] | None = None
) -> list[str]:
    """Channels the customer can be reached on: contact details present, not opted out or undeliverable."""
    if suppressed is None:
        suppressed = suppressed_channels(session, transaction)
    return [c for c in (Channel.EMAIL, Channel.SMS) if address_for(transaction, c) and c not in suppressed]


def effective_channels(
    session: DbSession,
    attempt: RecoveryAttempt,
    transaction: Transaction,
    suppressed: dict[str, str] | None = None,
) -> list[str]:
    """The channels the attempt sends on now: those asked for, a dead one replaced by the other if allowed.

    Allowed: the attempt allows fallback and the organization lets that channel fall back.
    An email address the customer unsubscribed is dropped, never replaced: the link
    they clicked says "Stop these reminders", not "text me instead". A number that
    replied STOP (Twilio 21610) falls back to email, as issue 5 asks: STOP is the
    carrier's keyword for texts, and says nothing about email.
    `suppressed` (channel → reason) saves the query when the caller knows it.
    """
    if suppressed is None:
        suppressed = suppressed_channels(session, transaction)
    usable = available_channels(session, transaction, suppressed)
    organization = session.get(Organization, attempt.organization_id)
    may_fall_back = organization.fallback_set if organization is not None else frozenset()
    result: list[str] = []
    for channel in attempt.channels:
        if channel in usable:
            chosen: str | None = channel
        elif (
            attempt.allow_fallback
            and channel in may_fall_back
            and not (channel == Channel.EMAIL and suppressed.get(channel) == SuppressionReason.OPTED_OUT)
            and other_channel(channel) in usable
        ):
            chosen = other_channel(channel)
        else:
            chosen = None
        if chosen and chosen not in result:
            result.append(chosen)
    return result


def suppress(
    session: DbSession,
    organization_id: int,
    channel: str,
    address: str,
    reason: str,
    *,
    detail: str | None = None,
    message_id: int | None = None,
) -> None:
    """Never message this address again in this organization (idempotent).

    One INSERT … ON CONFLICT DO NOTHING: a send batch and a Twilio callback
    suppressing the same address at once both succeed, and the first reason stays.
    """
    session.execute(
        insert_ignoring_duplicates(
            session, ContactSuppression, ("organization_id", "channel", "address")
        ).values(
            organization_id=organization_id,
            channel=channel,
            address=address,
            reason=reason,
            detail=(detail or "")[:500] or None,
            message_id=message_id,
        )
    )
