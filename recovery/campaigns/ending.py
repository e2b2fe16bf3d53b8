"""The end of a campaign's attempt: `exhausted` (today's end) or `hold_for_review`.

Kept apart from the engine: the send path's checks (`recoveries.claims`) end
attempts, and the engine itself imports the send path.
"""

from __future__ import annotations

from datetime import datetime

from recovery.audit import Actor
from recovery.models import Campaign, CampaignEnd, CampaignVersion, RecoveryAttempt
from recovery.models.base import DbSession
from recovery.review import services as review


def campaign_of(session: DbSession, attempt: RecoveryAttempt) -> tuple[Campaign, CampaignVersion] | None:
    """The campaign and version the attempt follows; None for a schedule's attempt."""
    if attempt.campaign_version_id is None:
        return None
    version = session.get(CampaignVersion, attempt.campaign_version_id)
    campaign = session.get(Campaign, version.campaign_id) if version is not None else None
    return (campaign, version) if campaign is not None and version is not None else None


def after_exhausted(session: DbSession, attempt: RecoveryAttempt, *, now: datetime) -> bool:
    """Hold the transaction for review if the attempt's campaign ends that way; True if it was held."""
    found = campaign_of(session, attempt)
    if found is None or found[1].end != CampaignEnd.HOLD_FOR_REVIEW:
        return False
    campaign, version = found
    return review.hold(
        session,
        attempt.transaction,
        Actor.system(attempt.organization_id, "campaign"),
        reason=f'Campaign "{campaign.name}" (version {version.version}) ended without payment.',
        now=now,
    )
