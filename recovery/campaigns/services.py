"""A merchant's campaigns: listed, read, created, edited (a new version each time), archived.

Versions never change once written: an attempt points at the version it
started with, so an edit changes only the recoveries started after it. There
is no delete: a campaign that attempts or rules used stays readable, archived.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import select

from recovery import audit
from recovery.audit import Actor
from recovery.campaigns import builtin
from recovery.campaigns.steps import CampaignRefused, Definition, check_definition
from recovery.models import Campaign, CampaignVersion, Organization, RecoveryRule, utcnow
from recovery.models.base import DbSession

CHANGED_MEANWHILE = (
    "This campaign was changed by someone else meanwhile (now version {current}); reload it and try again."
)


def list_campaigns(session: DbSession, organization_id: int, *, archived: bool = False) -> Sequence[Campaign]:
    """The organization's campaigns by name; the archived ones too if `archived`."""
    query = select(Campaign).where(Campaign.organization_id == organization_id)
    if not archived:
        query = query.where(Campaign.archived_at.is_(None))
    return session.scalars(query.order_by(Campaign.name, Campaign.id)).all()


def get(session: DbSession, organization_id: int, campaign_id: int) -> Campaign | None:
    """The campaign if it belongs to the organization (None hides another's)."""
    campaign = session.get(Campaign, campaign_id)
    return campaign if campaign is not None and campaign.organization_id == organization_id else None


def get_or_refuse(session: DbSession, organization_id: int, campaign_id: int) -> Campaign:
    campaign = get(session, organization_id, campaign_id)
    if campaign is None:
        raise CampaignRefused("No such campaign.", status=404)
    return campaign


def version_of(session: DbSession, campaign: Campaign, version: int) -> CampaignVersion | None:
    return session.scalar(
        select(CampaignVersion).where(
            CampaignVersion.campaign_id == campaign.id, CampaignVersion.version == version
        )
    )


def current_version(session: DbSession, campaign: Campaign) -> CampaignVersion:
    """The version a recovery started now follows."""
    found = version_of(session, campaign, campaign.current_version)
    assert found is not None, "every campaign has its current version"
    return found


def definition(session: DbSession, campaign: Campaign) -> Definition:
    """The campaign as its current version defines it."""
    version = current_version(session, campaign)
    return Definition(campaign.name, list(version.steps), version.end, version.link_lifetime_days)


def _add_version(
    session: DbSession, campaign: Campaign, number: int, checked: Definition, actor: Actor
) -> CampaignVersion:
    version = CampaignVersion(
        campaign_id=campaign.id,
        version=number,
        steps=checked.steps,
        end=checked.end,
        link_lifetime_days=checked.link_lifetime_days,
        created_by=actor.label[:200],
    )
    session.add(version)
    campaign.current_version = number
    session.flush()
    return version


def _audit(session: DbSession, actor: Actor, action: str, campaign: Campaign, **details: Any) -> None:
    audit.record(
        session,
        actor,
        action,
        target_type="campaign",
        target_id=campaign.id,
        name=campaign.name,
        version=campaign.current_version,
        **details,
    )


def create(session: DbSession, organization: Organization, actor: Actor, raw: object) -> Campaign:
    """Check `raw` (name, steps, end, link_lifetime_days) and store it as a campaign at version 1."""
    checked = check_definition(raw)
    campaign = Campaign(organization_id=organization.id, name=checked.name, current_version=1)
    session.add(campaign)
    session.flush()
    _add_version(session, campaign, 1, checked, actor)
    _audit(session, actor, "campaign.created", campaign, steps=checked.steps, end=checked.end)
    return campaign


def update(
    session: DbSession, campaign: Campaign, actor: Actor, raw: object, *, expected_version: int | None
) -> Campaign:
    """Store the edit as a new version; CampaignRefused 409 unless it is still at `expected_version`.

    The keys `raw` leaves out keep their current values. The campaign's row is
    locked first (PostgreSQL), so two edits from the same version cannot both
    pass the check: the second waits, then finds the version moved on.
    """
    session.scalar(select(Campaign.id).where(Campaign.id == campaign.id).with_for_update())
    session.refresh(campaign)
    if expected_version != campaign.current_version:
        raise CampaignRefused(CHANGED_MEANWHILE.format(current=campaign.current_version), status=409)
    if campaign.archived_at is not None:
        raise CampaignRefused("This campaign is archived; it cannot be changed.", status=409)
    checked = check_definition(raw, current=definition(session, campaign))
    campaign.name = checked.name
    campaign.updated_at = utcnow()
    _add_version(session, campaign, campaign.current_version + 1, checked, actor)
    _audit(session, actor, "campaign.changed", campaign, steps=checked.steps, end=checked.end)
    return campaign


def archive(session: DbSession, campaign: Campaign, actor: Actor, *, now: datetime) -> Campaign:
    """Archive the campaign: no rule or start may choose it any more; its versions stay for the attempts."""
    if campaign.archived_at is not None:
        return campaign
    if campaign.builtin == builtin.DEFAULT:
        raise CampaignRefused(
            "The default campaign follows the organization's schedule; it cannot be archived.", status=409
        )
    rule = session.scalar(
        select(RecoveryRule.name)
        .where(RecoveryRule.campaign_id == campaign.id)
        .order_by(RecoveryRule.position)
    )
    if rule is not None:
        raise CampaignRefused(f'The rule "{rule}" starts this campaign; change that rule first.', status=409)
    campaign.archived_at = now
    _audit(session, actor, "campaign.archived", campaign)
    return campaign


def sync_default(
    session: DbSession, organization: Organization, actor: Actor, days: Sequence[int], lifetime_days: int
) -> CampaignVersion | None:
    """Give the organization's default campaign a new version equal to its schedule and lifetime.

    Called when the recovery settings change, so the default campaign and the
    settings never disagree. None if it has no default campaign (or it is equal already).
    """
    campaign = session.scalar(
        select(Campaign).where(
            Campaign.organization_id == organization.id, Campaign.builtin == builtin.DEFAULT
        )
    )
    if campaign is None:
        return None
    steps = builtin.steps_from_schedule(days)
    current = current_version(session, campaign)
    if current.steps == steps and current.link_lifetime_days == lifetime_days:
        return None
    checked = Definition(campaign.name, steps, current.end, lifetime_days)
    version = _add_version(session, campaign, campaign.current_version + 1, checked, actor)
    campaign.updated_at = utcnow()
    _audit(session, actor, "campaign.changed", campaign, steps=steps, end=checked.end, reason="settings")
    return version
