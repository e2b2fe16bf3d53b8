"""Upload a CSV of failed transactions and follow its import."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, Response, abort, flash, redirect, render_template, request, url_for
from flask_login import current_user
from sqlalchemy import select
from werkzeug.exceptions import RequestEntityTooLarge

from recovery import money
from recovery.audit import Actor
from recovery.extensions import db
from recovery.imports import mapping as mappings
from recovery.imports import services, template
from recovery.imports.forms import UploadForm, mapping_form
from recovery.imports.starting import (
    Started,
    import_settings,
    restart_import,
    start_import,
    start_recoveries,
)
from recovery.models import CsvImport, ImportStatus, Role
from recovery.security import require_role

bp = Blueprint("imports", __name__)

# What the page says after starting an import, by how it went; nothing when it just went.
STARTED_MESSAGES = {
    Started.FAILED: ("The import stopped; rows saved so far are kept. See below.", "error"),
    Started.QUEUE_DOWN: (
        "The file is saved but the import could not start: the job queue is unreachable. "
        "Press “Start again” in a moment.",
        "error",
    ),
}


def org_import(import_id: int) -> CsvImport:
    csv_import = db.session.scalar(
        select(CsvImport).where(
            CsvImport.id == import_id, CsvImport.organization_id == current_user.organization_id
        )
    )
    if csv_import is None:
        abort(404)
    return csv_import


def render_index(form: UploadForm, status: int = 200) -> Any:
    recent = db.session.scalars(
        select(CsvImport)
        .where(CsvImport.organization_id == current_user.organization_id)
        .order_by(CsvImport.created_at.desc())
        .limit(10)
    ).all()
    return render_template(
        "imports/index.html",
        form=form,
        recent=recent,
        targets=mappings.TARGETS,
        amount_rule=money.AMOUNT_RULE,
        amount_minor_rule=money.AMOUNT_MINOR_RULE,
        max_size=services.format_size(import_settings().max_bytes),
    ), status


@bp.route("/imports", methods=["GET", "POST"])
def index() -> Any:
    if request.method == "POST" and not current_user.has_role(Role.OPERATOR):
        abort(403)
    form = UploadForm()
    if request.method == "POST" and form.validate_on_submit():
        return upload(form)
    return render_index(form, 422 if request.method == "POST" else 200)


@bp.errorhandler(RequestEntityTooLarge)
def too_large(error: RequestEntityTooLarge) -> Any:
    """A body past MAX_CONTENT_LENGTH: say the limit next to the field, as for a smaller overshoot."""
    form = UploadForm(formdata=None)  # reading the request again would raise again
    limit = services.format_size(import_settings().max_bytes)
    form.file.errors = [
        f"The file is larger than the limit of {limit}. Split it into smaller files and upload each."
    ]
    return render_index(form, 413)


def upload(form: UploadForm) -> Any:
    file = form.file.data
    max_bytes = import_settings().max_bytes
    data = file.read(max_bytes + 1)
    actor = Actor.for_user(current_user, request.remote_addr)
    try:
        csv_import = services.create_import(db.session, actor, file.filename, data, max_bytes)
    except services.ImportRejected as error:
        # Answered next to the file field; nothing of the refused upload is kept.
        db.session.rollback()
        form.file.errors = [str(error)]
        return render_index(form, 422)
    return redirect(url_for("imports.mapping", import_id=csv_import.id))


@bp.get("/imports/template.csv")
def template_csv() -> Any:
    """Our template: every column we read, one example row per currency the demo uses."""
    return Response(
        template.template_csv(),
        mimetype="text/csv",
        headers={"Content-Disposition": 'attachment; filename="failed-payments-template.csv"'},
    )


def render_mapping(csv_import: CsvImport, form: Any, remembered: bool, status: int = 200) -> Any:
    return render_template(
        "imports/mapping.html",
        csv_import=csv_import,
        form=form,
        preview=services.preview(csv_import),
        targets=mappings.TARGETS,
        remembered=remembered,
        amount_rule=money.AMOUNT_RULE,
        amount_minor_rule=money.AMOUNT_MINOR_RULE,
    ), status


@bp.get("/imports/<int:import_id>/mapping")
def mapping(import_id: int) -> Any:
    """Show the file's header and first rows, and which column we think holds which field."""
    csv_import = org_import(import_id)
    if csv_import.status != ImportStatus.MAPPING:
        return redirect(url_for("imports.detail", import_id=import_id))
    header = services.header_of(csv_import)
    initial, remembered = mappings.initial(db.session, csv_import.organization_id, header)
    return render_mapping(csv_import, mapping_form(header, initial, submitted=False), remembered)


@bp.post("/imports/<int:import_id>/mapping")
@require_role(Role.OPERATOR)
def confirm(import_id: int) -> Any:
    """Import with the chosen mapping; a choice that cannot be used is answered on the page."""
    csv_import = org_import(import_id)
    if csv_import.status != ImportStatus.MAPPING:
        return redirect(url_for("imports.detail", import_id=import_id))
    header = services.header_of(csv_import)
    initial, remembered = mappings.initial(db.session, csv_import.organization_id, header)
    form = mapping_form(header, initial, submitted=True)
    if not form.validate_on_submit():  # only the CSRF token can fail here
        return render_mapping(csv_import, form, remembered, 400)
    actor = Actor.for_user(current_user, request.remote_addr)
    try:
        services.confirm_mapping(db.session, actor, csv_import, form.chosen())
    except mappings.MappingRefused as error:
        # Answered next to each choice; the upload stays as it was, to be mapped again.
        db.session.rollback()
        form.apply_errors(error.errors)
        return render_mapping(csv_import, form, remembered, 422)
    started = start_import(db.session, csv_import, import_settings())
    if started in STARTED_MESSAGES:
        flash(*STARTED_MESSAGES[started])
    return redirect(url_for("imports.detail", import_id=import_id))


@bp.get("/imports/<int:import_id>")
def detail(import_id: int) -> Any:
    csv_import = org_import(import_id)
    if csv_import.status == ImportStatus.MAPPING and not request.headers.get("HX-Request"):
        return redirect(url_for("imports.mapping", import_id=import_id))
    template = "imports/_progress.html" if request.headers.get("HX-Request") else "imports/detail.html"
    return render_template(template, csv_import=csv_import, finished=csv_import.status == ImportStatus.DONE)


@bp.post("/imports/<int:import_id>/retry")
@require_role(Role.OPERATOR)
def retry(import_id: int) -> Any:
    csv_import = org_import(import_id)
    started = restart_import(db.session, Actor.for_user(current_user, request.remote_addr), csv_import)
    if started == Started.QUEUED:
        flash("Import started again; it continues after the last saved chunk.", "info")
    elif started == Started.QUEUE_DOWN:
        flash("The job queue is unreachable; try again in a moment.", "error")
    return redirect(url_for("imports.detail", import_id=import_id))


@bp.post("/imports/<int:import_id>/start-recoveries")
@require_role(Role.OPERATOR)
def recover(import_id: int) -> Any:
    """Start recoveries for the import's failures; the organization's rules choose each one's campaign."""
    csv_import = org_import(import_id)
    starts = start_recoveries(db.session, Actor.for_user(current_user, request.remote_addr), csv_import)
    count = sum(start.total for start in starts)
    flash(
        f"Starting recoveries for {count:,} imported transaction{'s' if count != 1 else ''}: "
        "the recovery rules choose each one's campaign.",
        "info",
    )
    return redirect(url_for("recoveries.bulk_progress", bulk_id=starts[0].id))
