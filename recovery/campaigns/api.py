"""The JSON API for campaigns: list, read, create, edit (a new version), archive.

Reads take any token; writes an admin's, as the organization's settings do.
An edit names the version it was made from (`If-Match` or a `version`
field): 409 if someone changed the campaign meanwhile, 428 if it names none.
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
from recovery.campaigns import services
from recovery.campaigns.steps import AFTERS, MAX_LIFETIME_DAYS, MAX_STEPS, MIN_LIFETIME_DAYS
from recovery.extensions import db
from recovery.models import Campaign, CampaignEnd, CampaignVersion, Organization, Role, StepAction, utcnow

bp = Blueprint("campaigns_api", __name__, url_prefix="/v1/campaigns")
install_token_auth(bp)


@with_config(CLOSED)
class CampaignStep(TypedDict):
    """One step: what it does, and when (hours after the failure, or after the step before)."""

    action: Annotated[
        str,
        enum_of(
            StepAction.ALL,
            "email, sms, email_and_sms: a message with the pay link; retry_card: charge the saved card "
            "again; notify_staff: email the organization's staff.",
        ),
    ]
    delay_hours: Annotated[int, Field(ge=0, examples=[24])]
    after: Annotated[
        str, enum_of(AFTERS, "What the delay counts from; the first step's previous is the start.")
    ]


@with_config(CLOSED)
class CampaignVersionJson(TypedDict):
    """A version of a campaign as it was saved; attempts keep the version they started with."""

    version: int
    steps: list[CampaignStep]
    end: Annotated[
        str, enum_of(CampaignEnd.ALL, "What happens once the steps are done and the link expired.")
    ]
    link_lifetime_days: int
    created_at: Timestamp
    created_by: str | None


@with_config(CLOSED)
class CampaignJson(TypedDict, total=False):
    """A campaign at its current version."""

    id: Required[Annotated[int, Field(examples=[7])]]
    name: Required[str]
    builtin: Required[
        Annotated[str | None, Field(description="Which built-in campaign this is; null for your own.")]
    ]
    archived: Required[bool]
    version: Required[Annotated[int, Field(description="The current version; send it back to edit.")]]
    steps: Required[list[CampaignStep]]
    end: Required[Annotated[str, enum_of(CampaignEnd.ALL, "The end.")]]
    link_lifetime_days: Required[int]
    created_at: Required[Timestamp]
    updated_at: Required[Timestamp]
    versions: Annotated[list[CampaignVersionJson], Field(description="Every version; on GET one only.")]


@with_config(CLOSED)
class CampaignList(TypedDict):
    object: Annotated[str, Field(json_schema_extra={"const": "list"})]
    data: list[CampaignJson]


@with_config(CLOSED)
class CampaignWrite(TypedDict, total=False):
    """A campaign to create or (PATCH: only the fields to change) edit."""

    name: Annotated[str, Field(min_length=1, max_length=200)]
    steps: Annotated[list[CampaignStep], Field(min_length=1, max_length=MAX_STEPS)]
    end: Annotated[str, enum_of(CampaignEnd.ALL, "Default exhausted.")]
    link_lifetime_days: Annotated[
        int, Field(ge=MIN_LIFETIME_DAYS, le=MAX_LIFETIME_DAYS, description="Default 7.")
    ]
    version: Annotated[int, Field(description="PATCH: the version edited, if not in If-Match.")]


@with_config(CLOSED)
class CampaignListQuery(TypedDict, total=False):
    archived: Annotated[str, enum_of(("true", "false"), "true: the archived campaigns too.")]


PATH = {"campaign_id": "The campaign's id."}
EXAMPLE = {
    "name": "Big orders: retry, then tell staff",
    "steps": [
        {"action": "retry_card", "delay_hours": 24, "after": "failure"},
        {"action": "email", "delay_hours": 1, "after": "previous"},
        {"action": "notify_staff", "delay_hours": 48, "after": "failure"},
    ],
    "end": "hold_for_review",
    "link_lifetime_days": 7,
}


def _steps(steps: list[dict[str, Any]]) -> list[CampaignStep]:
    return [
        {"action": step["action"], "delay_hours": step["delay_hours"], "after": step["after"]}
        for step in steps
    ]


def _version_json(version: CampaignVersion) -> CampaignVersionJson:
    return {
        "version": version.version,
        "steps": _steps(version.steps),
        "end": version.end,
        "link_lifetime_days": version.link_lifetime_days,
        "created_at": iso(version.created_at) or "",
        "created_by": version.created_by,
    }


def campaign_json(campaign: Campaign, *, with_versions: bool = False) -> CampaignJson:
    current = services.current_version(db.session, campaign)
    body: CampaignJson = {
        "id": campaign.id,
        "name": campaign.name,
        "builtin": campaign.builtin,
        "archived": campaign.archived_at is not None,
        "version": campaign.current_version,
        "steps": _steps(current.steps),
        "end": current.end,
        "link_lifetime_days": current.link_lifetime_days,
        "created_at": iso(campaign.created_at) or "",
        "updated_at": iso(campaign.updated_at) or "",
    }
    if with_versions:
        body["versions"] = [_version_json(version) for version in campaign.versions]
    return body


def _respond(campaign: Campaign, status: int = 200, *, with_versions: bool = False) -> Any:
    response = jsonify(campaign_json(campaign, with_versions=with_versions))
    response.status_code = status
    response.headers["ETag"] = f'"{campaign.current_version}"'
    return response


def _campaign(campaign_id: int) -> Campaign:
    campaign = services.get(db.session, current_token().organization_id, campaign_id)
    if campaign is None:
        raise ApiError(404, "not_found", "Campaign not found")
    return campaign


@bp.get("")
@documented(
    summary="List the campaigns",
    tag="Campaigns",
    response=CampaignList,
    query=CampaignListQuery,
    errors={422: "An unknown query parameter, or archived is not true or false."},
    description="By name; archived campaigns only with archived=true.",
)
@require_token_role(Role.VIEWER)
def index() -> Any:
    unknown = sorted(set(request.args) - {"archived"})
    if unknown:
        raise ApiError(
            422, "validation_error", f"Unknown query parameter {unknown[0]}.", {unknown[0]: "Unknown."}
        )
    archived = request.args.get("archived", "false")
    if archived not in ("true", "false"):
        raise ApiError(422, "validation_error", "archived is true or false.", {"archived": "true or false."})
    campaigns = services.list_campaigns(
        db.session, current_token().organization_id, archived=archived == "true"
    )
    return jsonify({"object": "list", "data": [campaign_json(c) for c in campaigns]})


@bp.post("")
@documented(
    summary="Create a campaign",
    tag="Campaigns",
    request=CampaignWrite,
    response=CampaignJson,
    status=201,
    headers={"Location": "The campaign's URL.", "ETag": "Its version, for If-Match."},
    request_example=EXAMPLE,
    errors={422: "A field is missing, unknown or not valid; `fields` names it (e.g. steps[2].delay_hours)."},
    description=(
        "Each step's time counts from the failure or from the step before; no step may come after the "
        "link expires (counted as if the recovery started at the failure)."
    ),
)
@require_token_role(Role.ADMIN)
def create() -> Any:
    body = json_object()
    organization = db.session.get(Organization, current_token().organization_id)
    assert organization is not None
    campaign = services.create(db.session, organization, token_actor(), body)
    response = _respond(campaign, 201)
    response.headers["Location"] = url_for("campaigns_api.get", campaign_id=campaign.id)
    return response


@bp.get("/<int:campaign_id>")
@documented(
    summary="Read a campaign with its versions",
    tag="Campaigns",
    response=CampaignJson,
    path_params=PATH,
    headers={"ETag": "The current version, for If-Match."},
    errors={404: "No such campaign in the token's organization."},
)
@require_token_role(Role.VIEWER)
def get(campaign_id: int) -> Any:
    return _respond(_campaign(campaign_id), with_versions=True)


@bp.patch("/<int:campaign_id>")
@documented(
    summary="Edit a campaign (a new version)",
    tag="Campaigns",
    request=CampaignWrite,
    response=CampaignJson,
    path_params=PATH,
    headers={"ETag": "The new version."},
    request_example={"version": 1, "link_lifetime_days": 10},
    errors={
        404: "No such campaign in the token's organization.",
        409: "The campaign is no longer at the version named (someone changed it), or it is archived.",
        422: "A field is unknown or not valid; `fields` names it.",
        428: "Neither an If-Match header nor a version field says which version is edited.",
    },
    description=(
        'Name the version you edit with `If-Match: "3"` (the ETag of GET) or a `version` field. Fields '
        "left out keep their values. Recoveries already running keep the version they started with."
    ),
)
@require_token_role(Role.ADMIN)
def update(campaign_id: int) -> Any:
    campaign = _campaign(campaign_id)
    body = json_object()
    expected = expected_version(body)
    services.update(db.session, campaign, token_actor(), body, expected_version=expected)
    return _respond(campaign)


@bp.post("/<int:campaign_id>/archive")
@documented(
    summary="Archive a campaign",
    tag="Campaigns",
    response=CampaignJson,
    path_params=PATH,
    request_required=False,
    errors={
        404: "No such campaign in the token's organization.",
        409: "A rule still starts it, or it is the default campaign.",
    },
    description="Campaigns are never deleted: recoveries that ran one keep pointing at it.",
)
@require_token_role(Role.ADMIN)
def archive(campaign_id: int) -> Any:
    campaign = _campaign(campaign_id)
    services.archive(db.session, campaign, token_actor(), now=utcnow())
    return _respond(campaign)
