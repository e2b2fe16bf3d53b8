"""The rule form: a name, an action and rows of conditions, read into what rules.services takes.

A condition row is a handful of plain inputs named `c<row>_<part>` (the type,
then only the parts that type uses), so the page works without script; a small
script shows a row's own inputs only. Amounts are typed in the currency's major
units ("50.00") as everywhere else on the dashboard and stored in minor units.
Every message lands next to its input: the services name a condition's part as
`conditions[<index>].<part>`, and the form knows which row each index came from.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from flask_wtf import FlaskForm
from wtforms import BooleanField, HiddenField, SelectField, StringField
from wtforms.fields.choices import SelectChoice
from wtforms.validators import Optional

from recovery import declines, money
from recovery.models import RuleAction
from recovery.rules import conditions as cond

MAX_ROWS = cond.MAX_CONDITIONS
CONDITION_LABELS = {
    "amount": "Amount between",
    "currency_in": "Currency is one of",
    "country_in": "Customer's country is one of",
    "country_not_in": "Customer's country is none of",
    "decline_category_in": "Why it failed is one of",
    "decline_code_in": "Decline code is one of",
    "source_in": "The failure came from",
    "metadata_equals": "Metadata key equals value",
    "has_email": "Has an email address",
    "has_phone": "Has a phone number",
    "failed_within_days": "Failed within the last N days",
}
# The inputs each condition type uses (besides its type).
PARTS = {
    "amount": ("currency", "min", "max"),
    "currency_in": ("values",),
    "country_in": ("values",),
    "country_not_in": ("values",),
    "decline_category_in": ("choices",),
    "decline_code_in": ("values",),
    "source_in": ("choices",),
    "metadata_equals": ("key", "value"),
    "has_email": ("present",),
    "has_phone": ("present",),
    "failed_within_days": ("days",),
}
ACTION_LABELS = {
    RuleAction.START_CAMPAIGN: "Start a campaign",
    RuleAction.DO_NOT_RECOVER: "Do not recover",
    RuleAction.HOLD_FOR_REVIEW: "Hold for review",
}
_SERVICE_FIELD = re.compile(r"conditions\[(\d+)\](?:\.(\w+))?")


@dataclass
class ConditionRow:
    """One row of the form as typed, with its messages; `kind` "" is an empty row (ignored)."""

    kind: str = ""
    values: str = ""
    choices: list[str] = field(default_factory=list)
    currency: str = ""
    min: str = ""
    max: str = ""
    key: str = ""
    value: str = ""
    days: str = ""
    present: str = "yes"
    errors: dict[str, str] = field(default_factory=dict)

    @classmethod
    def of(cls, stored: dict[str, Any]) -> ConditionRow:
        """A saved condition shown for editing."""
        kind = stored.get("type", "")
        row = cls(kind=kind)
        if kind == "amount":
            row.currency = stored["currency"].upper()
            row.min = _major(stored.get("min"), stored["currency"])
            row.max = _major(stored.get("max"), stored["currency"])
        elif kind in ("decline_category_in", "source_in"):
            row.choices = list(stored.get("values", []))
        elif kind in PARTS and "values" in PARTS[kind]:
            shown = stored.get("values", [])
            row.values = ", ".join(v.upper() if kind == "currency_in" else v for v in shown)
        elif kind == "metadata_equals":
            row.key, row.value = stored.get("key", ""), stored.get("value", "")
        elif kind in ("has_email", "has_phone"):
            row.present = "yes" if stored.get("value") else "no"
        elif kind == "failed_within_days":
            row.days = str(stored.get("days", ""))
        return row

    def error(self, part: str) -> str | None:
        return self.errors.get(part)

    def to_raw(self) -> dict[str, Any] | None:
        """The condition as the services read it; None when a part cannot even be read (error set)."""
        kind = self.kind
        if kind == "amount":
            return self._amount()
        if kind in ("decline_category_in", "source_in"):
            return {"type": kind, "values": list(self.choices)}
        if kind in PARTS and "values" in PARTS[kind]:
            values = [v.strip() for v in re.split(r"[,\s]+", self.values) if v.strip()]
            return {"type": kind, "values": values}
        if kind == "metadata_equals":
            return {"type": kind, "key": self.key.strip(), "value": self.value}
        if kind in ("has_email", "has_phone"):
            return {"type": kind, "value": self.present != "no"}
        if kind == "failed_within_days":
            days = self.days.strip()
            if not days.isdigit():
                self.errors["days"] = "Give a whole number of days, e.g. 30."
                return None
            return {"type": kind, "days": int(days)}
        self.errors["type"] = "Choose what this condition looks at."
        return None

    def _amount(self) -> dict[str, Any] | None:
        try:
            currency = money.normalize_currency(self.currency)
        except money.AmountError as error:
            self.errors["currency"] = str(error)
            return None
        raw: dict[str, Any] = {"type": "amount", "currency": currency}
        for part in ("min", "max"):
            text = getattr(self, part).strip()
            try:
                raw[part] = money.parse_amount(text, currency, major=True) if text else None
            except money.AmountError as error:
                self.errors[part] = str(error)
        return None if self.errors else raw


def _major(amount: int | None, currency: str) -> str:
    return "" if amount is None else money.format_major(amount, currency)


class RuleForm(FlaskForm):
    """The rule's own fields; the condition rows are read by `read_rows`."""

    name = StringField("Name", render_kw={"maxlength": 200, "required": True})
    enabled = BooleanField("Enabled", default=True)
    action = SelectField(
        "Action",
        choices=[SelectChoice(k, v) for k, v in ACTION_LABELS.items()],
        default=RuleAction.START_CAMPAIGN,
    )
    campaign_id = SelectField("Campaign", [Optional()], choices=[], validate_choice=False)
    reason = StringField(
        "Reason shown on the transaction",
        [Optional()],
        description="For “Do not recover” and “Hold for review”, e.g. “Large amounts: call the customer”.",
        render_kw={"maxlength": 500},
    )
    version = HiddenField()


def read_rows(form: Any) -> list[ConditionRow]:
    """The condition rows as posted (`form` is request.form), empty rows kept for redisplay."""
    rows = []
    for index in range(MAX_ROWS):
        prefix = f"c{index}_"
        if prefix + "type" not in form:
            continue
        row = ConditionRow(
            kind=form.get(prefix + "type", "").strip(),
            values=form.get(prefix + "values", ""),
            choices=form.getlist(prefix + "choices"),
            currency=form.get(prefix + "currency", ""),
            min=form.get(prefix + "min", ""),
            max=form.get(prefix + "max", ""),
            key=form.get(prefix + "key", ""),
            value=form.get(prefix + "value", ""),
            days=form.get(prefix + "days", ""),
            present=form.get(prefix + "present", "yes"),
        )
        rows.append(row)
    return rows


def rows_to_conditions(rows: list[ConditionRow]) -> tuple[list[dict[str, Any]], list[int]]:
    """The filled rows as raw conditions, and for each the row it came from (for messages)."""
    raw, origin = [], []
    for index, row in enumerate(rows):
        if not row.kind:
            continue
        condition = row.to_raw()
        if condition is not None:
            raw.append(condition)
            origin.append(index)
    return raw, origin


def place_error(
    form: RuleForm, rows: list[ConditionRow], origin: list[int], name: str | None, message: str
) -> None:
    """Put a service's message next to the input it names (a rule field or a condition row's part)."""
    matched = _SERVICE_FIELD.fullmatch(name or "")
    if matched and int(matched.group(1)) < len(origin):
        row = rows[origin[int(matched.group(1))]]
        part = matched.group(2) or "type"
        row.errors[_row_part(row.kind, part)] = message
        return
    target = (
        getattr(form, name or "", None)
        if name in ("name", "enabled", "action", "campaign_id", "reason")
        else None
    )
    if target is None:
        target = form.name if name != "version" else form.version
    target.errors = [*target.errors, message]


def _row_part(kind: str, part: str) -> str:
    """The input showing a service's part: list conditions of fixed choices show theirs as checkboxes."""
    if part == "values" and "choices" in PARTS.get(kind, ()):
        return "choices"
    if part == "value" and kind in ("has_email", "has_phone"):
        return "present"
    return part if part in ("type", *PARTS.get(kind, ())) else "type"


def category_choices() -> list[tuple[str, str]]:
    return [(name, declines.category_label(name)) for name in declines.CATEGORIES]


def source_choices() -> list[tuple[str, str]]:
    return [
        (name, cond.SOURCE_LABELS.get(name, name).removeprefix("a ").removeprefix("the ").capitalize())
        for name in cond.SOURCES
    ]
