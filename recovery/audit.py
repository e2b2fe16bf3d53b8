"""Record who did what: one AuditEvent per state-changing action."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from recovery.models import ApiToken, AuditEvent, User
from recovery.models.base import DbSession


@dataclass(frozen=True)
class Actor:
    """Who acts: a staff user, an API token or the system, and from where."""

    organization_id: int
    label: str
    user_id: int | None = None
    ip_address: str | None = None
    api_token_id: int | None = None

    @classmethod
    def for_user(cls, user: User, ip_address: str | None = None) -> Actor:
        return cls(user.organization_id, user.email, user.id, ip_address)

    @classmethod
    def for_token(cls, token: ApiToken, ip_address: str | None = None) -> Actor:
        return cls(token.organization_id, f"API token {token.name}", None, ip_address, token.id)

    @classmethod
    def system(cls, organization_id: int, label: str = "system") -> Actor:
        return cls(organization_id, label)


def record(
    session: DbSession,
    actor: Actor,
    action: str,
    *,
    transaction_id: int | None = None,
    target_type: str | None = None,
    target_id: int | str | None = None,
    webhook_event_id: int | None = None,
    at: datetime | None = None,
    **details: Any,
) -> AuditEvent:
    """Add an AuditEvent to the session; the caller's commit makes it true.

    `webhook_event_id`: the stored Stripe event that caused it, if any. `at`:
    when it happened, if the caller's `now` is not the clock's (a Stripe
    event's time, the demo's story); default now.
    """
    event = AuditEvent(
        organization_id=actor.organization_id,
        actor_user_id=actor.user_id,
        actor_api_token_id=actor.api_token_id,
        actor_label=actor.label,
        action=action,
        transaction_id=transaction_id,
        target_type=target_type,
        target_id=None if target_id is None else str(target_id),
        details=details,
        ip_address=actor.ip_address,
        webhook_event_id=webhook_event_id,
    )
    if at is not None:
        event.created_at = at
    session.add(event)
    return event
