"""Campaigns as merchants keep them: versions, optimistic edits, archiving, the default equal to settings."""

from __future__ import annotations

from typing import Any

import pytest

from recovery.audit import Actor
from recovery.campaigns import builtin, services
from recovery.campaigns.steps import CampaignRefused
from recovery.models import AuditEvent, Campaign, Organization, RecoveryRule, RuleAction, utcnow
from recovery.organizations.services import RecoverySettings, update_recovery_settings

STEPS = [{"action": "email", "delay_hours": 0, "after": "previous"}]


def actor(org: Organization) -> Actor:
    return Actor.system(org.id, "tester@example.com")


def make(db: Any, org: Organization, **changes: Any) -> Campaign:
    campaign = services.create(db.session, org, actor(org), {"name": "Mine", "steps": STEPS, **changes})
    db.session.commit()
    return campaign


def test_create_stores_version_one_and_audits(db: Any, org: Organization) -> None:
    campaign = make(db, org)
    version = services.current_version(db.session, campaign)
    assert (campaign.current_version, version.version, version.steps) == (1, 1, STEPS)
    assert version.created_by == "tester@example.com"
    event = db.session.query(AuditEvent).filter_by(action="campaign.created").one()
    assert event.target_id == str(campaign.id)


def test_an_edit_adds_a_version_and_keeps_the_old_one(db: Any, org: Organization) -> None:
    campaign = make(db, org)
    new_steps = [*STEPS, {"action": "sms", "delay_hours": 24, "after": "previous"}]
    services.update(db.session, campaign, actor(org), {"steps": new_steps}, expected_version=1)
    db.session.commit()
    assert campaign.current_version == 2
    assert services.version_of(db.session, campaign, 1).steps == STEPS  # type: ignore[union-attr]
    assert services.current_version(db.session, campaign).steps == new_steps
    assert db.session.query(AuditEvent).filter_by(action="campaign.changed").count() == 1


@pytest.mark.parametrize("expected", [None, 0, 2])
def test_an_edit_from_another_version_is_refused_409(db: Any, org: Organization, expected: Any) -> None:
    campaign = make(db, org)
    with pytest.raises(CampaignRefused) as refused:
        services.update(db.session, campaign, actor(org), {"name": "x"}, expected_version=expected)
    assert refused.value.status == 409
    assert "someone else" in refused.value.message


def test_a_bad_edit_saves_nothing(db: Any, org: Organization) -> None:
    campaign = make(db, org)
    with pytest.raises(CampaignRefused) as refused:
        services.update(db.session, campaign, actor(org), {"end": "never"}, expected_version=1)
    assert refused.value.field == "end"
    db.session.rollback()
    assert campaign.current_version == 1 and len(campaign.versions) == 1


def test_get_hides_another_organizations_campaign(db: Any, org: Organization, make_org: Any) -> None:
    campaign = make(db, org)
    other = make_org()
    assert services.get(db.session, org.id, campaign.id) is campaign
    assert services.get(db.session, other.id, campaign.id) is None
    with pytest.raises(CampaignRefused) as refused:
        services.get_or_refuse(db.session, other.id, campaign.id)
    assert refused.value.status == 404


def test_archive_hides_from_the_list_and_refuses_edits(db: Any, org: Organization) -> None:
    campaign = make(db, org)
    services.archive(db.session, campaign, actor(org), now=utcnow())
    db.session.commit()
    assert services.list_campaigns(db.session, org.id) == []
    assert services.list_campaigns(db.session, org.id, archived=True) == [campaign]
    with pytest.raises(CampaignRefused) as refused:
        services.update(db.session, campaign, actor(org), {"name": "x"}, expected_version=1)
    assert refused.value.status == 409


def test_a_campaign_a_rule_uses_or_the_default_cannot_be_archived(db: Any, org: Organization) -> None:
    builtin.install(db.session, org)
    db.session.commit()
    by_key = {c.builtin: c for c in services.list_campaigns(db.session, org.id)}
    for key in (builtin.DEFAULT, builtin.SOFT_DECLINE):
        with pytest.raises(CampaignRefused) as refused:
            services.archive(db.session, by_key[key], actor(org), now=utcnow())
        assert refused.value.status == 409
    mine = make(db, org)
    db.session.add(
        RecoveryRule(
            organization_id=org.id,
            position=9,
            name="Big ones",
            action=RuleAction.START_CAMPAIGN,
            campaign_id=mine.id,
        )
    )
    with pytest.raises(CampaignRefused, match="Big ones"):
        services.archive(db.session, mine, actor(org), now=utcnow())


def _settings(schedule: str, lifetime: int) -> RecoverySettings:
    return RecoverySettings(schedule, lifetime, None, None, None, False, [], None)


def test_saving_the_schedule_adds_a_version_of_the_default_campaign(db: Any, org: Organization) -> None:
    builtin.install(db.session, org)
    db.session.commit()
    default = next(c for c in services.list_campaigns(db.session, org.id) if c.builtin == builtin.DEFAULT)
    update_recovery_settings(db.session, org, actor(org), _settings("0,2,5", 9))
    db.session.commit()
    version = services.current_version(db.session, default)
    assert version.version == 2
    assert version.steps == builtin.steps_from_schedule([0, 2, 5])
    assert version.link_lifetime_days == 9
    # Saved again unchanged: no new version.
    update_recovery_settings(db.session, org, actor(org), _settings("0,2,5", 9))
    assert default.current_version == 2


def test_an_organization_without_campaigns_saves_its_settings_as_before(db: Any, org: Organization) -> None:
    assert update_recovery_settings(db.session, org, actor(org), _settings("0,2", 4))
    db.session.commit()
    assert db.session.query(Campaign).count() == 0
