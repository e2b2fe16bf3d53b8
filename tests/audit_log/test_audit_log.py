"""`/audit`: who did what and when, for the organization's admins; filters, pages and a CSV export."""

from __future__ import annotations

import csv
import io
from datetime import UTC, datetime
from typing import Any

import pytest
from sqlalchemy import select

from recovery import audit
from recovery.audit_log.sentences import sentence
from recovery.audit_log.services import PAGE_SIZE
from recovery.models import AuditEvent, Organization, User


def record(db: Any, actor: audit.Actor, action: str, at: datetime | None = None, **kwargs: Any) -> AuditEvent:
    event = audit.record(db.session, actor, action, **kwargs)
    if at is not None:
        event.created_at = at
    db.session.commit()
    return event


def rows(response: Any) -> list[list[str]]:
    text = response.get_data(as_text=True)
    assert text.startswith("\ufeff")
    return list(csv.reader(io.StringIO(text[1:])))


def listed(page: str) -> list[str]:
    """The "What" cells of the page, top to bottom."""
    return [part.split("</span>", 1)[0].split(">", 1)[1] for part in page.split('<td data-label="What">')[1:]]


@pytest.mark.parametrize("role", ["viewer", "operator"])
@pytest.mark.parametrize("path", ["/audit", "/audit/export.csv"])
def test_only_admins_and_owners_read_the_audit_log(client, signed_in, role, path):
    signed_in(role)

    assert client.get(path).status_code == 403


def test_events_read_as_sentences_newest_first_with_who_target_and_ip(client, db, signed_in, make_user):
    admin = signed_in("admin")
    client.post("/users", data={"email": "new@example.com", "name": "New", "role": "operator"})
    member = make_user(org=admin.organization, role="viewer", email="vic@example.com")
    client.post(f"/users/{member.id}/role", data={"role": "operator"})

    response = client.get("/audit")

    assert response.status_code == 200
    page = response.get_data(as_text=True)
    assert listed(page) == [
        "changed the role of vic@example.com from viewer to operator",
        "invited new@example.com as operator",
        "signed in",
    ]
    assert "user.role_changed" not in listed(page)[0]
    assert admin.email in page and "127.0.0.1" in page
    assert 'href="/users"' in page
    assert "UTC" in page


def test_another_organizations_events_never_show(
    client, db, signed_in, make_user, make_org, make_transaction
):
    theirs = make_org()
    stranger = make_user(org=theirs, role="owner", email="stranger@example.com")
    transaction = make_transaction(org=theirs, transaction_ref="THEIRS-1")
    record(db, audit.Actor.for_user(stranger), "recovery.started", transaction_id=transaction.id)
    admin = signed_in("admin")

    for query in ("", f"?actor=user:{stranger.id}", "?ref=THEIRS-1", "?kind=recoveries"):
        page = client.get("/audit" + query).get_data(as_text=True)
        assert "stranger@example.com" not in page
        assert "started a recovery" not in listed(page)
        assert f"/transactions/{transaction.id}" not in page
        exported = client.get("/audit/export.csv" + query).get_data(as_text=True)
        assert "stranger@example.com" not in exported and "recovery.started" not in exported
    assert listed(client.get("/audit").get_data(as_text=True))[0] == "exported the audit log to CSV"
    assert admin.organization_id != theirs.id


@pytest.fixture
def story(db: Any, signed_in: Any, make_user: Any, make_transaction: Any, make_token: Any) -> dict[str, Any]:
    """An admin signed in (7 Dec), a colleague who started a recovery (2 July, 23:30 UTC), a token."""
    admin = signed_in("admin")
    org = admin.organization
    org.timezone = "Europe/London"
    db.session.commit()
    colleague = make_user(org=org, role="operator", email="colleague@example.com")
    transaction = make_transaction(org=org, transaction_ref="TXN-AUDIT-1")
    token, _ = make_token(org=org)
    july = datetime(2026, 7, 1, 23, 30, tzinfo=UTC)  # 2 July 00:30 in London (BST)
    record(db, audit.Actor.for_user(colleague), "recovery.started", at=july, transaction_id=transaction.id)
    record(db, audit.Actor.for_token(token), "transaction.created", at=datetime(2026, 6, 1, tzinfo=UTC))
    record(db, audit.Actor.system(org.id), "recovery.cancelled", at=datetime(2026, 5, 1, tzinfo=UTC))
    return {"admin": admin, "colleague": colleague, "token": token, "transaction": transaction}


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("actor=user:{colleague}", ["started a recovery"]),
        ("actor=token", ["added a transaction"]),
        ("actor=system", ["created an API token", "cancelled a recovery"]),  # the CLI made the token
        (
            "",
            [
                "created an API token",
                "signed in",
                "started a recovery",
                "added a transaction",
                "cancelled a recovery",
            ],
        ),
        ("kind=recoveries", ["started a recovery", "cancelled a recovery"]),
        ("kind=sign_ins", ["signed in"]),
        ("kind=users", []),  # "user.signed_in" starts like the users' actions, but is a sign-in
        ("kind=tokens", ["created an API token"]),
        ("from=2026-07-02&to=2026-07-02", ["started a recovery"]),  # London's 2 July
        ("to=2026-07-01", ["added a transaction", "cancelled a recovery"]),
        ("from=2026-06-01&to=2026-06-30", ["added a transaction"]),
        ("ref=TXN-AUDIT-1", ["started a recovery"]),
        ("ref=TXN-NONE", []),
    ],
)
def test_filters(client, db, story, query, expected):
    query = query.format(colleague=story["colleague"].id)

    response = client.get("/audit?" + query)

    assert response.status_code == 200
    assert listed(response.get_data(as_text=True)) == expected


def test_the_transaction_column_links_to_the_transaction(client, story):
    page = client.get("/audit?ref=TXN-AUDIT-1").get_data(as_text=True)

    assert f'href="/transactions/{story["transaction"].id}"' in page
    assert "2 Jul 2026, 00:30 BST" in page


@pytest.mark.parametrize(
    ("query", "message"),
    [
        ("from=2026-07-10&to=2026-07-01", "is after the “to” date"),
        ("from=07/10/2026", "must be a date like 2026-12-07"),
        ("to=2026-02-30", "must be a date like 2026-12-07"),
        ("kind=everything", "Choose what kind of action from the list."),
        ("actor=user:abc", "Choose who did it from the list."),
        ("actor=user:99999999999999999999999", "Choose who did it from the list."),
        ("ref=%3Cscript%3E", "Transaction reference"),
    ],
)
@pytest.mark.parametrize("path", ["/audit", "/audit/export.csv"])
def test_bad_filters_get_a_clear_error(client, db, signed_in, query, message, path):
    admin = signed_in("owner")

    response = client.get(f"{path}?{query}")

    assert response.status_code == 400
    page = response.get_data(as_text=True)
    assert message in page
    assert 'id="filter-errors"' in page
    assert "<script>" not in page
    exports = db.session.scalars(select(AuditEvent).where(AuditEvent.action == "audit.exported")).all()
    assert exports == [], "a refused export is not recorded as one"
    assert admin.organization_id


@pytest.mark.parametrize("cursor", ["abc", "1-2-3", "99999999999999999999-1", "-1", "1-"])
def test_a_broken_page_link_gets_a_clear_error(client, signed_in, cursor):
    signed_in("admin")

    response = client.get(f"/audit?before={cursor}")

    assert response.status_code == 400
    assert "This page link is broken; start again from the first page." in response.get_data(as_text=True)


def test_pages_of_fifty_with_a_link_to_older_events(client, db, signed_in):
    admin = signed_in("admin")
    for n in range(PAGE_SIZE + 4):
        record(db, audit.Actor.for_user(admin), "user.name_changed", old=str(n), new=str(n + 1))

    first = client.get("/audit").get_data(as_text=True)
    older = (
        first.split('<nav class="pager"', 1)[1].split('href="', 1)[1].split('"', 1)[0].replace("&amp;", "&")
    )
    second = client.get(older).get_data(as_text=True)

    assert len(listed(first)) == PAGE_SIZE
    assert listed(first)[0] == "changed their name from “53” to “54”"
    assert listed(second) == [
        "changed their name from “3” to “4”",
        "changed their name from “2” to “3”",
        "changed their name from “1” to “2”",
        "changed their name from “0” to “1”",
        "signed in",
    ]
    assert '<nav class="pager"' not in second


def test_the_csv_export_has_every_matching_event_neutralised_and_is_itself_recorded(client, db, signed_in):
    admin = signed_in("owner")
    record(
        db, audit.Actor.system(admin.organization_id, label='=HYPERLINK("http://evil")'), "recovery.cancelled"
    )
    record(db, audit.Actor.for_user(admin), "user.name_changed", old="", new="+cmd")

    response = client.get("/audit/export.csv")

    assert response.status_code == 200
    assert response.mimetype == "text/csv"
    assert response.headers["Content-Disposition"].startswith('attachment; filename="audit-log-')
    header, *body = rows(response)
    assert header == [
        "When (UTC)",
        "When (local)",
        "Who",
        "What",
        "Action code",
        "Target",
        "Transaction",
        "IP address",
    ]
    # The export is recorded before it is read, so it lists itself first.
    assert [row[4] for row in body] == [
        "audit.exported",
        "user.name_changed",
        "recovery.cancelled",
        "user.signed_in",
    ]
    assert body[2][2] == '\'=HYPERLINK("http://evil")'
    assert body[1][3] == "changed their name from “” to “+cmd”"
    assert body[3][0].endswith("+00:00")
    [export] = db.session.scalars(select(AuditEvent).where(AuditEvent.action == "audit.exported")).all()
    assert (export.actor_user_id, export.details) == (admin.id, {"filters": {}})
    filtered = rows(client.get("/audit/export.csv?kind=sign_ins"))
    assert [row[4] for row in filtered[1:]] == ["user.signed_in"]
    assert len(db.session.scalars(select(AuditEvent).where(AuditEvent.action == "audit.exported")).all()) == 2


@pytest.mark.parametrize(
    ("action", "details", "expected"),
    [
        (
            "user.role_changed",
            {"email": "a@example.com", "old": "viewer", "new": "admin"},
            "changed the role of a@example.com from viewer to admin",
        ),
        ("user.role_changed", {}, "changed a user's role"),
        ("export.transactions", {"rows": 12}, "exported transactions to CSV (12 rows)"),
        ("stripe.refunded", {}, "refunded"),
        ("something.new_here", {}, "something: new here"),
    ],
)
def test_each_action_reads_as_a_sentence(action, details, expected):
    assert sentence(action, details) == expected


def test_staff_actions_of_this_issue_are_recorded(app, client, db, signed_in):
    """Sign-in, sign-out, account and invitation changes land in the log (tokens and settings did already)."""
    admin = signed_in("admin")
    client.post("/account/name", data={"name": "Ada"})
    client.post("/users", data={"email": "invitee@example.com", "role": "viewer"})
    client.post("/logout")

    org: Organization = db.session.get(Organization, admin.organization_id)
    actions = db.session.scalars(
        select(AuditEvent.action).where(AuditEvent.organization_id == org.id).order_by(AuditEvent.id)
    ).all()
    assert actions == ["user.signed_in", "user.name_changed", "user.invited", "user.signed_out"]
    assert db.session.scalar(select(User).where(User.email == "invitee@example.com")) is not None
