"""The JSON API for CSV imports: the file's text and, optionally, the column mapping.

The same services as the upload page and `flask import-csv`: the mapping given
overrides the one last confirmed for this header (or the one proposed), the
file is checked and imported by the same rules, and the import can be read
back with its counts, refused rows and warnings.
"""

from __future__ import annotations

from typing import Annotated, Any, Required

from flask import Blueprint, jsonify, url_for
from pydantic import Field, with_config
from sqlalchemy import select
from typing_extensions import TypedDict

from recovery.api.auth import current_token, install_token_auth, require_token_role, token_actor
from recovery.api.bodies import API_MAX_BODY_BYTES, json_object
from recovery.api.errors import ApiError
from recovery.api.openapi import CLOSED, Timestamp, documented, enum_of
from recovery.api.serializers import iso
from recovery.extensions import db
from recovery.imports import services
from recovery.imports.mapping import TARGET_NAMES
from recovery.imports.starting import import_settings, start_import, start_recoveries
from recovery.models import CsvImport, ImportStatus, Role

bp = Blueprint("imports_api", __name__, url_prefix="/v1/imports")
install_token_auth(bp)

STATUSES = (
    ImportStatus.MAPPING,
    ImportStatus.QUEUED,
    ImportStatus.RUNNING,
    ImportStatus.DONE,
    ImportStatus.FAILED,
)


@with_config(CLOSED)
class ImportCreate(TypedDict, total=False):
    """A CSV file's text and, optionally, which column holds which field."""

    csv: Required[
        Annotated[
            str,
            Field(
                description="The file's text: a header line, then a row per payment (our template, "
                "or the Stripe Dashboard's payments export as it is)."
            ),
        ]
    ]
    filename: Annotated[str, Field(description="Shown with the import; default upload.csv.")]
    mapping: Annotated[
        dict[str, str],
        Field(
            description='Field → the file\'s column name, e.g. {"customer_name": "Customer Description"}; '
            "fields: " + ", ".join(TARGET_NAMES) + ". An empty name leaves a field out. Fields not "
            "given keep the mapping last confirmed for this header, or the one proposed."
        ),
    ]


CREATE_FIELDS = ImportCreate.__required_keys__ | ImportCreate.__optional_keys__


@with_config(CLOSED)
class ImportRow(TypedDict):
    """A row of the file (1 is the header) and what happened to it."""

    row: int
    ref: str
    reason: str


@with_config(CLOSED)
class CsvImportJson(TypedDict):
    """A CSV import and how far it got."""

    object: Annotated[str, Field(json_schema_extra={"const": "import"})]
    id: Annotated[int, Field(examples=[7])]
    filename: str
    status: Annotated[str, enum_of(STATUSES, "queued and running: the job is on it; done or failed.")]
    total_rows: int
    processed_rows: int
    imported_rows: int
    duplicate_rows: int
    invalid_rows: int
    skipped_rows: Annotated[int, Field(description="Rows whose status column says the payment did not fail.")]
    mapping: Annotated[dict[str, str] | None, Field(description="Field → normalised column name.")]
    problems: Annotated[list[ImportRow], Field(description="Rows not imported, with the reason.")]
    warnings: Annotated[
        list[ImportRow], Field(description="Rows imported without a detail that was unusable.")
    ]
    created_at: Timestamp
    finished_at: Timestamp | None


IMPORT_PATH = {"import_id": "The import's id."}


@with_config(CLOSED)
class ImportRecoveriesJson(TypedDict):
    """The bulk starts that start recoveries for an import's failures, as the rules decide."""

    object: Annotated[str, Field(json_schema_extra={"const": "import_recoveries"})]
    import_id: int
    transactions: Annotated[int, Field(description="Transactions sent to the bulk starts.")]
    bulk_starts: Annotated[list[int], Field(description="The bulk starts, up to 10,000 transactions each.")]


def import_json(csv_import: CsvImport) -> CsvImportJson:
    return {
        "object": "import",
        "id": csv_import.id,
        "filename": csv_import.filename,
        "status": csv_import.status,
        "total_rows": csv_import.total_rows,
        "processed_rows": csv_import.processed_rows,
        "imported_rows": csv_import.imported_rows,
        "duplicate_rows": csv_import.duplicate_rows,
        "invalid_rows": csv_import.invalid_rows,
        "skipped_rows": csv_import.skipped_rows,
        "mapping": csv_import.mapping,
        "problems": _rows(csv_import.problems),
        "warnings": _rows(csv_import.warnings),
        "created_at": iso(csv_import.created_at),
        "finished_at": iso(csv_import.finished_at),
    }


def _rows(stored: list[dict[str, Any]] | None) -> list[ImportRow]:
    return [ImportRow(row=p["row"], ref=p["ref"], reason=p["reason"]) for p in stored or ()]


def _invalid(fields: dict[str, str]) -> ApiError:
    return ApiError(422, "validation_error", "Some fields are not valid: " + ", ".join(fields) + ".", fields)


def _type_errors(body: dict[str, Any]) -> dict[str, str]:
    errors = {name: "Unknown field." for name in sorted(set(body) - CREATE_FIELDS)}
    if not isinstance(body.get("csv"), str):
        errors["csv"] = "Required: the file's text as a string."
    if "filename" in body and not isinstance(body["filename"], str):
        errors["filename"] = "Must be a string."
    mapping = body.get("mapping", {})
    if not isinstance(mapping, dict) or not all(isinstance(v, str) for v in mapping.values()):
        errors["mapping"] = 'Must be an object of field → column name, e.g. {"amount": "Amount"}.'
    return errors


@bp.post("")
@documented(
    summary="Import a CSV of failed payments",
    tag="Imports",
    description=(
        "Checks the file and imports it by the upload page's rules: a small file at once (the answer "
        "is `done` with its counts), a large one by the job (`queued`; read it back until `done`). "
        "Amounts in an `amount` column are written with the currency's decimals (50.00); a whole "
        "number there, in a currency with decimals, is refused row by row: name the column "
        "`amount_minor` if it holds whole numbers of the smallest unit (5000 for USD 50.00)."
    ),
    request=ImportCreate,
    response=CsvImportJson,
    status=201,
    headers={"Location": "The import's URL, /v1/imports/{id}."},
    request_example={
        "filename": "payments.csv",
        "csv": "id,Amount,Currency,Status,Customer Email\nch_1,50.00,usd,Failed,ann@example.com\n",
        "mapping": {"customer_name": ""},
    },
    errors={422: "The file cannot be read, or the mapping cannot be used; `fields` names each problem."},
)
@require_token_role(Role.OPERATOR)
def create() -> Any:
    limits = import_settings()
    # The file's text inside JSON: escaping can double it; the file itself is checked below.
    body = json_object(max_bytes=limits.max_bytes * 2 + API_MAX_BODY_BYTES)
    errors = _type_errors(body)
    if errors:
        raise _invalid(errors)
    csv_import = services.create_import(
        db.session,
        token_actor(),
        body.get("filename") or "upload.csv",
        body["csv"].encode("utf-8", "surrogatepass"),
        limits.max_bytes,
        mapping=dict(body.get("mapping", {})),
    )
    # How it went is in the answer: done, failed (with its error), or queued (a queue
    # that could not be reached leaves it so: staff can press Start again on its page).
    start_import(db.session, csv_import, limits)
    response = jsonify(import_json(csv_import))
    response.status_code = 201
    response.headers["Location"] = url_for("imports_api.get", import_id=csv_import.id)
    return response


@bp.get("/<int:import_id>")
@documented(
    summary="Read an import with its counts, refused rows and warnings",
    tag="Imports",
    response=CsvImportJson,
    path_params=IMPORT_PATH,
    errors={404: "No such import in the token's organization."},
)
@require_token_role(Role.VIEWER)
def get(import_id: int) -> Any:
    return jsonify(import_json(_org_import(import_id)))


def _org_import(import_id: int) -> CsvImport:
    csv_import = db.session.scalar(
        select(CsvImport).where(
            CsvImport.id == import_id, CsvImport.organization_id == current_token().organization_id
        )
    )
    if csv_import is None:
        raise ApiError(404, "not_found", "Import not found")
    return csv_import


@bp.post("/<int:import_id>/start-recoveries")
@documented(
    summary="Start recoveries for an import's failed transactions",
    tag="Imports",
    description=(
        "Every transaction the import added that is still failed, never started, and not held or "
        "marked by a rule goes to a bulk start; the organization's recovery rules choose each one's "
        "campaign (or hold it, or say not to recover it), as for any start without a campaign. "
        "Asking again starts only what is still waiting."
    ),
    response=ImportRecoveriesJson,
    status=202,
    path_params=IMPORT_PATH,
    errors={
        404: "No such import in the token's organization.",
        409: "The import is not done, or none of its transactions is waiting for a recovery.",
    },
)
@require_token_role(Role.OPERATOR)
def start_import_recoveries(import_id: int) -> Any:
    csv_import = _org_import(import_id)
    starts = start_recoveries(db.session, token_actor(), csv_import)
    response = jsonify(
        ImportRecoveriesJson(
            object="import_recoveries",
            import_id=csv_import.id,
            transactions=sum(start.total for start in starts),
            bulk_starts=[start.id for start in starts],
        )
    )
    response.status_code = 202
    return response
