"""The dashboard's KPI tiles: recovered this month, recovery rate, attempts in flight, messages sent.

Aggregates over one organization, each an index-backed query (see
`explain` and docs/performance.md). The list page never waits for them: the
tiles load with htmx after it, and the figures are cached in Redis for
CACHE_SECONDS, so a busy dashboard costs one set of queries a minute per
organization.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from redis import Redis
from redis.exceptions import RedisError
from sqlalchemy import and_, exists, func, select

from recovery.logs import get_logger
from recovery.models import (
    AttemptStatus,
    Message,
    MessageStatus,
    RecoveryAttempt,
    Transaction,
    TransactionStatus,
)
from recovery.models.base import DbSession

log = get_logger("recovery.kpis")

CACHE_SECONDS = 60
# The recovery rate looks at transactions that failed this recently: a bounded
# range of ix_transaction_org_status_failed, and a figure that moves with
# the merchant's recent work rather than with years of history.
RATE_WINDOW_DAYS = 30
RATE_DEFINITION = (
    f"Of the transactions that failed in the last {RATE_WINDOW_DAYS} days and went into recovery, "
    "the share recovered: recovered ÷ (recovered + unrecovered + recovering + failed with a recovery "
    "attempt). Cancelled ones and those never sent to recovery are left out."
)
S = TransactionStatus
SENT_STATUSES = (MessageStatus.SENT, MessageStatus.DELIVERED)


@dataclass(frozen=True)
class Kpis:
    """What the tiles show; amounts in minor units per currency, largest first."""

    month_start: datetime
    recovered: list[tuple[str, int]] = field(default_factory=list)
    rate_recovered: int = 0
    rate_total: int = 0
    in_flight: int = 0
    messages_sent: int = 0

    @property
    def rate(self) -> float | None:
        """Recovered share in 0..1; None when nothing went into recovery in the window."""
        return self.rate_recovered / self.rate_total if self.rate_total else None

    def to_json(self) -> str:
        values = asdict(self)
        values["month_start"] = self.month_start.isoformat()
        return json.dumps(values)

    @classmethod
    def from_json(cls, raw: str | bytes) -> Kpis:
        values = json.loads(raw)
        values["month_start"] = datetime.fromisoformat(values["month_start"])
        values["recovered"] = [(c, int(a)) for c, a in values["recovered"]]
        return cls(**values)


def month_start(now: datetime, timezone: str) -> datetime:
    """The start of `now`'s calendar month in the organization's time zone, in UTC."""
    try:
        zone = ZoneInfo(timezone)
    except (ZoneInfoNotFoundError, ValueError):
        zone = ZoneInfo("UTC")
    local = now.astimezone(zone)
    return local.replace(day=1, hour=0, minute=0, second=0, microsecond=0).astimezone(UTC)


def recovered_by_currency(session: DbSession, organization_id: int, since: datetime) -> list[tuple[str, int]]:
    """Money recovered since `since`, per currency: what Stripe says was paid, else the amount."""
    paid = func.coalesce(Transaction.recovered_amount, Transaction.amount)
    rows = session.execute(
        select(Transaction.currency, func.sum(paid))
        .where(
            Transaction.organization_id == organization_id,
            Transaction.status == S.RECOVERED,
            Transaction.recovered_at >= since,
        )
        .group_by(Transaction.currency)
    ).all()
    return sorted(((currency, int(total or 0)) for currency, total in rows), key=lambda r: (-r[1], r[0]))


def rate_counts(session: DbSession, organization_id: int, since: datetime) -> tuple[int, int]:
    """(recovered, in recovery at all) among transactions that failed since `since`; see RATE_DEFINITION."""
    in_window = and_(Transaction.organization_id == organization_id, Transaction.failed_at >= since)
    by_status = dict(
        session.execute(
            select(Transaction.status, func.count())
            .where(in_window, Transaction.status.in_((S.RECOVERED, S.UNRECOVERED, S.RECOVERING)))
            .group_by(Transaction.status)
        ).all()
    )
    # Rare: a failed transaction whose attempt ended without moving it (each probe is one lookup
    # in ix_recovery_attempt_transaction_id).
    failed_with_attempt = session.scalar(
        select(func.count()).where(
            in_window,
            Transaction.status == S.FAILED,
            exists().where(RecoveryAttempt.transaction_id == Transaction.id),
        )
    )
    recovered = int(by_status.get(S.RECOVERED, 0))
    total = recovered + int(by_status.get(S.UNRECOVERED, 0)) + int(by_status.get(S.RECOVERING, 0))
    return recovered, total + int(failed_with_attempt or 0)


def attempts_in_flight(session: DbSession, organization_id: int) -> int:
    """Active attempts: created, scheduled, notified or clicked (ix_recovery_attempt_org_status_created)."""
    return int(
        session.scalar(
            select(func.count()).where(
                RecoveryAttempt.organization_id == organization_id,
                RecoveryAttempt.status.in_(AttemptStatus.ACTIVE),
            )
        )
        or 0
    )


def messages_sent(session: DbSession, organization_id: int, since: datetime) -> int:
    """Emails and SMS that left (sent or delivered, the outbox included) since `since`."""
    return int(
        session.scalar(
            select(func.count()).where(
                Message.organization_id == organization_id,
                Message.status.in_(SENT_STATUSES),
                Message.sent_at >= since,
            )
        )
        or 0
    )


def compute(session: DbSession, organization_id: int, timezone: str, now: datetime) -> Kpis:
    """Every tile's figure, straight from the database."""
    start = month_start(now, timezone)
    recovered, total = rate_counts(session, organization_id, now - timedelta(days=RATE_WINDOW_DAYS))
    return Kpis(
        month_start=start,
        recovered=recovered_by_currency(session, organization_id, start),
        rate_recovered=recovered,
        rate_total=total,
        in_flight=attempts_in_flight(session, organization_id),
        messages_sent=messages_sent(session, organization_id, start),
    )


def cache_key(organization_id: int) -> str:
    return f"recovery:kpis:{organization_id}"


def cached(
    session: DbSession, redis: Redis | None, organization_id: int, timezone: str, now: datetime
) -> Kpis:
    """The figures from Redis if computed in the last CACHE_SECONDS, else computed and stored.

    Redis being down only costs the cache: the figures are computed each time.
    A cached month that has ended is not reused.
    """
    key = cache_key(organization_id)
    if redis is not None:
        try:
            raw = redis.get(key)
        except RedisError as error:
            log.warning("kpis_cache_unavailable", error=str(error))
            redis = None
        else:
            if raw is not None:
                kpis = Kpis.from_json(raw)
                if kpis.month_start == month_start(now, timezone):
                    return kpis
    kpis = compute(session, organization_id, timezone, now)
    if redis is not None:
        try:
            redis.set(key, kpis.to_json(), ex=CACHE_SECONDS)
        except RedisError as error:
            log.warning("kpis_cache_unavailable", error=str(error))
    return kpis
