"""The failed-transactions dashboard: list, detail, create, edit contact."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, abort, flash, redirect, render_template, request, url_for
from flask_login import current_user

from recovery.audit import Actor
from recovery.extensions import db
from recovery.models import Role, Transaction
from recovery.models.transaction import TransactionStatus
from recovery.payments.views import panel_context
from recovery.recoveries.views import panel_context as recovery_panel_context
from recovery.security import require_role
from recovery.transactions import services
from recovery.transactions.forms import ContactForm, TransactionForm

bp = Blueprint("transactions", __name__)

COMMON_CURRENCIES = ("usd", "eur", "gbp", "jpy", "cad", "aud", "chf", "sek", "bhd", "kwd")


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
    )


@bp.get("/transactions/<int:transaction_id>")
def detail(transaction_id: int) -> Any:
    transaction = org_transaction(transaction_id)
    return render_template(
        "transactions/detail.html",
        transaction=transaction,
        timeline=services.timeline(db.session, transaction),
        **panel_context(transaction),
        **recovery_panel_context(transaction),
    )


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
        except services.InvalidTransaction as error:
            form.apply_errors(error.errors)
        except services.DuplicateRef:
            form.apply_errors({"transaction_ref": "A transaction with this reference already exists."})
        else:
            db.session.commit()
            flash(f"Transaction {transaction.transaction_ref} created.", "success")
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
            db.session.rollback()
            form.apply_errors(error.errors)
        else:
            db.session.commit()
            flash("Contact details saved." if changed else "Nothing changed.", "success")
            return redirect(url_for("transactions.detail", transaction_id=transaction.id))
    status = 422 if form.is_submitted() else 200
    return render_template("transactions/edit.html", form=form, transaction=transaction), status
