"""The JSON API for rules: list, add, edit, delete, reorder, preview and explain.

Reads take any token; writes an admin's, as the organization's settings do.
An edit or a delete names the rule's version it was made from, a reorder the
rule set's version (`If-Match` or a `version` field): 409 if someone changed it
meanwhile, 428 if it names none. Adding a rule may name the rule set's version.
"""

from __future__ import annotations

from typing import Annotated, Any, Required

from flask import Blueprint, jsonify, request, url_for
from pydantic import Field, with_config
from typing_extensions import TypedDict

from recovery.api.auth import current_token, install_token_auth, require_token_role, token_actor
from recovery.api.bodies import expected_version, json_object
from recovery.api.errors import ApiError
from recovery.api.openapi import CLOSED, Timestamp, documented, enum_of
from recovery.api.serializers import iso
from recovery.extensions import db
from recovery.models import RecoveryRule, Role, RuleAction, utcnow
from recovery.rules import services
from recovery.rules.conditions import TYPES, read_conditions
from recovery.rules.preview import Tally, explain, preview, read_rule_set
from recovery.transactions.services import get_by_ref

bp = Blueprint("rules_api", __name__, url_prefix="/v1/rules")
install_token_auth(bp)

CONDITION_HELP = (
    "One of: amount {currency, min, max} (minor units, either bound may be null); currency_in, "
    "country_in, country_not_in (ISO 3166 alpha-2; an unknown country is 'not in'), "
    "decline_category_in (retry_later, customer_action, do_not_contact, unknown), decline_code_in, "
    "source_in (stripe, csv, api, form, demo) {values: [...]}; metadata_equals {key, value}; "
    "has_email, has_phone {value: bool}; failed_within_days {days: 1..3650}."
)


@with_config(CLOSED)
class RuleCondition(TypedDict, total=False):
    """A condition; which fields it has depends on its type."""

    type: Required[Annotated[str, enum_of(TYPES, CONDITION_HELP)]]
    values: list[str]
    currency: str
    min: int | None
    max: int | None
    key: str
    value: str | bool
    days: int


@with_config(CLOSED)
class RuleJson(TypedDict):
    """A rule: when all its conditions hold (and no rule above matched), its action is taken."""

    id: Annotated[int, Field(examples=[12])]
    position: Annotated[int, Field(description="0 is tried first; the default is last.")]
    name: str
    enabled: bool
    is_default: Annotated[bool, Field(description="The catch-all: no conditions, always on, always last.")]
    conditions: list[RuleCondition]
    description: Annotated[str, Field(description="The conditions in words.")]
    action: Annotated[str, enum_of(RuleAction.ALL, "What the rule does.")]
    campaign_id: Annotated[int | None, Field(description="The campaign it starts (start_campaign only).")]
    reason: Annotated[
        str | None, Field(description="Shown on the transaction (do_not_recover, hold_for_review).")
    ]
    version: Annotated[int, Field(description="Send it back (If-Match) to edit or delete the rule.")]
    created_at: Timestamp
    updated_at: Timestamp


@with_config(CLOSED)
class RuleList(TypedDict):
    object: Annotated[str, Field(json_schema_extra={"const": "list"})]
    version: Annotated[int, Field(description="The rule set's version: send it back to reorder.")]
    data: list[RuleJson]


@with_config(CLOSED)
class RuleWrite(TypedDict, total=False):
    """A rule to add or (PATCH: only the fields to change) edit."""

    name: Annotated[str, Field(min_length=1, max_length=200)]
    enabled: bool
    conditions: list[RuleCondition]
    action: Annotated[str, enum_of(RuleAction.ALL, "Default start_campaign.")]
    campaign_id: int | None
    reason: str | None
    version: Annotated[int, Field(description="The version edited (PATCH) or the rule set's (POST).")]


@with_config(CLOSED)
class RuleOrder(TypedDict, total=False):
    ids: Required[Annotated[list[int], Field(description="Every rule but the default, in the new order.")]]
    version: Annotated[int, Field(description="The rule set's version, if not in If-Match.")]


@with_config(CLOSED)
class PreviewRule(TypedDict, total=False):
    """An unsaved rule: as RuleWrite, and the saved rule it stands for (`id`) if any."""

    id: int
    name: Required[str]
    enabled: bool
    is_default: bool
    conditions: list[RuleCondition]
    action: Annotated[str, enum_of(RuleAction.ALL, "Default start_campaign.")]
    campaign_id: int | None
    reason: str | None
    version: int


@with_config(CLOSED)
class PreviewRequest(TypedDict, total=False):
    rules: Annotated[list[PreviewRule], Field(description="A rule set to try; none: the saved one.")]


@with_config(CLOSED)
class PreviewCount(TypedDict):
    rule_id: Annotated[int | None, Field(description="Null for a rule not saved yet.")]
    name: str
    count: int
    amounts: Annotated[
        dict[str, int], Field(description="Per currency, minor units.", examples=[{"usd": 12345}])
    ]


@with_config(CLOSED)
class PreviewTotal(TypedDict):
    count: int
    amounts: dict[str, int]


@with_config(CLOSED)
class PreviewAnswer(TypedDict):
    """What the rules would do to the failures of the last 90 days."""

    since: Timestamp
    rules: list[PreviewCount]
    unmatched: Annotated[PreviewTotal, Field(description="The failures no rule but the default catches.")]


@with_config(CLOSED)
class ExplainRequest(TypedDict, total=False):
    transaction_ref: Required[str]
    rules: Annotated[list[PreviewRule], Field(description="A rule set to try; none: the saved one.")]


@with_config(CLOSED)
class RuleNamed(TypedDict):
    rule_id: int | None
    name: str


@with_config(CLOSED)
class RuleSkipped(TypedDict):
    rule_id: int | None
    name: str
    reason: Annotated[str, Field(description="The first condition that did not hold, and what it found.")]


@with_config(CLOSED)
class ExplainAnswer(TypedDict):
    transaction_ref: str
    decline_category: str
    matched: RuleNamed | None
    action: Annotated[str | None, enum_of(RuleAction.ALL, "What the matching rule does.")]
    sentence: Annotated[str | None, Field(description="As the timeline would say it.")]
    skipped: list[RuleSkipped]


PATH = {"rule_id": "The rule's id."}
EXAMPLE = {
    "name": "Big orders: hold for review",
    "conditions": [
        {"type": "amount", "currency": "usd", "min": 100000, "max": None},
        {"type": "decline_category_in", "values": ["retry_later", "unknown"]},
    ],
    "action": "hold_for_review",
    "reason": "Over $1,000: staff call the customer first.",
}


def rule_json(rule: RecoveryRule) -> RuleJson:
    conditions = read_conditions(rule.conditions)
    words = "; ".join(c.sentence() for c in conditions) or (
        "everything no rule above catches" if rule.is_default else "always"
    )
    return {
        "id": rule.id,
        "position": rule.position,
        "name": rule.name,
        "enabled": rule.enabled,
        "is_default": rule.is_default,
        "conditions": [c.as_dict() for c in conditions],  # type: ignore[misc]
        "description": words,
        "action": rule.action,
        "campaign_id": rule.campaign_id,
        "reason": rule.reason,
        "version": rule.version,
        "created_at": iso(rule.created_at),
        "updated_at": iso(rule.updated_at),
    }


def _respond(rule: RecoveryRule, status: int = 200) -> Any:
    response = jsonify(rule_json(rule))
    response.status_code = status
    response.headers["ETag"] = f'"{rule.version}"'
    return response


def _organization_id() -> int:
    return current_token().organization_id


def _optional_body() -> dict[str, Any]:
    """The JSON body, or {} when none is sent (told by the headers: reading it would skip the size limit)."""
    if not request.content_length and not request.headers.get("Transfer-Encoding"):
        return {}
    return json_object()


@bp.get("")
@documented(
    summary="List the rules in the order they are tried",
    tag="Rules",
    response=RuleList,
    description="The first enabled rule whose conditions all hold decides; the default catches the rest.",
)
@require_token_role(Role.VIEWER)
def index() -> Any:
    return _rule_list(_organization_id())


def _rule_list(organization_id: int) -> Any:
    rules = services.list_rules(db.session, organization_id)
    version = services.rules_version(db.session, organization_id)
    answer: RuleList = {"object": "list", "version": version, "data": [rule_json(r) for r in rules]}
    response = jsonify(answer)
    response.headers["ETag"] = f'"{version}"'
    return response


@bp.post("")
@documented(
    summary="Add a rule (just above the default)",
    tag="Rules",
    request=RuleWrite,
    response=RuleJson,
    status=201,
    headers={"Location": "The rule's URL.", "ETag": "Its version, for If-Match."},
    request_example=EXAMPLE,
    errors={
        409: "The rule set is no longer at the version named.",
        422: "A field is missing, unknown or not valid; `fields` names it (e.g. conditions[1].values).",
    },
    description="A `version` (or If-Match), if given, is the rule set's: 409 if it changed meanwhile.",
)
@require_token_role(Role.ADMIN)
def create() -> Any:
    body = json_object()
    expected = expected_version(body, required=False)
    rule = services.create_rule(
        db.session, _organization_id(), token_actor(), body, now=utcnow(), expected_rules_version=expected
    )
    response = _respond(rule, 201)
    response.headers["Location"] = url_for("rules_api.get", rule_id=rule.id)
    return response


@bp.get("/<int:rule_id>")
@documented(
    summary="Read a rule",
    tag="Rules",
    response=RuleJson,
    path_params=PATH,
    headers={"ETag": "The rule's version, for If-Match."},
    errors={404: "No such rule in the token's organization."},
)
@require_token_role(Role.VIEWER)
def get(rule_id: int) -> Any:
    return _respond(services.get_rule(db.session, _organization_id(), rule_id))


@bp.patch("/<int:rule_id>")
@documented(
    summary="Edit a rule",
    tag="Rules",
    request=RuleWrite,
    response=RuleJson,
    path_params=PATH,
    headers={"ETag": "The new version."},
    request_example={"version": 1, "enabled": False},
    errors={
        404: "No such rule in the token's organization.",
        409: "The rule is no longer at the version named (someone changed it).",
        422: "A field is unknown or not valid (the default rule takes no conditions and is always on).",
        428: "Neither an If-Match header nor a version field says which version is edited.",
    },
    description="Fields left out keep their values. Recoveries already started keep the rule as it was.",
)
@require_token_role(Role.ADMIN)
def update(rule_id: int) -> Any:
    rule = services.get_rule(db.session, _organization_id(), rule_id)
    body = json_object()
    expected = expected_version(body, required=True)
    services.update_rule(db.session, rule, token_actor(), body, now=utcnow(), expected_version=expected)
    return _respond(rule)


@bp.delete("/<int:rule_id>")
@documented(
    summary="Delete a rule",
    tag="Rules",
    path_params=PATH,
    status=204,
    errors={
        404: "No such rule in the token's organization.",
        409: "The rule changed since the version named, or it is the default (which cannot be deleted).",
        428: "No If-Match header says which version is deleted.",
    },
)
@require_token_role(Role.ADMIN)
def delete(rule_id: int) -> Any:
    rule = services.get_rule(db.session, _organization_id(), rule_id)
    expected = expected_version({}, required=True)
    services.delete_rule(db.session, rule, token_actor(), now=utcnow(), expected_version=expected)
    return "", 204


@bp.post("/reorder")
@documented(
    summary="Put the rules in a new order",
    tag="Rules",
    request=RuleOrder,
    response=RuleList,
    request_example={"ids": [14, 12, 13], "version": 7},
    errors={
        409: "The rule set is no longer at the version named.",
        422: "ids is not every rule but the default, each once.",
        428: "Neither an If-Match header nor a version field names the rule set's version.",
    },
    description="The default stays last (it may end the list).",
)
@require_token_role(Role.ADMIN)
def reorder() -> Any:
    body = json_object()
    expected = expected_version(body, required=True)
    unknown = sorted(set(body) - {"ids"})
    if unknown:
        raise ApiError(
            422, "validation_error", f"Unknown field {unknown[0]!r}.", {unknown[0]: "Unknown field."}
        )
    organization_id = _organization_id()
    services.reorder(
        db.session,
        organization_id,
        token_actor(),
        body.get("ids"),
        now=utcnow(),
        expected_rules_version=expected,
    )
    return _rule_list(organization_id)


def _tally(tally: Tally) -> PreviewTotal:
    return {"count": tally.count, "amounts": dict(sorted(tally.amounts.items()))}


@bp.post("/preview")
@documented(
    summary="Preview what the rules would do to the last 90 days",
    tag="Rules",
    request=PreviewRequest,
    response=PreviewAnswer,
    request_required=False,
    errors={
        422: "A rule of the set given is not valid; `fields` names it (e.g. rules[1].conditions[0].values)."
    },
    description=(
        "Per rule, the failures of the last 90 days it would catch first and their amounts per currency; "
        "`unmatched`: those only the default catches. Give `rules` to try a set before saving it."
    ),
)
@require_token_role(Role.VIEWER)
def preview_rules() -> Any:
    body = _optional_body()
    organization_id = _organization_id()
    rules = _rule_set(body, organization_id, {"rules"})
    result = preview(db.session, organization_id, rules, now=utcnow())
    answer: PreviewAnswer = {
        "since": iso(result.since),
        "rules": [
            {"rule_id": t.rule.rule_id, "name": t.rule.name, **_tally(t.tally)}  # type: ignore[typeddict-item]
            for t in result.rules
        ],
        "unmatched": _tally(result.unmatched),
    }
    return jsonify(answer)


def _rule_set(body: dict[str, Any], organization_id: int, allowed: set[str]) -> Any:
    unknown = sorted(set(body) - allowed)
    if unknown:
        raise ApiError(
            422, "validation_error", f"Unknown field {unknown[0]!r}.", {unknown[0]: "Unknown field."}
        )
    if "rules" not in body:
        return None
    return read_rule_set(db.session, organization_id, body["rules"])


@bp.post("/explain")
@documented(
    summary="Test a transaction: which rule matches, and why each rule above does not",
    tag="Rules",
    request=ExplainRequest,
    response=ExplainAnswer,
    request_example={"transaction_ref": "TXN-001"},
    errors={404: "No such transaction in the token's organization.", 422: "transaction_ref missing."},
)
@require_token_role(Role.VIEWER)
def explain_transaction() -> Any:
    body = json_object()
    organization_id = _organization_id()
    ref = body.get("transaction_ref")
    if not isinstance(ref, str) or not ref.strip():
        raise ApiError(
            422, "validation_error", "transaction_ref is required.", {"transaction_ref": "Required."}
        )
    rules = _rule_set(body, organization_id, {"transaction_ref", "rules"})
    transaction = get_by_ref(db.session, organization_id, ref.strip())
    if transaction is None:
        raise ApiError(404, "not_found", "Transaction not found")
    found = explain(db.session, organization_id, transaction, rules, now=utcnow())
    answer: ExplainAnswer = {
        "transaction_ref": transaction.transaction_ref,
        "decline_category": transaction.decline_category,
        "matched": {"rule_id": found.matched.rule_id, "name": found.matched.name} if found.matched else None,
        "action": found.decision.action if found.decision else None,
        "sentence": found.decision.sentence if found.decision else None,
        "skipped": [
            {"rule_id": s.rule.rule_id, "name": s.rule.name, "reason": s.reason} for s in found.skipped
        ],
    }
    return jsonify(answer)
