"""The failed-transactions dashboard: list, detail, create, edit contact."""

from __future__ import annotations

from datetime import datetime
from functools import lru_cache
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from flask import Blueprint, abort, flash, redirect, render_template, request, url_for
from flask_login import current_user
from markupsafe import Markup, escape
from sqlalchemy import select

from recovery import declines, money
from recovery.audit import Actor
from recovery.boundary import read_only
from recovery.extensions import db
from recovery.models import Campaign, CampaignVersion, Role, Transaction, utcnow
from recovery.models.transaction import TransactionStatus
from recovery.payments.views import panel_context
from recovery.queue import redis_connection
from recovery.recoveries import bulk
from recovery.recoveries.views import panel_context as recovery_panel_context
from recovery.security import require_role
from recovery.transactions import closing, counting, kpis, live, services, timeline
from recovery.transactions.forms import CloseForm, ContactForm, ReopenForm, TransactionForm

bp = Blueprint("transactions", __name__)

COMMON_CURRENCIES = ("usd", "eur", "gbp", "jpy", "cad", "aud", "chf", "sek", "bhd", "kwd")


@bp.app_template_filter("decline_category")
@lru_cache(maxsize=512)
def decline_category_badge(code: str | None) -> Markup:
    """Why the payment failed, as a badge in staff's words, its meaning on hover.

    Cached: fifty rows a page share a few dozen codes.
    """
    name = declines.category(code)
    label, sentence = escape(declines.category_label(name)), escape(declines.CATEGORY_SENTENCES[name])
    return Markup(f'<span class="decline decline-{name}" title="{sentence}">{label}</span>')


@bp.app_template_filter("decline_category_sentence")
def decline_category_sentence(name: str) -> str:
    return declines.CATEGORY_SENTENCES.get(name, "")


def actor() -> Actor:
    return Actor.for_user(current_user, request.remote_addr)


def org_transaction(transaction_id: int) -> Transaction:
    transaction = services.get_for_org(db.session, current_user.organization_id, transaction_id)
    if transaction is None:
        abort(404)
    return transaction


@bp.get("/")
def home() -> Any:
    return redirect(url_for("transactions.index"))


@bp.get("/transactions")
@read_only
def index() -> Any:
    query = services.ListQuery.from_args(request.args)
    page = services.list_transactions(db.session, current_user.organization_id, query)
    template = "transactions/_table.html" if request.headers.get("HX-Request") else "transactions/index.html"
    return render_template(
        template,
        page=page,
        query=query,
        statuses=TransactionStatus.ALL,
        currencies=COMMON_CURRENCIES,
        categories=[(name, declines.category_label(name)) for name in declines.CATEGORIES],
    )


@bp.get("/transactions/matching")
@require_role(Role.OPERATOR)
def matching_count() -> Any:
    """ "Select all 12,345 matching": the exact count, asked for when a whole page is selected (htmx).

    The list counts to 1,000 only; this counts every row, bounded in time.
    """
    query = services.ListQuery.from_args({name: request.args.get(name) for name in services.FILTER_ARGS})
    if query.errors:
        abort(400, " ".join(query.errors.values()))
    found = counting.count_exact(db.session, current_user.organization_id, query, floor=services.COUNT_CAP)
    return render_template(
        "transactions/_select_all.html", query=query, found=found, most=bulk.MAX_TRANSACTIONS
    )


def _detail_context(transaction: Transaction, version: str) -> dict[str, Any]:
    return {
        "transaction": transaction,
        "timeline": timeline.timeline(db.session, transaction),
        "live_version": version,
        "live_final": live.is_final(transaction.status),
        "live_seconds": live.POLL_SECONDS,
        **panel_context(transaction),
        **recovery_panel_context(transaction),
        "close_form": CloseForm(),
        "reopen_form": ReopenForm(),
        "attempt_campaigns": _attempt_campaigns(transaction),
    }


def _attempt_campaigns(transaction: Transaction) -> dict[int, tuple[str, int]]:
    """Each attempt's campaign name and version (attempts that follow a schedule have none)."""
    version_ids = {a.campaign_version_id for a in transaction.attempts if a.campaign_version_id}
    if not version_ids:
        return {}
    rows = db.session.execute(
        select(CampaignVersion.id, Campaign.name, CampaignVersion.version)
        .join(Campaign, Campaign.id == CampaignVersion.campaign_id)
        .where(CampaignVersion.id.in_(version_ids))
    ).all()
    named = {row[0]: (row[1], row[2]) for row in rows}
    return {
        a.id: named[a.campaign_version_id] for a in transaction.attempts if a.campaign_version_id in named
    }


@bp.get("/transactions/kpis")
def kpi_tiles() -> Any:
    """The KPI tiles, loaded by the list page after it has rendered (htmx), so they never slow it."""
    organization = current_user.organization
    figures = kpis.cached(db.session, redis_connection(), organization.id, organization.timezone, utcnow())
    return render_template(
        "transactions/_kpis.html",
        kpis=figures,
        rate_definition=kpis.RATE_DEFINITION,
        rate_window_days=kpis.RATE_WINDOW_DAYS,
        month=format_month(figures.month_start, organization.timezone),
    )


def format_month(start: datetime, timezone: str) -> str:
    """ "November 2026" for the month starting at `start` (UTC) in the organization's zone."""
    try:
        zone = ZoneInfo(timezone)
    except (ZoneInfoNotFoundError, ValueError):
        zone = ZoneInfo("UTC")
    return start.astimezone(zone).strftime("%B %Y")


@bp.get("/transactions/<int:transaction_id>")
def detail(transaction_id: int) -> Any:
    transaction = org_transaction(transaction_id)
    version = live.transaction_fingerprint(db.session, transaction.id)
    return render_template("transactions/detail.html", **_detail_context(transaction, version))


@bp.get("/transactions/<int:transaction_id>/live")
def live_status(transaction_id: int) -> Any:
    """The changing part of the transaction page, for its poll; 204 while nothing changed."""
    transaction = org_transaction(transaction_id)
    version = live.transaction_fingerprint(db.session, transaction.id)
    if request.args.get("v") == version:
        return "", 204
    return render_template("transactions/_live.html", **_detail_context(transaction, version))


@bp.get("/transactions/by-ref/<ref>")
def by_ref(ref: str) -> Any:
    transaction = services.get_by_ref(db.session, current_user.organization_id, ref)
    if transaction is None:
        abort(404)
    return redirect(url_for("transactions.detail", transaction_id=transaction.id))


@bp.route("/transactions/new", methods=["GET", "POST"])
@require_role(Role.OPERATOR)
def create() -> Any:
    form = TransactionForm()
    if form.validate_on_submit():
        raw = {name: field.data for name, field in form._fields.items()}
        try:
            transaction = services.create_transaction(db.session, actor(), raw, major_units=True)
        except services.InvalidTransaction as error:  # a DuplicateRef too: shown next to its field
            form.apply_errors(error.errors)
        else:
            # The amount as stored: the form takes major units, CSV and API whole numbers as minor ones.
            amount = money.format_amount(transaction.amount, transaction.currency)
            flash(f"Transaction {transaction.transaction_ref} created for {amount}.", "success")
            return redirect(url_for("transactions.detail", transaction_id=transaction.id))
    status = 422 if form.is_submitted() else 200
    return render_template("transactions/new.html", form=form, currencies=COMMON_CURRENCIES), status


@bp.route("/transactions/<int:transaction_id>/edit", methods=["GET", "POST"])
@require_role(Role.OPERATOR)
def edit(transaction_id: int) -> Any:
    transaction = org_transaction(transaction_id)
    form = ContactForm(obj=transaction)
    if form.validate_on_submit():
        raw = {name: field.data for name, field in form._fields.items()}
        try:
            changed = services.update_contact(db.session, actor(), transaction, raw)
        except services.InvalidTransaction as error:
            # Shown next to each field; the page answers, so nothing half-changed may stay to commit.
            db.session.rollback()
            form.apply_errors(error.errors)
        else:
            flash("Contact details saved." if changed else "Nothing changed.", "success")
            return redirect(url_for("transactions.detail", transaction_id=transaction.id))
    status = 422 if form.is_submitted() else 200
    return render_template("transactions/edit.html", form=form, transaction=transaction), status


def _to_state(transaction: Transaction) -> Any:
    return redirect(url_for("transactions.detail", transaction_id=transaction.id, _anchor="recovery"))


@bp.post("/transactions/<int:transaction_id>/close")
@require_role(Role.OPERATOR)
def close(transaction_id: int) -> Any:
    """Close the transaction: its recovery is cancelled and nothing more is offered, until a reopen."""
    transaction = org_transaction(transaction_id)
    form = CloseForm()
    if not form.validate():
        flash("This form has expired; reload the page and try again.", "error")
        return _to_state(transaction)
    closed = closing.close_transaction(
        db.session, transaction, actor(), now=utcnow(), reason=form.reason.data
    )
    flash(
        f"Transaction {transaction.transaction_ref} closed: nothing will be sent"
        + (", and its running recovery was cancelled." if closed.cancelled else ".")
        + " Reopen it to start again.",
        "success",
    )
    return _to_state(transaction)


@bp.post("/transactions/<int:transaction_id>/reopen")
@require_role(Role.OPERATOR)
def reopen(transaction_id: int) -> Any:
    transaction = org_transaction(transaction_id)
    if not ReopenForm().validate():
        flash("This form has expired; reload the page and try again.", "error")
        return _to_state(transaction)
    closing.reopen_transaction(db.session, transaction, actor(), now=utcnow())
    flash(f"Transaction {transaction.transaction_ref} reopened: you can start a recovery.", "success")
    return _to_state(transaction)
