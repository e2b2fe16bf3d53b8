"""Which column of a file holds which field: proposed, checked, and remembered per organization.

A mapping is {target field: column name}, column names normalised (trimmed,
lower case, inner spaces collapsed) so that `Customer Email` and
`customer email ` are one column. Columns no field is mapped to are ignored.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from sqlalchemy import select

from recovery.models import ImportMapping, utcnow
from recovery.models.base import DbSession
from recovery.refusals import Refused


@dataclass(frozen=True)
class Target:
    name: str
    label: str
    hint: str = ""


TARGETS = (
    Target("transaction_ref", "Transaction reference", "Unique per payment, e.g. Stripe's id."),
    Target("amount", "Amount", "Written with the currency's decimals: 50.00, $1,234.50, ¥5000."),
    Target("amount_minor", "Amount in the smallest unit", "Whole numbers: 5000 for USD 50.00."),
    Target("currency", "Currency", "ISO code such as usd, eur, jpy."),
    Target(
        "status", "Payment status", "Only rows that say Failed are imported; paid, refunded… are skipped."
    ),
    Target("customer_name", "Customer name"),
    Target("customer_email", "Customer email"),
    Target("customer_phone", "Customer phone"),
    Target("customer_country", "Customer country", "Two letters, e.g. US, GB."),
    Target("customer_locale", "Customer language", "e.g. en, de-DE."),
    Target("failure_code", "Failure code", "e.g. insufficient_funds (Stripe's decline reason)."),
    Target("failure_message", "Failure message"),
    Target("failed_at", "Failed at", "A date and time; without a zone it is taken as UTC."),
    Target("metadata", "Metadata (JSON)"),
)
TARGET_NAMES = tuple(t.name for t in TARGETS)
REQUIRED = ("transaction_ref", "currency")  # and one of amount / amount_minor

# Names each field goes by: our template's first, then the Stripe Dashboard's
# payments export (its "Created" column has had two names). Compared normalised.
ALIASES: dict[str, tuple[str, ...]] = {
    "transaction_ref": ("transaction_ref", "id", "reference", "payment id", "paymentintent id"),
    "amount": ("amount",),
    "amount_minor": ("amount_minor",),
    "currency": ("currency",),
    "status": ("status",),
    "customer_name": ("customer_name", "customer name", "card name", "name"),
    "customer_email": ("customer_email", "customer email", "email", "receipt email"),
    "customer_phone": ("customer_phone", "customer phone", "phone"),
    "customer_country": ("customer_country", "customer country", "card address country", "country"),
    "customer_locale": ("customer_locale", "customer locale", "locale", "language"),
    "failure_code": ("failure_code", "decline reason", "failure code"),
    "failure_message": ("failure_message", "seller message", "failure message"),
    "failed_at": ("failed_at", "created (utc)", "created date (utc)", "created", "date"),
    "metadata": ("metadata",),
}


class MappingRefused(Refused, ValueError):
    """The mapping cannot be used; `errors` says why per field (empty key: the mapping as a whole)."""

    def __init__(self, errors: dict[str, str]) -> None:
        super().__init__(" ".join(errors.values()))
        self.errors = errors

    @property
    def fields(self) -> dict[str, str] | None:
        """The API's names: `mapping.<field>`."""
        return {f"mapping.{field}": message for field, message in self.errors.items()}


def normalise(name: str) -> str:
    return " ".join(name.split()).lower()


def fingerprint(header: list[str]) -> str:
    """Same header (order, names as normalised) → same fingerprint."""
    return hashlib.sha256("\x1f".join(normalise(n) for n in header).encode()).hexdigest()


def propose(header: list[str]) -> dict[str, str]:
    """A mapping by the names we know; the first matching alias wins, each column used once."""
    columns = [normalise(n) for n in header]
    taken: set[str] = set()
    mapping: dict[str, str] = {}
    for target in TARGET_NAMES:
        for alias in ALIASES[target]:
            if alias in columns and alias not in taken:
                mapping[target] = alias
                taken.add(alias)
                break
    return mapping


def check(header: list[str], chosen: dict[str, str]) -> dict[str, str]:
    """Return the mapping without its empty choices, or raise MappingRefused naming each problem."""
    columns = {normalise(n) for n in header if n.strip()}
    mapping = {k: normalise(v) for k, v in chosen.items() if v and v.strip()}
    errors: dict[str, str] = {}
    for target, column in mapping.items():
        if target not in TARGET_NAMES:
            errors[target] = f"{target!r} is not a field we import; choose from {', '.join(TARGET_NAMES)}."
        elif column not in columns:
            errors[target] = f"The file has no column {column!r}."
    used: dict[str, str] = {}
    for target, column in mapping.items():
        if column in used and target not in errors:
            errors[target] = (
                f"The column {column!r} is already chosen for {used[column]}; choose each column once."
            )
        used.setdefault(column, target)
    for target in REQUIRED:
        if target not in mapping:
            errors.setdefault(target, "Choose the column that holds this; it is required.")
    if "amount" in mapping and "amount_minor" in mapping:
        errors.setdefault("amount_minor", "Choose either Amount or Amount in the smallest unit, not both.")
    elif "amount" not in mapping and "amount_minor" not in mapping:
        errors.setdefault(
            "amount",
            "Choose the column that holds the amount (or, if it is in the smallest unit, "
            "map it to Amount in the smallest unit).",
        )
    if errors:
        raise MappingRefused(errors)
    return mapping


def remembered(session: DbSession, organization_id: int, header: list[str]) -> dict[str, str] | None:
    """The mapping this organization last confirmed for this header, if it still fits it."""
    saved = session.scalar(
        select(ImportMapping).where(
            ImportMapping.organization_id == organization_id,
            ImportMapping.fingerprint == fingerprint(header),
        )
    )
    if saved is None:
        return None
    try:
        return check(header, saved.mapping)
    except MappingRefused:
        return None


def remember(session: DbSession, organization_id: int, header: list[str], mapping: dict[str, str]) -> None:
    """Save the confirmed mapping for this header; the newest confirmation wins."""
    key = fingerprint(header)
    saved = session.scalar(
        select(ImportMapping).where(
            ImportMapping.organization_id == organization_id, ImportMapping.fingerprint == key
        )
    )
    if saved is None:
        session.add(ImportMapping(organization_id=organization_id, fingerprint=key, mapping=dict(mapping)))
    else:
        saved.mapping = dict(mapping)
        saved.updated_at = utcnow()


def initial(session: DbSession, organization_id: int, header: list[str]) -> tuple[dict[str, str], bool]:
    """The mapping to show first, and whether it is the remembered one."""
    saved = remembered(session, organization_id, header)
    if saved is not None:
        return saved, True
    return propose(header), False
