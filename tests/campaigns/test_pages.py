"""Settings → Campaigns: list, versions, the form with step rows, archive (issue 18)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from flask.testing import FlaskClient
from sqlalchemy import select

from recovery.campaigns import builtin
from recovery.models import Campaign, CampaignVersion, User
from tests.conftest import csrf_token


@pytest.fixture
def admin(db: Any, signed_in: Callable[..., User]) -> User:
    user = signed_in("admin")
    builtin.install(db.session, user.organization)
    db.session.commit()
    return user


def by_name(db: Any, name: str) -> Campaign | None:
    db.session.expire_all()
    return db.session.scalar(select(Campaign).where(Campaign.name == name))


def steps_form(client: FlaskClient, url: str, **values: Any) -> dict[str, Any]:
    token = csrf_token(client.get(url).get_data(as_text=True))
    return {
        "csrf_token": token,
        "name": "High value",
        "link_lifetime_days": "10",
        "end": "hold_for_review",
        "s0_action": "retry_card",
        "s0_delay": "1",
        "s0_unit": "days",
        "s0_after": "failure",
        "s1_action": "email",
        "s1_delay": "6",
        "s1_unit": "hours",
        "s1_after": "previous",
        "s2_action": "",
        **values,
    }


def test_the_list_shows_each_campaign_its_steps_in_words_and_version(
    client: FlaskClient, admin: User
) -> None:
    page = client.get("/settings/campaigns/").get_data(as_text=True)
    assert "built-in" in page
    assert "Retry the card" in page
    assert "New campaign" in page


def test_an_admin_creates_a_campaign_with_step_rows(client: FlaskClient, db: Any, admin: User) -> None:
    response = client.post("/settings/campaigns/new", data=steps_form(client, "/settings/campaigns/new"))
    assert response.status_code == 302, response.get_data(as_text=True)
    campaign = by_name(db, "High value")
    assert campaign is not None and campaign.current_version == 1
    version = db.session.scalar(select(CampaignVersion).where(CampaignVersion.campaign_id == campaign.id))
    assert version.steps == [
        {"action": "retry_card", "delay_hours": 24, "after": "failure"},
        {"action": "email", "delay_hours": 6, "after": "previous"},
    ]
    assert (version.end, version.link_lifetime_days) == ("hold_for_review", 10)
    page = client.get(f"/settings/campaigns/{campaign.id}").get_data(as_text=True)
    assert "Retry the card 1 day after the failure" in page
    assert "Email the customer 6 hours after the previous step" in page


@pytest.mark.parametrize(
    ("values", "error_id", "words"),
    [
        ({"s1_delay": "30", "s1_unit": "days"}, "s1_delay-error", "after the link expires"),
        ({"s0_delay": "soon"}, "s0_delay-error", "whole number"),
        ({"link_lifetime_days": "99"}, "link_lifetime_days-error", "1 to 60 days"),
        ({"link_lifetime_days": "x"}, "link_lifetime_days-error", "number of days"),
        ({"name": " "}, "name-error", "Give the campaign a name."),
        (
            {"s0_action": "", "s1_action": ""},
            "A campaign has 1 to 10 steps.",
            "A campaign has 1 to 10 steps.",
        ),
    ],
)
def test_bad_input_is_answered_next_to_its_field_and_nothing_is_saved(
    client: FlaskClient, db: Any, admin: User, values: dict[str, str], error_id: str, words: str
) -> None:
    data = steps_form(client, "/settings/campaigns/new", **values)
    response = client.post("/settings/campaigns/new", data=data)
    page = response.get_data(as_text=True)
    assert response.status_code == 422
    assert error_id in page and words in page
    assert by_name(db, "High value") is None


def test_an_edit_is_a_new_version_and_a_stale_form_is_refused(
    client: FlaskClient, db: Any, admin: User
) -> None:
    client.post("/settings/campaigns/new", data=steps_form(client, "/settings/campaigns/new"))
    campaign = by_name(db, "High value")
    assert campaign is not None
    url = f"/settings/campaigns/{campaign.id}/edit"
    page = client.get(url).get_data(as_text=True)
    assert 'value="retry_card" selected' in page
    data = steps_form(client, url, version="1", s1_delay="12")
    assert client.post(url, data=data).status_code == 302
    campaign = by_name(db, "High value")
    assert campaign is not None and campaign.current_version == 2
    stale = client.post(url, data=data)
    assert stale.status_code == 409
    assert "changed by someone else meanwhile" in stale.get_data(as_text=True)
    detail = client.get(f"/settings/campaigns/{campaign.id}").get_data(as_text=True)
    assert "Version 2" in detail and "Version 1" in detail


def test_archive_hides_it_and_a_campaign_a_rule_uses_is_refused(
    client: FlaskClient, db: Any, admin: User
) -> None:
    client.post("/settings/campaigns/new", data=steps_form(client, "/settings/campaigns/new"))
    campaign = by_name(db, "High value")
    assert campaign is not None
    token = csrf_token(client.get("/settings/campaigns/").get_data(as_text=True))
    assert (
        client.post(f"/settings/campaigns/{campaign.id}/archive", data={"csrf_token": token}).status_code
        == 302
    )
    assert "<bdi>High value</bdi>" not in client.get("/settings/campaigns/").get_data(as_text=True)
    assert "<bdi>High value</bdi>" in client.get("/settings/campaigns/?archived=1").get_data(as_text=True)
    soft = db.session.scalar(select(Campaign).where(Campaign.builtin == builtin.SOFT_DECLINE))
    refused = client.post(
        f"/settings/campaigns/{soft.id}/archive", data={"csrf_token": token}, follow_redirects=True
    )
    assert "starts this campaign; change that rule first" in refused.get_data(as_text=True)


@pytest.mark.parametrize("role", ["viewer", "operator"])
def test_staff_below_admin_read_but_change_nothing(
    client: FlaskClient, db: Any, signed_in: Callable[..., User], role: str
) -> None:
    user = signed_in(role)
    builtin.install(db.session, user.organization)
    db.session.commit()
    page = client.get("/settings/campaigns/").get_data(as_text=True)
    assert "New campaign" not in page
    campaign = db.session.scalar(select(Campaign).where(Campaign.organization_id == user.organization_id))
    assert "Edit" not in client.get(f"/settings/campaigns/{campaign.id}").get_data(as_text=True)
    assert client.get("/settings/campaigns/new").status_code == 403
    token = csrf_token(page)
    assert (
        client.post(f"/settings/campaigns/{campaign.id}/archive", data={"csrf_token": token}).status_code
        == 403
    )


def test_another_organizations_campaign_is_not_found(
    client: FlaskClient, db: Any, admin: User, make_org: Callable[..., Any]
) -> None:
    other = make_org()
    builtin.install(db.session, other)
    db.session.commit()
    theirs = db.session.scalar(select(Campaign).where(Campaign.organization_id == other.id))
    assert client.get(f"/settings/campaigns/{theirs.id}").status_code == 404
