"""The admin pages' queries: an organization's stored events, and what each one did."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import select

from recovery.models import AuditEvent, PaymentFulfilment, WebhookEvent
from recovery.models.base import DbSession


def caused_entries(session: DbSession, event: WebhookEvent) -> list[AuditEvent]:
    """The timeline entries this event wrote, oldest first."""
    return list(
        session.scalars(
            select(AuditEvent).where(AuditEvent.webhook_event_id == event.id).order_by(AuditEvent.id)
        )
    )


def fulfilment_of(session: DbSession, transaction_id: int) -> PaymentFulfilment | None:
    return session.scalar(select(PaymentFulfilment).where(PaymentFulfilment.transaction_id == transaction_id))


PAGE_SIZE = 50


@dataclass
class EventPage:
    events: list[WebhookEvent]
    next_before: int | None


def list_events(
    session: DbSession,
    organization_id: int,
    *,
    state: str | None = None,
    type: str | None = None,
    object_id: str | None = None,
    before: int | None = None,
    limit: int = PAGE_SIZE,
) -> EventPage:
    """The organization's events, newest first, by keyset on id."""
    statement = select(WebhookEvent).where(WebhookEvent.organization_id == organization_id)
    if state:
        statement = statement.where(WebhookEvent.status == state)
    if type:
        statement = statement.where(WebhookEvent.type == type)
    if object_id:
        statement = statement.where(
            (WebhookEvent.object_id == object_id) | (WebhookEvent.stripe_event_id == object_id)
        )
    if before is not None:
        statement = statement.where(WebhookEvent.id < before)
    rows = list(session.scalars(statement.order_by(WebhookEvent.id.desc()).limit(limit + 1)))
    more = len(rows) > limit
    rows = rows[:limit]
    return EventPage(rows, rows[-1].id if more and rows else None)


def event_types(session: DbSession, organization_id: int) -> list[str]:
    return sorted(
        session.scalars(
            select(WebhookEvent.type).where(WebhookEvent.organization_id == organization_id).distinct()
        )
    )


def get_event(session: DbSession, organization_id: int, event_id: int) -> WebhookEvent | None:
    return session.scalar(
        select(WebhookEvent).where(
            WebhookEvent.id == event_id, WebhookEvent.organization_id == organization_id
        )
    )
