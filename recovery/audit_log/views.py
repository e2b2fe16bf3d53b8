"""`/audit` and `/audit/export.csv`: the organization's audit log, for its admins and owners."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from flask import Blueprint, Response, render_template, request, stream_with_context, url_for
from flask_login import current_user

from recovery.audit import Actor, record
from recovery.audit_log import services
from recovery.audit_log.sentences import KINDS, sentence
from recovery.exports.writer import csv_chunks
from recovery.extensions import db
from recovery.models import AuditEvent, Role, utcnow
from recovery.security import require_role
from recovery.templating import format_datetime

bp = Blueprint("audit_log", __name__, url_prefix="/audit")

FILTER_ARGS = ("actor", "kind", "from", "to", "ref")
CSV_HEADER = [
    "When (UTC)",
    "When (local)",
    "Who",
    "What",
    "Action code",
    "Target",
    "Transaction",
    "IP address",
]


def target_link(event: AuditEvent, ref: str | None) -> tuple[str, str | None]:
    """The event's target in words, and a page of ours for it where there is one."""
    if event.transaction_id and ref:
        return ref, url_for("transactions.detail", transaction_id=event.transaction_id)
    details = event.details or {}
    kind, target_id = event.target_type, event.target_id
    if kind == "user":
        own = event.actor_label if str(event.actor_user_id) == target_id else None
        return str(details.get("email") or own or f"user {target_id}"), url_for("users.index")
    if kind == "api_token":
        return f"API token {target_id}", url_for("tokens.index")
    if kind == "csv_import" and target_id and target_id.isdigit():
        return f"CSV import {target_id}", url_for("imports.detail", import_id=int(target_id))
    if kind == "webhook_event" and target_id and target_id.isdigit():
        return f"Stripe event {target_id}", url_for("webhooks.detail", event_id=int(target_id))
    if kind == "organization":
        return "Organization settings", None
    if kind:
        return f"{kind.replace('_', ' ')} {target_id or ''}".strip(), None
    return "", None


@bp.errorhandler(services.FilterRefused)
def refused(error: services.FilterRefused) -> Any:
    """A filter the log cannot use: the page, empty, with the filter marked (not a flash and a redirect)."""
    return render_template(
        "audit_log/index.html",
        page=services.Page([], None),
        filters=services.AuditFilters(),
        error=error,
        args=request.args,
        **_choices(),
    ), 400


def _choices() -> dict[str, Any]:
    return {
        "actor_choices": services.actors(db.session, current_user.organization_id),
        "kind_choices": list(KINDS.items()),
        "tz": current_user.organization.timezone or "UTC",
        "sentence": sentence,
        "target_link": target_link,
        # The export takes the page's filters, not its place in the list.
        "filter_args": {k: v for k, v in request.args.items() if k in FILTER_ARGS and v},
    }


@bp.get("")
@require_role(Role.ADMIN)
def index() -> Any:
    filters = services.parse_filters(request.args)
    tz = current_user.organization.timezone or "UTC"
    page = services.page(
        db.session, current_user.organization_id, filters, tz, request.args.get("before", "")
    )
    return render_template(
        "audit_log/index.html", page=page, filters=filters, error=None, args=request.args, **_choices()
    )


@bp.get("/export.csv")
@require_role(Role.ADMIN)
def export() -> Any:
    """Every matching event as CSV, streamed; the export itself is recorded first."""
    filters = services.parse_filters(request.args)
    organization_id = current_user.organization_id
    tz = current_user.organization.timezone or "UTC"
    record(
        db.session,
        Actor.for_user(current_user, request.remote_addr),
        "audit.exported",
        target_type="organization",
        target_id=organization_id,
        filters={k: v for k, v in request.args.items() if k in FILTER_ARGS and v},
    )
    # The request commits the record as the view returns, before the first row streams.

    def rows() -> Iterator[list[object]]:
        for event, ref in services.stream(db.session, organization_id, filters, tz):
            target, _ = target_link(event, ref)
            yield [
                event.created_at.isoformat(timespec="seconds"),
                format_datetime(event.created_at, tz),
                event.actor_label,
                sentence(event.action, event.details),
                event.action,
                target,
                ref or "",
                event.ip_address or "",
            ]

    filename = f"audit-log-{utcnow():%Y-%m-%d}.csv"
    return Response(
        stream_with_context(csv_chunks(CSV_HEADER, rows())),
        mimetype="text/csv",
        headers={"Content-Disposition": f'attachment; filename="{filename}"'},
    )
