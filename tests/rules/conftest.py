"""An organization with the built-in campaigns and rules (the `make_org` fixture's have none)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from sqlalchemy import select

from recovery.campaigns import builtin
from recovery.models import Campaign, Organization, RecoveryRule


@pytest.fixture
def make_rules_org(db: Any, make_org: Callable[..., Organization]) -> Callable[..., Organization]:
    def make(**overrides: Any) -> Organization:
        organization = make_org(**overrides)
        builtin.install(db.session, organization)
        db.session.commit()
        return organization

    return make


@pytest.fixture
def rules_org(make_rules_org: Callable[..., Organization]) -> Organization:
    return make_rules_org(name="Acme Shop")


def campaign(db: Any, organization: Organization, key: str) -> Campaign:
    found = db.session.scalar(
        select(Campaign).where(Campaign.organization_id == organization.id, Campaign.builtin == key)
    )
    assert found is not None
    return found


def rules_of(db: Any, organization: Organization) -> list[RecoveryRule]:
    return list(
        db.session.scalars(
            select(RecoveryRule)
            .where(RecoveryRule.organization_id == organization.id)
            .order_by(RecoveryRule.position)
        )
    )
