"""What a campaign definition must be: its steps, its end, its link's lifetime, its name.

One checker for the API, the form and the services, so a campaign is refused
the same way wherever it comes from, with `field` naming the input at fault
("steps[2].delay_hours"), and nothing is saved half-checked.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from recovery.models import CampaignEnd, StepAction
from recovery.refusals import Refused

MIN_STEPS = 1
MAX_STEPS = 10
MIN_LIFETIME_DAYS = 1
# Stripe's Checkout Sessions and our links are re-made as needed, but a customer asked
# to pay two months after a failure rarely does; longer plans are a mistake more often.
MAX_LIFETIME_DAYS = 60
MAX_NAME = 200
AFTER_FAILURE = "failure"
AFTER_PREVIOUS = "previous"
AFTERS = (AFTER_FAILURE, AFTER_PREVIOUS)
STEP_KEYS = ("action", "delay_hours", "after")
DEFINITION_KEYS = ("name", "steps", "end", "link_lifetime_days")


class CampaignRefused(Refused):
    """A campaign cannot be saved or changed as asked; `field` names the input at fault."""


@dataclass(frozen=True)
class Definition:
    """A checked campaign definition, ready to store as a version."""

    name: str
    steps: list[dict[str, Any]]
    end: str
    link_lifetime_days: int


def _whole_number(value: object, field: str, what: str) -> int:
    # bool is an int to Python, never to a merchant; a float like 2.0 is refused too.
    if isinstance(value, bool) or not isinstance(value, int):
        raise CampaignRefused(f"{what} must be a whole number.", field=field)
    return value


def check_name(value: object) -> str:
    if not isinstance(value, str) or not value.strip():
        raise CampaignRefused("Give the campaign a name.", field="name")
    name = value.strip()
    if len(name) > MAX_NAME:
        raise CampaignRefused(f"The name has at most {MAX_NAME} characters.", field="name")
    return name


def check_end(value: object) -> str:
    if value not in CampaignEnd.ALL:
        raise CampaignRefused(f"The end must be one of {', '.join(CampaignEnd.ALL)}.", field="end")
    return str(value)


def check_lifetime(value: object) -> int:
    days = _whole_number(value, "link_lifetime_days", "The link lifetime")
    if not MIN_LIFETIME_DAYS <= days <= MAX_LIFETIME_DAYS:
        raise CampaignRefused(
            f"The link lives {MIN_LIFETIME_DAYS} to {MAX_LIFETIME_DAYS} days.", field="link_lifetime_days"
        )
    return days


def check_step(index: int, raw: object) -> dict[str, Any]:
    """One step as stored: {"action", "delay_hours", "after"}; CampaignRefused naming steps[i].<key>."""
    where = f"steps[{index}]"
    if not isinstance(raw, dict):
        raise CampaignRefused(
            'Each step is an object such as {"action": "email", "delay_hours": 24, "after": "previous"}.',
            field=where,
        )
    unknown = sorted(str(key) for key in raw if key not in STEP_KEYS)
    if unknown:
        raise CampaignRefused(
            f"Unknown field {unknown[0]!r}; a step has {', '.join(STEP_KEYS)}.", field=f"{where}.{unknown[0]}"
        )
    action = raw.get("action")
    if action not in StepAction.ALL:
        raise CampaignRefused(
            f"The action must be one of {', '.join(StepAction.ALL)}.", field=f"{where}.action"
        )
    delay = _whole_number(raw.get("delay_hours"), f"{where}.delay_hours", "The delay in hours")
    if delay < 0:
        raise CampaignRefused("The delay cannot be negative.", field=f"{where}.delay_hours")
    after = raw.get("after", AFTER_PREVIOUS)
    if after not in AFTERS:
        raise CampaignRefused('"after" is "failure" or "previous".', field=f"{where}.after")
    return {"action": action, "delay_hours": delay, "after": after}


def planned_hours(steps: list[dict[str, Any]]) -> list[int]:
    """Each step's time in hours after the failure, if the recovery started at the failure.

    "after failure" counts from the failure; "after previous" from the step
    before (the first step's previous is the start).
    """
    hours: list[int] = []
    previous = 0
    for step in steps:
        at = step["delay_hours"] if step["after"] == AFTER_FAILURE else previous + step["delay_hours"]
        hours.append(at)
        previous = at
    return hours


def check_steps(raw: object, lifetime_days: int) -> list[dict[str, Any]]:
    if not isinstance(raw, list):
        raise CampaignRefused("steps must be a list of steps.", field="steps")
    if not MIN_STEPS <= len(raw) <= MAX_STEPS:
        raise CampaignRefused(f"A campaign has {MIN_STEPS} to {MAX_STEPS} steps.", field="steps")
    steps = [check_step(index, step) for index, step in enumerate(raw)]
    for index, at in enumerate(planned_hours(steps)):
        # At the lifetime exactly the link is dead already: nothing a step does can be paid.
        if at >= lifetime_days * 24:
            raise CampaignRefused(
                f"This step would come {at} hours after the failure, after the link expires "
                f"({lifetime_days} days).",
                field=f"steps[{index}].delay_hours",
            )
    return steps


def check_definition(raw: object, *, current: Definition | None = None) -> Definition:
    """A campaign from `raw` (a dict of DEFINITION_KEYS); with `current`, the keys left out keep its values.

    Raises CampaignRefused naming the first field at fault; unknown keys are refused.
    """
    if not isinstance(raw, dict):
        raise CampaignRefused("A campaign is an object with name, steps, end and link_lifetime_days.")
    unknown = sorted(str(key) for key in raw if key not in DEFINITION_KEYS)
    if unknown:
        raise CampaignRefused(
            f"Unknown field {unknown[0]!r}; a campaign has {', '.join(DEFINITION_KEYS)}.", field=unknown[0]
        )
    if current is None:
        for key in ("name", "steps"):
            if key not in raw:
                raise CampaignRefused(f"{key} is required.", field=key)
    name = check_name(raw["name"]) if "name" in raw or current is None else current.name
    end = check_end(raw.get("end", CampaignEnd.EXHAUSTED)) if "end" in raw or current is None else current.end
    if "link_lifetime_days" in raw or current is None:
        lifetime = check_lifetime(raw.get("link_lifetime_days", 7))
    else:
        lifetime = current.link_lifetime_days
    steps = check_steps(raw.get("steps", current.steps if current else None), lifetime)
    return Definition(name, steps, end, lifetime)
