"""The dashboard's KPI tiles: recovered this month, recovery rate, recoveries in progress, messages sent.

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
from sqlalchemy import func, select

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
# The recovery rate looks at recoveries that ended this recently: a bounded range
# of ix_recovery_attempt_org_ended, and a figure that moves with the merchant's
# recent work rather than with years of history.
RATE_WINDOW_DAYS = 30
# Which endings count is AttemptStatus.FINISHED: a recovery still running has no
# outcome yet, so counting it (as this figure once did) made the rate look worse
# the more recoveries were started; one that failed before any message went out
# never asked the customer anything.
RATE_DEFINITION = (
    f"Of the recoveries that ended in the last {RATE_WINDOW_DAYS} days, the share paid: "
    "recovered ÷ (recovered + ran out + cancelled). Recoveries still in progress are not counted "
    "until they end, nor are those that could reach nobody."
)
S = TransactionStatus
SENT_STATUSES = (MessageStatus.SENT, MessageStatus.DELIVERED)


@dataclass(frozen=True)
class Kpis:
    """What the tiles show; amounts in minor units per currency, largest first.

    `computed_at` is when the figures were read from the database, which the
    tiles show ("as of"): a cached copy is up to CACHE_SECONDS old.
    """

    month_start: datetime
    computed_at: datetime
    recovered: list[tuple[str, int]] = field(default_factory=list)
    rate_recovered: int = 0
    # Expired or exhausted: the link ran out unpaid.
    rate_ran_out: int = 0
    rate_cancelled: int = 0
    in_flight: int = 0
    messages_sent: int = 0

    @property
    def rate_finished(self) -> int:
        return self.rate_recovered + self.rate_ran_out + self.rate_cancelled

    @property
    def rate(self) -> float | None:
        """Recovered share in 0..1; None when no recovery ended in the window."""
        return self.rate_recovered / self.rate_finished if self.rate_finished else None

    def to_json(self) -> str:
        values = asdict(self)
        values["month_start"] = self.month_start.isoformat()
        values["computed_at"] = self.computed_at.isoformat()
        return json.dumps(values)

    @classmethod
    def from_json(cls, raw: str | bytes) -> Kpis:
        values = json.loads(raw)
        values["month_start"] = datetime.fromisoformat(values["month_start"])
        values["computed_at"] = datetime.fromisoformat(values["computed_at"])
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


@dataclass(frozen=True)
class RateCounts:
    recovered: int
    ran_out: int
    cancelled: int


def rate_counts(session: DbSession, organization_id: int, since: datetime) -> RateCounts:
    """Recoveries that ended since `since`, by outcome (RATE_DEFINITION); ix_recovery_attempt_org_ended."""
    by_status = dict(
        session.execute(
            select(RecoveryAttempt.status, func.count())
            .where(
                RecoveryAttempt.organization_id == organization_id,
                RecoveryAttempt.ended_at >= since,
                RecoveryAttempt.status.in_(AttemptStatus.FINISHED),
            )
            .group_by(RecoveryAttempt.status)
        ).all()
    )
    count = {status: int(by_status.get(status, 0)) for status in AttemptStatus.FINISHED}
    return RateCounts(
        recovered=count[AttemptStatus.COMPLETED],
        ran_out=count[AttemptStatus.EXPIRED] + count[AttemptStatus.EXHAUSTED],
        cancelled=count[AttemptStatus.CANCELLED],
    )


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
    rate = rate_counts(session, organization_id, now - timedelta(days=RATE_WINDOW_DAYS))
    return Kpis(
        month_start=start,
        computed_at=now,
        recovered=recovered_by_currency(session, organization_id, start),
        rate_recovered=rate.recovered,
        rate_ran_out=rate.ran_out,
        rate_cancelled=rate.cancelled,
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
            try:
                hit = Kpis.from_json(raw) if raw is not None else None
            except (ValueError, TypeError, KeyError):
                hit = None  # written by an older release: computed afresh below
            if hit is not None and hit.month_start == month_start(now, timezone):
                return hit
    kpis = compute(session, organization_id, timezone, now)
    if redis is not None:
        try:
            redis.set(key, kpis.to_json(), ex=CACHE_SECONDS)
        except RedisError as error:
            log.warning("kpis_cache_unavailable", error=str(error))
    return kpis
