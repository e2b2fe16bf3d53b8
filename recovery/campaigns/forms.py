"""The campaign form: a name, steps as rows (action, delay in hours or days, from what), an end, a lifetime.

A step row is plain inputs named `s<row>_<part>`; an empty action drops the
row. Delays are typed in hours or days and stored in hours. The services name
a step's part as `steps[<index>].<part>`; the form knows which row each index
came from, so every message shows next to its input.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from flask_wtf import FlaskForm
from wtforms import HiddenField, SelectField, StringField
from wtforms.fields.choices import SelectChoice

from recovery.campaigns.steps import AFTER_FAILURE, AFTER_PREVIOUS, MAX_STEPS
from recovery.models import CampaignEnd, StepAction

ACTION_LABELS = {
    StepAction.EMAIL: "Email the customer",
    StepAction.SMS: "Text the customer",
    StepAction.EMAIL_AND_SMS: "Email and text the customer",
    StepAction.RETRY_CARD: "Retry the card",
    StepAction.NOTIFY_STAFF: "Alert your staff",
}
AFTER_LABELS = {AFTER_PREVIOUS: "after the previous step", AFTER_FAILURE: "after the failure"}
END_LABELS = {
    CampaignEnd.EXHAUSTED: "Stop when the link expires",
    CampaignEnd.HOLD_FOR_REVIEW: "Hold for review when the steps are done",
}
UNITS = ("hours", "days")
_SERVICE_FIELD = re.compile(r"steps\[(\d+)\](?:\.(\w+))?")


@dataclass
class StepRow:
    """One step as typed; `action` "" is an empty row (ignored)."""

    action: str = ""
    delay: str = ""
    unit: str = "days"
    after: str = AFTER_PREVIOUS
    errors: dict[str, str] = field(default_factory=dict)

    @classmethod
    def of(cls, step: dict[str, Any]) -> StepRow:
        hours = int(step.get("delay_hours", 0))
        if hours and hours % 24 == 0:
            return cls(step["action"], str(hours // 24), "days", step.get("after", AFTER_PREVIOUS))
        return cls(step["action"], str(hours), "hours", step.get("after", AFTER_PREVIOUS))

    def to_raw(self) -> dict[str, Any] | None:
        text = self.delay.strip() or "0"
        if not text.isdigit() or len(text) > 6:
            self.errors["delay"] = "Give the delay as a whole number, e.g. 0, 12 or 3."
            return None
        hours = int(text) * (24 if self.unit == "days" else 1)
        return {"action": self.action, "delay_hours": hours, "after": self.after}


def describe_step(step: dict[str, Any]) -> str:
    """'Retry the card 2 days after the previous step'."""
    hours = int(step.get("delay_hours", 0))
    label = ACTION_LABELS.get(step.get("action", ""), step.get("action", ""))
    if hours == 0:
        when = "at once" if step.get("after") == AFTER_PREVIOUS else "at the failure"
        return f"{label} {when}"
    amount = (
        f"{hours // 24} day{'s' if hours != 24 else ''}"
        if hours % 24 == 0
        else f"{hours} hour{'s' if hours != 1 else ''}"
    )
    return f"{label} {amount} {AFTER_LABELS.get(step.get('after', ''), '')}"


class CampaignForm(FlaskForm):
    name = StringField("Name", render_kw={"maxlength": 200, "required": True})
    end = SelectField(
        "When the steps are done",
        choices=[SelectChoice(k, v) for k, v in END_LABELS.items()],
        default=CampaignEnd.EXHAUSTED,
    )
    link_lifetime_days = StringField(
        "Pay link lifetime (days)",
        description="How long the customer's pay link works after the start; every step comes before.",
        default="7",
        render_kw={"inputmode": "numeric", "maxlength": 3},
    )
    version = HiddenField()


def read_rows(form: Any) -> list[StepRow]:
    rows = []
    for index in range(MAX_STEPS + 1):
        prefix = f"s{index}_"
        if prefix + "action" not in form:
            continue
        rows.append(
            StepRow(
                action=form.get(prefix + "action", "").strip(),
                delay=form.get(prefix + "delay", ""),
                unit=form.get(prefix + "unit", "days") if form.get(prefix + "unit") in UNITS else "days",
                after=form.get(prefix + "after", AFTER_PREVIOUS),
            )
        )
    return rows


def rows_to_steps(rows: list[StepRow]) -> tuple[list[dict[str, Any]], list[int]]:
    steps, origin = [], []
    for index, row in enumerate(rows):
        if not row.action:
            continue
        step = row.to_raw()
        if step is not None:
            steps.append(step)
            origin.append(index)
    return steps, origin


def place_error(
    form: CampaignForm, rows: list[StepRow], origin: list[int], name: str | None, message: str
) -> bool:
    """Put a service's message next to its input; False if it belongs to the steps as a whole."""
    matched = _SERVICE_FIELD.fullmatch(name or "")
    if matched and int(matched.group(1)) < len(origin):
        part = {"delay_hours": "delay"}.get(matched.group(2) or "action", matched.group(2) or "action")
        rows[origin[int(matched.group(1))]].errors[
            part if part in ("action", "delay", "after") else "action"
        ] = message
        return True
    target = {"name": form.name, "end": form.end, "link_lifetime_days": form.link_lifetime_days}.get(
        name or ""
    )
    if target is None:
        return False
    target.errors = [*target.errors, message]
    return True
