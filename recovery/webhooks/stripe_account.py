"""An organization's Stripe account: linking a connected account, and importing its failed payments."""

from __future__ import annotations

import re
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from recovery import audit
from recovery.audit import Actor
from recovery.models import Organization
from recovery.models.base import DbSession
from recovery.refusals import Refused


class StripeAccountRefused(Refused):
    """The Stripe account cannot be linked as asked (not an account id, or another organization's)."""


STRIPE_ACCOUNT_ID = re.compile(r"acct_[A-Za-z0-9]{1,250}")


def update_import_settings(
    session: DbSession, organization: Any, actor: Actor, *, import_failures: bool
) -> bool:
    """Switch "import failed payments from Stripe"; return whether it changed."""
    if organization.import_stripe_failures == import_failures:
        return False
    audit.record(
        session,
        actor,
        "organization.stripe_settings_changed",
        target_type="organization",
        target_id=organization.id,
        changes={"import_stripe_failures": [organization.import_stripe_failures, import_failures]},
    )
    organization.import_stripe_failures = import_failures
    return True


def link_stripe_account(session: DbSession, organization: Any, actor: Actor, account_id: str | None) -> bool:
    """Make a Stripe Connect account's events this organization's (None unlinks); return whether it changed.

    Whoever links an account receives its customers' failed payments, so only
    the platform's operator does it (`flask link-stripe-account`), never a
    merchant's admin: the id alone proves nothing about who owns the account.
    """
    account_id = (account_id or "").strip() or None
    if account_id is not None and not STRIPE_ACCOUNT_ID.fullmatch(account_id):
        raise StripeAccountRefused(
            f"{account_id[:60]!r} is not a Stripe account id (they look like acct_1Nv0FGQ9RKHgCVdK)."
        )
    if organization.stripe_account_id == account_id:
        return False
    if account_id is not None:
        taken = session.scalar(
            select(Organization.slug).where(
                Organization.stripe_account_id == account_id, Organization.id != organization.id
            )
        )
        if taken is not None:
            raise StripeAccountRefused(
                f"{account_id} is already linked to the organization {taken!r}; unlink it there first."
            )
    previous = organization.stripe_account_id
    organization.stripe_account_id = account_id
    try:
        with session.begin_nested():
            session.flush()
    except IntegrityError:
        raise StripeAccountRefused(f"{account_id} was just linked to another organization.") from None
    audit.record(
        session,
        actor,
        "organization.stripe_account_linked" if account_id else "organization.stripe_account_unlinked",
        target_type="organization",
        target_id=organization.id,
        changes={"stripe_account_id": [previous, account_id]},
    )
    return True
