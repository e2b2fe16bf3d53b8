"""The campaigns and rules every organization starts with.

New organizations (`create-org`, sign-up) get them with every rule on. The
migration that brought campaigns gave existing organizations the same, with
the three decline rules off: their recoveries keep following their own
schedule (the default campaign) until they turn a rule on.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import select

from recovery.declines import CUSTOMER_ACTION, DO_NOT_CONTACT, RETRY_LATER
from recovery.models import Campaign, CampaignEnd, CampaignVersion, Organization, RecoveryRule, RuleAction
from recovery.models import StepAction as S
from recovery.models.base import DbSession

DEFAULT = "default"
SOFT_DECLINE = "soft_decline"
CUSTOMER_ACTION_CAMPAIGN = "customer_action"
DO_NOT_CONTACT_CAMPAIGN = "do_not_contact"


def _step(action: str, hours: int, after: str = "previous") -> dict[str, Any]:
    return {"action": action, "delay_hours": hours, "after": after}


def steps_from_schedule(days: Sequence[int]) -> list[dict[str, Any]]:
    """Today's schedule ("0,1,3,6": days after the start) as campaign steps, each after the one before."""
    steps, previous = [], 0
    for day in days:
        steps.append(_step(S.EMAIL_AND_SMS, (day - previous) * 24))
        previous = day
    return steps


# (key, name, steps, end, link lifetime in days); the default's steps come from the organization.
BUILTIN_CAMPAIGNS: tuple[tuple[str, str, list[dict[str, Any]], str, int], ...] = (
    (
        SOFT_DECLINE,
        "Soft decline: retry the card, then remind",
        # A retry a day after the failure (the networks allow one a day), a reminder an
        # hour after each retry that did not pay, a last retry on day 6.
        [
            _step(S.RETRY_CARD, 24, "failure"),
            _step(S.EMAIL_AND_SMS, 1),
            _step(S.RETRY_CARD, 72, "failure"),
            _step(S.EMAIL_AND_SMS, 1),
            _step(S.RETRY_CARD, 144, "failure"),
            _step(S.EMAIL, 1),
        ],
        CampaignEnd.EXHAUSTED,
        10,
    ),
    (
        CUSTOMER_ACTION_CAMPAIGN,
        "New card needed: messages only",
        [
            _step(S.EMAIL_AND_SMS, 0),
            _step(S.EMAIL_AND_SMS, 24),
            _step(S.EMAIL_AND_SMS, 48),
            _step(S.EMAIL, 72),
        ],
        CampaignEnd.EXHAUSTED,
        7,
    ),
    (
        DO_NOT_CONTACT_CAMPAIGN,
        "Do not contact: tell staff, hold for review",
        [_step(S.NOTIFY_STAFF, 0)],
        CampaignEnd.HOLD_FOR_REVIEW,
        1,
    ),
)

DO_NOT_CONTACT_REASON = (
    "The card was reported lost or stolen, or the payment looked fraudulent: "
    "the customer is not contacted and the card is not tried again."
)

# (name, decline category, action, campaign key or None, reason)
BUILTIN_RULES: tuple[tuple[str, str, str, str | None, str | None], ...] = (
    (
        "Lost, stolen or fraud: do not contact",
        DO_NOT_CONTACT,
        RuleAction.DO_NOT_RECOVER,
        None,
        DO_NOT_CONTACT_REASON,
    ),
    ("Card may work again: retry it", RETRY_LATER, RuleAction.START_CAMPAIGN, SOFT_DECLINE, None),
    (
        "New card needed: ask the customer",
        CUSTOMER_ACTION,
        RuleAction.START_CAMPAIGN,
        CUSTOMER_ACTION_CAMPAIGN,
        None,
    ),
)
DEFAULT_RULE_NAME = "Everything else"


def _campaign(
    session: DbSession,
    organization: Organization,
    key: str,
    name: str,
    steps: list[dict[str, Any]],
    end: str,
    days: int,
) -> Campaign:
    campaign = Campaign(organization_id=organization.id, name=name, builtin=key, current_version=1)
    session.add(campaign)
    session.flush()
    session.add(
        CampaignVersion(
            campaign_id=campaign.id,
            version=1,
            steps=steps,
            end=end,
            link_lifetime_days=days,
            created_by="Recovery",
        )
    )
    return campaign


def install(session: DbSession, organization: Organization, *, rules_enabled: bool = True) -> None:
    """Give the organization its built-in campaigns and rules, unless it has them already."""
    if session.scalar(select(Campaign.id).where(Campaign.organization_id == organization.id).limit(1)):
        return
    from recovery.recoveries.schedule import parse_schedule  # recoveries imports campaigns

    default = _campaign(
        session,
        organization,
        DEFAULT,
        "Default schedule",
        steps_from_schedule(parse_schedule(organization.recovery_schedule)),
        CampaignEnd.EXHAUSTED,
        organization.attempt_lifetime_days,
    )
    by_key = {DEFAULT: default}
    for key, name, steps, end, days in BUILTIN_CAMPAIGNS:
        by_key[key] = _campaign(session, organization, key, name, steps, end, days)
    for position, (name, category, action, rule_key, reason) in enumerate(BUILTIN_RULES):
        session.add(
            RecoveryRule(
                organization_id=organization.id,
                position=position,
                name=name,
                enabled=rules_enabled,
                conditions=[{"type": "decline_category_in", "values": [category]}],
                action=action,
                campaign_id=by_key[rule_key].id if rule_key else None,
                reason=reason,
            )
        )
    session.add(
        RecoveryRule(
            organization_id=organization.id,
            position=len(BUILTIN_RULES),
            name=DEFAULT_RULE_NAME,
            enabled=True,
            is_default=True,
            conditions=[],
            action=RuleAction.START_CAMPAIGN,
            campaign_id=default.id,
        )
    )
    session.flush()
