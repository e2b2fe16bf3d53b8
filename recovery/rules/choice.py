"""The campaign a rule or a person chooses: the organization's, not archived, at its current version."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select

from recovery.models import Campaign, CampaignVersion
from recovery.models.base import DbSession
from recovery.rules.conditions import RuleRefused


def usable_campaign(session: DbSession, organization_id: int, campaign_id: Any, field: str) -> Campaign:
    """The organization's campaign, not archived; RuleRefused (422) naming `field` otherwise.

    Another organization's campaign is refused with the same words as a missing one.
    """
    if isinstance(campaign_id, bool) or not isinstance(campaign_id, int):
        raise RuleRefused("campaign_id must be a campaign's id.", field=field)
    campaign = session.get(Campaign, campaign_id)
    if campaign is None or campaign.organization_id != organization_id:
        raise RuleRefused(f"There is no campaign {campaign_id}.", field=field)
    if campaign.archived_at is not None:
        raise RuleRefused(f"Campaign “{campaign.name}” is archived; choose another.", field=field)
    return campaign


def current_version(session: DbSession, campaign_id: int) -> CampaignVersion:
    """The version of the campaign a recovery started now follows."""
    found = session.scalar(
        select(CampaignVersion)
        .join(Campaign, Campaign.id == CampaignVersion.campaign_id)
        .where(Campaign.id == campaign_id, CampaignVersion.version == Campaign.current_version)
    )
    assert found is not None, "every campaign has its current version"
    return found


class CurrentVersions:
    """Each campaign's current version for one batch of starts, read once per campaign.

    A bulk start's chunk would otherwise read the version, and then its
    campaign, for every transaction: holding both here keeps the campaign in
    the session's (weak) identity map too. A campaign edited mid-chunk starts
    the rest of the chunk on the version read first, as the rules are read
    once per chunk.
    """

    def __init__(self, session: DbSession) -> None:
        self._session = session
        self._found: dict[int, tuple[CampaignVersion, Campaign]] = {}

    def get(self, campaign_id: int) -> CampaignVersion:
        if campaign_id not in self._found:
            version = current_version(self._session, campaign_id)
            campaign = self._session.get(Campaign, campaign_id)
            assert campaign is not None
            self._found[campaign_id] = (version, campaign)
        return self._found[campaign_id][0]
