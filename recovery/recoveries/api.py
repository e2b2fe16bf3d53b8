"""The JSON API for recoveries: start one for a transaction, read it, cancel it."""

from __future__ import annotations

from typing import Annotated, Any, Required

from flask import Blueprint, jsonify, url_for
from pydantic import Field, with_config
from sqlalchemy import select
from typing_extensions import TypedDict

from recovery.api.auth import current_token, install_token_auth, require_token_role, token_actor
from recovery.api.bodies import json_object
from recovery.api.errors import ApiError
from recovery.api.openapi import CLOSED, Timestamp, documented, enum_of
from recovery.api.serializers import iso
from recovery.extensions import db
from recovery.logs import get_logger
from recovery.models import (
    AttemptStatus,
    CampaignVersion,
    Channel,
    Message,
    MessageStatus,
    RecoveryAttempt,
    Role,
    Transaction,
    utcnow,
)
from recovery.recoveries import lifecycle
from recovery.recoveries.refusals import RecoveryRefused
from recovery.rules.starting import start_by_rules, start_chosen
from recovery.transactions.services import get_by_ref
from recovery.unit_of_work import commit_now

bp = Blueprint("recoveries_api", __name__, url_prefix="/v1/recoveries")
install_token_auth(bp)

log = get_logger("recovery.api")

CHANNELS = (Channel.EMAIL, Channel.SMS)


@with_config(CLOSED)
class RecoveryStart(TypedDict, total=False):
    """What to start; everything but the transaction has the organization's defaults."""

    transaction_ref: Required[str]
    channels: Annotated[
        list[Annotated[str, enum_of(CHANNELS, "A channel.")]],
        Field(
            description="Default: every channel the customer can be reached on (and has not opted out of)."
        ),
    ]
    schedule: Annotated[
        list[int],
        Field(
            description=(
                "Days after the start at which each message goes out, increasing, the last before the "
                "link expires; default the organization's, e.g. [0, 1, 3, 6]."
            )
        ),
    ]
    allow_fallback: Annotated[
        bool, Field(description="Whether a dead address may be replaced by the customer's other channel.")
    ]
    campaign_id: Annotated[
        int,
        Field(
            description=(
                "Start this campaign (its current version) instead of what the rules choose; not with "
                "`schedule`. Without either, the organization's rules decide."
            )
        ),
    ]


# The fields the API takes are the ones it documents.
START_FIELDS = RecoveryStart.__required_keys__ | RecoveryStart.__optional_keys__


@with_config(CLOSED)
class RecoveryMessage(TypedDict):
    """An email or SMS sent or attempted."""

    step: int
    channel: Annotated[str, enum_of(CHANNELS, "email or sms.")]
    status: Annotated[str, enum_of(MessageStatus.ALL, "Delivery status; unknown: check the provider.")]
    provider: Annotated[str | None, Field(description="smtp, twilio, or outbox (nothing left the machine).")]
    provider_id: str | None
    error: str | None
    sent_at: Timestamp | None


@with_config(CLOSED)
class Recovery(TypedDict):
    """A recovery campaign. Never holds the customer's link: it is their secret."""

    object: Annotated[str, Field(json_schema_extra={"const": "recovery"})]
    id: Annotated[int, Field(examples=[42])]
    transaction_ref: Annotated[str, Field(examples=["TXN-001"])]
    status: Annotated[str, enum_of(AttemptStatus.ALL, "Where the campaign stands.")]
    channels: list[Annotated[str, enum_of(CHANNELS, "A channel.")]]
    schedule: Annotated[
        list[int], Field(description="Days after the start of each message.", examples=[[0, 1, 3, 6]])
    ]
    allow_fallback: bool
    step: Annotated[int, Field(description="The next step of the schedule to send.")]
    max_retries: int
    messages_sent: int
    next_send_at: Annotated[Timestamp | None, Field(description="Null once the recovery has ended.")]
    expires_at: Timestamp
    clicked_at: Timestamp | None
    created_at: Timestamp
    completed_at: Timestamp | None
    messages: list[RecoveryMessage]
    rule: Annotated[
        RuleUsed | None,
        Field(description="The rule that chose it; null if none did (a choice or a schedule)."),
    ]
    campaign: Annotated[
        CampaignUsed | None, Field(description="Null for a recovery that follows a schedule of messages.")
    ]


@with_config(CLOSED)
class RuleUsed(TypedDict):
    """The rule that chose the campaign, as it was then."""

    id: Annotated[int | None, Field(description="Null once the rule is deleted.")]
    name: str
    version: int


@with_config(CLOSED)
class CampaignUsed(TypedDict):
    """The campaign the recovery follows, at the version it started with."""

    id: int
    name: str
    version: int


RECOVERY_PATH = {"attempt_id": "The recovery's id."}


def recovery_json(attempt: RecoveryAttempt) -> Recovery:
    """The API's recovery object. Never the token: it is the customer's secret link."""
    messages = sorted(attempt_messages(attempt), key=lambda m: (m.step, m.id))
    return {
        "object": "recovery",
        "id": attempt.id,
        "transaction_ref": attempt.transaction.transaction_ref,
        "status": attempt.status,
        "channels": list(attempt.channels),
        "schedule": attempt.schedule_days,
        "allow_fallback": attempt.allow_fallback,
        "step": attempt.step,
        "max_retries": attempt.max_retries,
        "messages_sent": attempt.messages_sent,
        "next_send_at": iso(attempt.next_send_at) if attempt.is_active else None,
        "expires_at": iso(attempt.expires_at),
        "clicked_at": iso(attempt.clicked_at),
        "created_at": iso(attempt.created_at),
        "completed_at": iso(attempt.completed_at),
        "messages": [
            {
                "step": m.step,
                "channel": m.channel,
                "status": m.status,
                "provider": m.provider,
                "provider_id": m.provider_id,
                "error": m.error,
                "sent_at": iso(m.sent_at),
            }
            for m in messages
        ],
        "rule": _rule_used(attempt),
        "campaign": _campaign_used(attempt),
    }


def _rule_used(attempt: RecoveryAttempt) -> RuleUsed | None:
    if attempt.rule_name is None or attempt.rule_version is None:
        return None
    return {"id": attempt.rule_id, "name": attempt.rule_name, "version": attempt.rule_version}


def _campaign_used(attempt: RecoveryAttempt) -> CampaignUsed | None:
    if attempt.campaign_version_id is None:
        return None
    version = db.session.get(CampaignVersion, attempt.campaign_version_id)
    assert version is not None
    return {"id": version.campaign_id, "name": version.campaign.name, "version": version.version}


def attempt_messages(attempt: RecoveryAttempt) -> list[Message]:
    return list(db.session.scalars(select(Message).where(Message.attempt_id == attempt.id)))


def _attempt(attempt_id: int) -> RecoveryAttempt:
    attempt = lifecycle.get_for_org(db.session, current_token().organization_id, attempt_id)
    if attempt is None:
        raise ApiError(404, "not_found", "Recovery not found")
    return attempt


@bp.post("")
@documented(
    summary="Start a recovery for a transaction",
    tag="Recoveries",
    request=RecoveryStart,
    response=Recovery,
    status=201,
    headers={"Location": "The recovery's URL, /v1/recoveries/{id}."},
    request_example={"transaction_ref": "TXN-001", "channels": ["email"]},
    errors={
        404: "No such transaction in the token's organization.",
        409: (
            "A recovery is already running for the transaction, or it is already paid or closed; or the "
            "organization's rules hold it for review or say not to recover it (what the rule did stands, "
            "and the message names the rule)."
        ),
        422: (
            "A field is unknown or not valid (`channels`: unknown channel, no address, opted out; "
            "`schedule`; `campaign_id`: not the organization's, archived, or given with a schedule), the "
            "failure code is excluded from recovery in the organization's settings, or the amount is one "
            "Stripe cannot charge (below its minimum for the currency)."
        ),
    },
    description=(
        "Without `campaign_id` or `schedule`, the organization's rules choose: the first enabled rule whose "
        "conditions all hold starts its campaign; the answer's `rule` and `campaign` name what was used. "
        "The first message goes out at once when the campaign or schedule starts at 0 (outside quiet hours)."
    ),
)
@require_token_role(Role.OPERATOR)
def start() -> Any:
    body = json_object()
    unknown = sorted(set(body) - START_FIELDS)
    if unknown:
        raise ApiError(
            422,
            "validation_error",
            f"Unknown field(s): {', '.join(unknown)}.",
            dict.fromkeys(unknown, "Unknown field."),
        )
    ref = body.get("transaction_ref")
    if not isinstance(ref, str) or not ref.strip():
        raise ApiError(
            422, "validation_error", "transaction_ref is required.", {"transaction_ref": "Required."}
        )
    channels = body.get("channels")
    if channels is not None and (
        not isinstance(channels, list) or not all(isinstance(c, str) for c in channels)
    ):
        raise ApiError(
            422,
            "validation_error",
            'channels must be a list such as ["email", "sms"].',
            {"channels": "Must be a list."},
        )
    schedule = body.get("schedule")
    if schedule is not None and not isinstance(schedule, list | str):
        raise ApiError(
            422,
            "validation_error",
            "schedule must be a list of days such as [0, 1, 3, 6].",
            {"schedule": "Must be a list."},
        )
    allow_fallback = body.get("allow_fallback")
    if allow_fallback is not None and not isinstance(allow_fallback, bool):
        raise ApiError(
            422,
            "validation_error",
            "allow_fallback must be true or false.",
            {"allow_fallback": "Must be a boolean."},
        )
    campaign_id = body.get("campaign_id")
    if campaign_id is not None and schedule is not None:
        raise ApiError(
            422,
            "validation_error",
            "Give a campaign_id or a schedule, not both.",
            {"campaign_id": "Not with schedule."},
        )
    transaction = get_by_ref(db.session, current_token().organization_id, ref.strip())
    if transaction is None:
        raise ApiError(404, "not_found", "Transaction not found")
    attempt = _start(transaction, channels, schedule, allow_fallback, campaign_id)
    response = jsonify(recovery_json(attempt))
    response.status_code = 201
    response.headers["Location"] = url_for("recoveries_api.get", attempt_id=attempt.id)
    return response


def _start(
    transaction: Transaction,
    channels: list[str] | None,
    schedule: Any,
    allow_fallback: bool | None,
    campaign_id: Any,
) -> RecoveryAttempt:
    """Start as asked: the campaign given, the schedule given, or what the rules say."""
    actor, now = token_actor(), utcnow()
    if schedule is not None:
        return lifecycle.start_recovery(
            db.session,
            transaction,
            actor,
            now=now,
            channels=channels,
            schedule=schedule,
            allow_fallback=allow_fallback,
        ).attempt
    if campaign_id is not None:
        return start_chosen(
            db.session,
            transaction,
            actor,
            campaign_id,
            field="campaign_id",
            sentence=lambda campaign: f"Campaign “{campaign.name}” chosen by {actor.label}.",
            now=now,
            channels=channels,
            allow_fallback=allow_fallback,
        )
    started = start_by_rules(
        db.session, transaction, actor, now=now, channels=channels, allow_fallback=allow_fallback
    )
    if started.attempt is not None:
        return started.attempt
    assert started.decision is not None
    commit_now(db.session, "what the rule did (held, or marked not to recover) stands though nothing started")
    done = "held it for review" if started.outcome == "held" else "says not to recover it"
    raise RecoveryRefused(
        f"No recovery started: {started.decision.sentence} The rule {done}: {started.decision.reason}",
        status=409,
    )


@bp.get("/<int:attempt_id>")
@documented(
    summary="Read a recovery with its messages",
    tag="Recoveries",
    response=Recovery,
    path_params=RECOVERY_PATH,
    errors={404: "No such recovery in the token's organization."},
)
@require_token_role(Role.VIEWER)
def get(attempt_id: int) -> Any:
    return jsonify(recovery_json(_attempt(attempt_id)))


@bp.post("/<int:attempt_id>/cancel")
@documented(
    summary="Cancel a recovery",
    tag="Recoveries",
    response=Recovery,
    path_params=RECOVERY_PATH,
    errors={
        404: "No such recovery in the token's organization.",
        409: "The recovery has already ended.",
    },
    description="No further message is sent, not even one already queued; the transaction moves on.",
)
@require_token_role(Role.OPERATOR)
def cancel(attempt_id: int) -> Any:
    attempt = _attempt(attempt_id)
    lifecycle.cancel_recovery(db.session, attempt, token_actor(), now=utcnow())
    return jsonify(recovery_json(attempt))
