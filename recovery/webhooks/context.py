"""What a webhook handler works with: the stored event, the session, a lazy gateway, who to credit.

The handlers (handlers.py), the matching (matching.py) and the import of
failed payments (failed_payments.py) all take one `Context`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from recovery.logs import get_logger
from recovery.models import (
    AuditEvent,
    Transaction,
    WebhookEvent,
    utcnow,
)
from recovery.models.base import DbSession
from recovery.payments.fulfilment import (
    Witness,
)
from recovery.payments.gateway import StripeGateway

log = get_logger("recovery.webhooks")

ACTOR_LABEL = "Stripe webhook"
RECONCILIATION_LABEL = "Reconciliation"


@dataclass
class Context:
    """What a handler works with. `gateway()` is None when no Stripe key is configured."""

    session: DbSession
    event: WebhookEvent | None
    gateway_factory: Callable[[], StripeGateway | None]
    label: str = ACTOR_LABEL
    organization_id: int | None = None
    # Set by a fulfilment (the reconciliation counts them).
    recovered_transaction_id: int | None = None
    _gateway: StripeGateway | None = field(default=None, repr=False)

    def gateway(self) -> StripeGateway | None:
        if self._gateway is None:
            self._gateway = self.gateway_factory()
        return self._gateway

    @property
    def occurred_at(self) -> datetime:
        if self.event is not None and self.event.stripe_created_at is not None:
            return self.event.stripe_created_at
        return utcnow()

    @property
    def witness(self) -> Witness:
        """Who tells the fulfilment it was paid: this event (or the reconciliation), and when."""
        return Witness(
            self.label,
            self.occurred_at,
            self.event.id if self.event else None,
            self.event.stripe_event_id if self.event else None,
        )

    def note(self, transaction: Transaction, action: str, summary: str, **details: Any) -> AuditEvent:
        """Add a timeline entry for the transaction, linked to the event that caused it."""
        return self.witness.note(self.session, transaction, action, summary, **details)
