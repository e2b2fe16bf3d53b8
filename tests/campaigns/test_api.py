"""/v1/campaigns: list, create, read, edit with a version, archive; bad input and other tenants refused."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from recovery.campaigns import builtin
from recovery.models import AuditEvent, Organization, Role

STEPS = [{"action": "email", "delay_hours": 0, "after": "previous"}]
BODY = {"name": "Mine", "steps": STEPS, "end": "exhausted", "link_lifetime_days": 5}


@pytest.fixture
def admin(org: Organization, token_for: Callable[..., dict[str, str]]) -> dict[str, str]:
    return token_for(org, Role.ADMIN)


def create(client: Any, headers: dict[str, str], **changes: Any) -> dict[str, Any]:
    response = client.post("/v1/campaigns", json={**BODY, **changes}, headers=headers)
    assert response.status_code == 201, response.json
    return dict(response.json)


def test_create_read_list_edit_archive(client, db, org, admin, token_for):
    made = create(client, admin)
    assert {k: made[k] for k in ("name", "builtin", "archived", "version", "steps", "end")} == {
        "name": "Mine",
        "builtin": None,
        "archived": False,
        "version": 1,
        "steps": STEPS,
        "end": "exhausted",
    }
    assert made["link_lifetime_days"] == 5 and made["created_at"] and made["updated_at"]
    url = f"/v1/campaigns/{made['id']}"

    viewer = token_for(org, Role.VIEWER)
    got = client.get(url, headers=viewer)
    assert got.status_code == 200 and got.headers["ETag"] == '"1"'
    assert [v["version"] for v in got.json["versions"]] == [1]
    assert [c["id"] for c in client.get("/v1/campaigns", headers=viewer).json["data"]] == [made["id"]]

    edited = client.patch(url, json={"link_lifetime_days": 9}, headers={**admin, "If-Match": '"1"'})
    assert edited.status_code == 200, edited.json
    assert (edited.json["version"], edited.json["link_lifetime_days"], edited.json["steps"]) == (2, 9, STEPS)
    by_body = client.patch(url, json={"version": 2, "name": "Ours"}, headers=admin)
    assert by_body.status_code == 200 and by_body.json["version"] == 3 and by_body.headers["ETag"] == '"3"'
    assert [v["link_lifetime_days"] for v in client.get(url, headers=viewer).json["versions"]] == [5, 9, 9]

    archived = client.post(f"{url}/archive", headers=admin)
    assert archived.status_code == 200 and archived.json["archived"] is True
    assert client.get("/v1/campaigns", headers=viewer).json["data"] == []
    assert [c["id"] for c in client.get("/v1/campaigns?archived=true", headers=viewer).json["data"]] == [
        made["id"]
    ]
    actions = [e.action for e in db.session.query(AuditEvent).order_by(AuditEvent.id)]
    assert [a for a in actions if a.startswith("campaign.")] == [
        "campaign.created",
        "campaign.changed",
        "campaign.changed",
        "campaign.archived",
    ]


def test_an_edit_from_an_old_version_is_409_and_one_naming_none_428(client, org, admin):
    url = f"/v1/campaigns/{create(client, admin)['id']}"
    assert client.patch(url, json={"name": "A"}, headers={**admin, "If-Match": "1"}).status_code == 200
    stale = client.patch(url, json={"name": "B"}, headers={**admin, "If-Match": 'W/"1"'})
    assert stale.status_code == 409 and stale.json["error"]["type"] == "conflict"
    assert "someone else" in stale.json["error"]["message"]
    missing = client.patch(url, json={"name": "B"}, headers=admin)
    assert missing.status_code == 428 and missing.json["error"]["fields"] == {"version": "Required."}
    wrong = client.patch(url, json={"name": "B", "version": "two"}, headers=admin)
    assert wrong.status_code == 422 and "version" in wrong.json["error"]["fields"]


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"name": ""}, "name"),
        ({"name": "x" * 201}, "name"),
        ({"steps": []}, "steps"),
        ({"steps": "email"}, "steps"),
        ({"steps": [{"action": "fax", "delay_hours": 0}]}, "steps[0].action"),
        ({"steps": [*STEPS, {"action": "sms", "delay_hours": -2}]}, "steps[1].delay_hours"),
        ({"steps": [{"action": "sms", "delay_hours": 1, "after": "lunch"}]}, "steps[0].after"),
        ({"steps": [{"action": "sms", "delay_hours": 1, "when": "now"}]}, "steps[0].when"),
        ({"steps": [{"action": "sms", "delay_hours": 120, "after": "failure"}]}, "steps[0].delay_hours"),
        ({"end": "never"}, "end"),
        ({"link_lifetime_days": 0}, "link_lifetime_days"),
        ({"link_lifetime_days": 61}, "link_lifetime_days"),
        ({"link_lifetime_days": "5"}, "link_lifetime_days"),
        ({"colour": "red"}, "colour"),
    ],
)
def test_bad_input_is_422_naming_the_field(client, db, org, admin, changes, field):
    response = client.post("/v1/campaigns", json={**BODY, **changes}, headers=admin)
    assert response.status_code == 422, response.json
    assert field in response.json["error"]["fields"]
    assert db.session.query(AuditEvent).filter(AuditEvent.action.like("campaign.%")).count() == 0
    made = create(client, admin)
    edit = client.patch(f"/v1/campaigns/{made['id']}", json={**changes, "version": 1}, headers=admin)
    assert edit.status_code == 422 and field in edit.json["error"]["fields"]


def test_bad_query_and_bodies(client, org, admin):
    assert client.get("/v1/campaigns?archived=maybe", headers=admin).status_code == 422
    assert client.get("/v1/campaigns?colour=red", headers=admin).status_code == 422
    assert client.post("/v1/campaigns", data="[]", headers=admin).status_code == 415
    response = client.post("/v1/campaigns", json=["name"], headers=admin)
    assert response.status_code == 400


def test_another_organizations_campaign_is_404(client, org, make_org, admin, token_for):
    other = make_org()
    theirs = create(client, token_for(other, Role.ADMIN))
    url = f"/v1/campaigns/{theirs['id']}"
    assert client.get(url, headers=admin).status_code == 404
    assert client.patch(url, json={"name": "Mine now", "version": 1}, headers=admin).status_code == 404
    assert client.post(f"{url}/archive", headers=admin).status_code == 404
    assert client.get("/v1/campaigns", headers=admin).json["data"] == []


def test_writes_need_an_admin_token(client, org, token_for):
    operator = token_for(org, Role.OPERATOR)
    assert client.post("/v1/campaigns", json=BODY, headers=operator).status_code == 403
    assert client.get("/v1/campaigns", headers=operator).status_code == 200


def test_the_default_and_a_campaign_in_use_cannot_be_archived(client, db, org, admin):
    builtin.install(db.session, org)
    db.session.commit()
    listed = {c["builtin"]: c for c in client.get("/v1/campaigns", headers=admin).json["data"]}
    assert set(listed) == {"default", "soft_decline", "customer_action", "do_not_contact"}
    for key in ("default", "soft_decline"):
        response = client.post(f"/v1/campaigns/{listed[key]['id']}/archive", headers=admin)
        assert response.status_code == 409, response.json
