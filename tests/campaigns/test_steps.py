"""The campaign definition checker: every bad input refused, naming its field."""

from __future__ import annotations

from typing import Any

import pytest

from recovery.campaigns.steps import CampaignRefused, Definition, check_definition, planned_hours


def step(action: str = "email", hours: int = 0, after: str = "previous") -> dict[str, Any]:
    return {"action": action, "delay_hours": hours, "after": after}


GOOD: dict[str, Any] = {
    "name": "Soft",
    "steps": [step("retry_card", 24, "failure"), step("email", 1), step("notify_staff", 0)],
    "end": "hold_for_review",
    "link_lifetime_days": 5,
}


def test_a_good_definition_is_kept_as_given() -> None:
    checked = check_definition(GOOD)
    assert checked == Definition("Soft", GOOD["steps"], "hold_for_review", 5)


def test_defaults_after_previous_end_exhausted_lifetime_seven() -> None:
    checked = check_definition({"name": " Mine ", "steps": [{"action": "sms", "delay_hours": 3}]})
    assert checked == Definition("Mine", [step("sms", 3)], "exhausted", 7)


def test_planned_hours_count_from_failure_or_previous() -> None:
    steps = [step("email", 5), step("sms", 24, "failure"), step("email", 2), step("email", 1, "failure")]
    assert planned_hours(steps) == [5, 24, 26, 1]


def _with(**changes: Any) -> dict[str, Any]:
    return {**GOOD, **changes}


BAD: list[tuple[Any, str]] = [
    (_with(name=""), "name"),
    (_with(name="   "), "name"),
    (_with(name="x" * 201), "name"),
    (_with(name=5), "name"),
    (_with(end="forever"), "end"),
    (_with(link_lifetime_days=0), "link_lifetime_days"),
    (_with(link_lifetime_days=61), "link_lifetime_days"),
    (_with(link_lifetime_days="7"), "link_lifetime_days"),
    (_with(link_lifetime_days=True), "link_lifetime_days"),
    (_with(steps=[]), "steps"),
    (_with(steps="email"), "steps"),
    (_with(steps=[step()] * 11), "steps"),
    (_with(steps=[step(), "email"]), "steps[1]"),
    (_with(steps=[step(), step("fax")]), "steps[1].action"),
    (_with(steps=[step(), step(hours=-1)]), "steps[1].delay_hours"),
    (_with(steps=[step(), step(), {"action": "email", "delay_hours": 1.5}]), "steps[2].delay_hours"),
    (_with(steps=[{"action": "email", "delay_hours": "1"}]), "steps[0].delay_hours"),
    (_with(steps=[{"action": "email"}]), "steps[0].delay_hours"),
    (_with(steps=[step(after="yesterday")]), "steps[0].after"),
    (_with(steps=[{**step(), "channel": "sms"}]), "steps[0].channel"),
    # 5 days = 120 hours: a step at 120 hours or later is past the link's life.
    (_with(steps=[step(hours=120)]), "steps[0].delay_hours"),
    (_with(steps=[step(hours=60), step("sms", 60)]), "steps[1].delay_hours"),
    (_with(steps=[step(hours=100), step("sms", 120, "failure")]), "steps[1].delay_hours"),
    (_with(colour="red"), "colour"),
    ({"steps": [step()]}, "name"),
    ({"name": "x"}, "steps"),
]


@pytest.mark.parametrize(("raw", "field"), BAD)
def test_bad_input_is_refused_naming_the_field(raw: Any, field: str) -> None:
    with pytest.raises(CampaignRefused) as refused:
        check_definition(raw)
    assert refused.value.field == field
    assert refused.value.status == 422
    assert refused.value.message


def test_a_non_object_is_refused() -> None:
    with pytest.raises(CampaignRefused):
        check_definition(["name"])


def test_an_edit_keeps_what_it_leaves_out_and_checks_steps_against_the_lifetime() -> None:
    current = check_definition(GOOD)
    assert check_definition({"name": "New"}, current=current) == Definition(
        "New", GOOD["steps"], "hold_for_review", 5
    )
    with pytest.raises(CampaignRefused) as refused:
        # The steps fit 5 days (26 hours), not 1.
        check_definition({"link_lifetime_days": 1}, current=current)
    assert refused.value.field == "steps[0].delay_hours"
