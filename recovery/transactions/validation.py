"""One set of rules for a transaction's fields, shared by the form, CSV and API.

`clean_transaction` takes raw strings (as a form or CSV cell gives them) and
returns either clean values ready for the database or a message per field.
"""

from __future__ import annotations

import json
import math
import re
import unicodedata
from dataclasses import dataclass, field
from datetime import UTC, datetime, time, timedelta
from functools import cache, lru_cache
from typing import Any

import email_validator
import phonenumbers
from babel import Locale, UnknownLocaleError
from babel.core import get_global
from email_validator import EmailNotValidError, validate_email

from recovery import money
from recovery.models.base import utcnow

MAX_LENGTHS = {
    "transaction_ref": 64,
    "failure_code": 64,
    "failure_message": 500,
    "customer_name": 200,
    "customer_email": 254,
}
_REF = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:#-]*$")
_CODE = re.compile(r"^[a-z0-9_]+$")
# C0, DEL and C1 (e.g. \x9b, a terminal CSI), and lone surrogates (JSON's "\ud800"),
# which no database encoding can store.
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\ud800-\udfff]")
_CONTROL_BUT_LINES = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\ud800-\udfff]")  # free text: lines, tabs
MULTILINE_FIELDS = frozenset({"failure_message"})
# Text that reads otherwise than it is: the bidirectional embeddings, overrides
# and isolates (U+202A-U+202E, U+2066-U+2069) reorder what follows them
# ("abc\u202egnp.exe" shows as "abcexe.png"), and U+200B, U+2060 and U+FEFF are
# invisible. Refused in every name, reference, message and metadata entry. The
# marks U+200E/U+200F (LRM, RLM) stay allowed: they move no letter, only
# neutrals such as a closing bracket, and Hebrew and Arabic text needs them.
_DECEPTIVE = re.compile("[\u202a-\u202e\u2066-\u2069\u200b\u2060\ufeff]")
# ZWNJ (U+200C) and ZWJ (U+200D) are part of how some words are spelled: ZWNJ in
# Persian (می\u200cخواهم), both in Indic conjuncts, ZWJ inside emoji sequences
# (👩\u200d💻). So they are allowed in names, failure messages and metadata values
# where they do that job: between two non-ASCII letters, marks or symbols. Anywhere
# else (next to ASCII or a space, at either end) they only hide a seam, as in
# "pay\u200dpal"; and references, emails and metadata keys never need them.
_JOINERS = re.compile("[\u200c\u200d]")
JOINER_FIELDS = frozenset({"customer_name", "failure_message"})
_JOINABLE = frozenset({"Lu", "Ll", "Lt", "Lm", "Lo", "Mn", "Mc", "Me", "So", "Sk"})
METADATA_MAX_BYTES = 4096
# JavaScript's Number.MAX_SAFE_INTEGER: a larger integer (or a float beyond it)
# comes back changed in most JSON clients, so metadata numbers stay within it.
METADATA_MAX_NUMBER = 2**53 - 1
DATE_ONLY_AHEAD = timedelta(hours=14)  # UTC+14 (Kiribati) is the furthest ahead
# An everyday address that email-validator always accepts, and whose normalized
# form lower-cased is the address lower-cased: ASCII atoms joined by single
# . _ + - before the @; after it, ASCII labels that neither start nor end with
# a hyphen and a letters-only top-level domain. Anything else goes through
# email-validator itself (tests compare the two on many near misses).
_PLAIN_EMAIL = re.compile(
    r"(?P<local>[A-Za-z0-9]+(?:[._+-][A-Za-z0-9]+)*)@"
    r"(?P<domain>(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)+[A-Za-z]{2,63})",
    re.ASCII,
)
# Validating a CSV calls these with the same emails, phones and locales again
# and again; their verdicts depend on the text alone, so they are remembered.
_VERDICTS = 32_768

CONTACT_FIELDS = ("customer_name", "customer_email", "customer_phone", "customer_country", "customer_locale")


@dataclass
class Cleaned:
    values: dict[str, Any] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.errors

    def first_error(self) -> str:
        name, message = next(iter(self.errors.items()))
        return f"{name}: {message}"


@cache
def _territories() -> frozenset[str]:
    """Current two-letter regions: no retired code (SU, YU, DD...), no EU or ZZ (unknown)."""
    retired = get_global("territory_aliases")
    return frozenset(
        code
        for code in get_global("territory_currencies")
        if len(code) == 2 and code not in retired and code not in ("EU", "ZZ")
    )


def has_control_characters(text: str) -> bool:
    """Whether `text` holds characters we refuse everywhere, lone surrogates among them.

    A database cannot even be asked about such text: the driver fails to encode it.
    """
    return _CONTROL.search(text) is not None


def _joins(before: str, after: str) -> bool:
    """Whether a ZWJ/ZWNJ between these two characters does a script's or an emoji's job."""
    return all(
        char != "" and not char.isascii() and unicodedata.category(char) in _JOINABLE
        for char in (before, after)
    )


def deceptive_character(text: str, *, joiners: bool = False) -> str | None:
    """The first character that makes `text` display otherwise than it is, or None.

    `joiners`: ZWJ and ZWNJ are allowed between non-ASCII letters, marks and symbols (names).
    """
    match = _DECEPTIVE.search(text)
    if match is not None:
        return match.group()
    for found in _JOINERS.finditer(text):
        at = found.start()
        if not joiners or not _joins(text[at - 1 : at] if at else "", text[at + 1 : at + 2]):
            return found.group()
    return None


def deceptive_message(char: str) -> str:
    """Why `char` (found by deceptive_character) is refused, naming it."""
    return (
        f"Must not contain invisible or text-direction characters (found U+{ord(char):04X} "
        f"{unicodedata.name(char, '')}): they make the text display otherwise than it is."
    )


def strip_deceptive(text: str, *, joiners: bool = True) -> str:
    """`text` without what `deceptive_character` refuses: for data we cannot refuse (Stripe's)."""
    text = _DECEPTIVE.sub("", text)
    if _JOINERS.search(text) is None:
        return text
    kept: list[str] = []
    for at, char in enumerate(text):
        if char in "\u200c\u200d" and not (joiners and kept and _joins(kept[-1], text[at + 1 : at + 2])):
            continue
        kept.append(char)
    return "".join(kept)


def clean_text(raw: Any, name: str, *, required: bool = False) -> str | None:
    text = "" if raw is None else str(raw).strip()
    if not text:
        if required:
            raise ValueError("This field is required.")
        return None
    multiline = name in MULTILINE_FIELDS
    if multiline:
        # Browsers send a textarea's line breaks as CRLF, and spreadsheets write them so too.
        text = text.replace("\r\n", "\n").replace("\r", "\n")
    if (_CONTROL_BUT_LINES if multiline else _CONTROL).search(text):
        raise ValueError("Must not contain control characters.")
    char = deceptive_character(text, joiners=name in JOINER_FIELDS)
    if char is not None:
        raise ValueError(deceptive_message(char))
    limit = MAX_LENGTHS[name]
    if len(text) > limit:
        raise ValueError(f"At most {limit} characters (got {len(text)}).")
    return text


def clean_ref(raw: Any) -> str:
    ref = clean_text(raw, "transaction_ref", required=True)
    assert ref is not None
    if not _REF.match(ref):
        raise ValueError("Use letters, digits and . _ : # - only, starting with a letter or digit.")
    return ref


def clean_email(raw: Any) -> str | None:
    text = clean_text(raw, "customer_email")
    if text is None:
        return None
    if _is_plain_email(text):
        return text.lower()
    return _verdict(_email_verdict(text))


def _is_plain_email(text: str) -> bool:
    match = _PLAIN_EMAIL.fullmatch(text)
    if match is None:
        return False
    local, domain = match.group("local"), match.group("domain").lower()
    return (
        len(local) <= 64
        and len(domain) <= 253
        and "--" not in domain  # "ab--" labels are reserved, "xn--" ones need IDNA
        and domain.rpartition(".")[2] not in email_validator.SPECIAL_USE_DOMAIN_NAMES
    )


@lru_cache(maxsize=_VERDICTS)
def _email_verdict(text: str) -> tuple[str | None, str]:
    try:
        result = validate_email(text, check_deliverability=False)
    except EmailNotValidError as error:
        return None, str(error)
    return result.normalized.lower(), ""


def _verdict(verdict: tuple[str | None, str]) -> str | None:
    """The cleaned value of a remembered verdict, or its error raised again."""
    value, error = verdict
    if error:
        raise ValueError(error)
    return value


def clean_country(raw: Any) -> str | None:
    text = ("" if raw is None else str(raw)).strip().upper()
    if not text:
        return None
    if text not in _territories():
        raise ValueError(f"{raw!r} is not an ISO 3166 two-letter country code (e.g. US, DE).")
    return text


def clean_phone(raw: Any, country: str | None) -> str | None:
    text = ("" if raw is None else str(raw)).strip()
    if not text:
        return None
    if len(text) > 32:
        raise ValueError("Phone number is too long.")
    return _verdict(_phone_verdict(text, country))


@lru_cache(maxsize=_VERDICTS)
def _phone_verdict(text: str, country: str | None) -> tuple[str | None, str]:
    try:
        number = phonenumbers.parse(text, country)
    except phonenumbers.NumberParseException:
        hint = "" if country else " Give it in international form (+44 20 7946 0958) or set the country."
        return None, f"{text!r} is not a phone number.{hint}"
    if not phonenumbers.is_valid_number(number):
        return None, f"{text!r} is not a valid phone number."
    return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164), ""


def clean_locale(raw: Any) -> str | None:
    text = ("" if raw is None else str(raw)).strip()
    if not text:
        return None
    return _verdict(_locale_verdict(text))


@lru_cache(maxsize=1024)
def _locale_verdict(text: str) -> tuple[str | None, str]:
    try:
        locale = Locale.parse(text.replace("-", "_"))
    except (ValueError, UnknownLocaleError):
        return None, f"{text!r} is not a known locale (e.g. en, en-US, de-DE)."
    return "-".join(part for part in (locale.language, locale.territory) if part), ""


def clean_failure_code(raw: Any) -> str | None:
    code = clean_text(raw, "failure_code")
    if code is None:
        return None
    code = code.lower()
    if not _CODE.match(code):
        raise ValueError("Use lower-case letters, digits and underscores (e.g. card_declined).")
    return code


def clean_datetime(raw: Any) -> datetime | None:
    text = ("" if raw is None else str(raw)).strip()
    if not text:
        return None
    try:
        value = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(
            f"{text!r} is not a date; use ISO 8601 (2025-01-19 or 2025-01-19T10:00:00Z)."
        ) from None
    if value.year < 2000:  # before converting: an offset at year 1 or 9999 overflows
        raise ValueError("The failure date is implausibly old.")
    if value.year > utcnow().year + 1:
        raise ValueError("The failure date cannot be in the future.")
    date_only = len(text) == 10
    if date_only:
        value = datetime.combine(value.date(), time(), tzinfo=UTC)
    elif value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    value = value.astimezone(UTC)
    # A date alone is the merchant's own day, which east of UTC starts up to 14 hours early.
    if value > utcnow() + (DATE_ONLY_AHEAD if date_only else timedelta()):
        raise ValueError("The failure date cannot be in the future.")
    return value


def clean_metadata(raw: Any) -> dict[str, Any]:
    if raw is None or raw == "":
        return {}
    if isinstance(raw, str):
        try:
            raw = json.loads(raw)
        except json.JSONDecodeError:
            raise ValueError('Metadata must be a JSON object, e.g. {"order_id": "ORD-123"}.') from None
        except RecursionError:
            # json.loads accepts nesting until Python's stack runs out; "[" * 3000 does.
            raise ValueError("Metadata is nested too deeply: use a flat JSON object.") from None
    if not isinstance(raw, dict):
        raise ValueError('Metadata must be a JSON object, e.g. {"order_id": "ORD-123"}.')
    for key, value in raw.items():
        problem = _metadata_key_problem(str(key)) or _metadata_value_problem(value)
        if problem:
            raise ValueError(f"Metadata {_shown_key(str(key))}: {problem}")
    if len(json.dumps(raw)) > METADATA_MAX_BYTES:
        raise ValueError(f"Metadata is larger than {METADATA_MAX_BYTES} bytes.")
    return {str(k): v for k, v in raw.items()}


def _shown_key(key: str) -> str:
    """The key as an error message may quote it: escaped, and cut short."""
    shown = json.dumps(key)
    return shown if len(shown) <= 42 else shown[:40] + '…"'


def _uncapitalized(message: str) -> str:
    return message[:1].lower() + message[1:]


def _metadata_key_problem(key: str) -> str | None:
    if has_control_characters(key):
        return "keys must not contain control characters."
    char = deceptive_character(key)
    return None if char is None else "the key " + _uncapitalized(deceptive_message(char))


def _metadata_value_problem(value: Any) -> str | None:
    """What is wrong with one metadata value: strings, bounded finite numbers and booleans only."""
    if value is None:
        return "null is not a value; leave the key out, or send a string, number or boolean."
    if isinstance(value, bool):
        return None
    if isinstance(value, str):
        if has_control_characters(value):
            return "values must not contain control characters."
        char = deceptive_character(value, joiners=True)
        return None if char is None else "the value " + _uncapitalized(deceptive_message(char))
    if isinstance(value, int | float):
        if isinstance(value, float) and not math.isfinite(value):
            # PostgreSQL's json type refuses NaN and Infinity: the insert would fail.
            return "numbers must be finite (no NaN or Infinity)."
        if abs(value) > METADATA_MAX_NUMBER:
            return (
                f"numbers must lie within ±{METADATA_MAX_NUMBER} (2^53 - 1), which every JSON "
                "client reads exactly; send a larger one as a string."
            )
        return None
    return "values must be strings, numbers or booleans (not objects or arrays)."


def clean_contact(raw: dict[str, Any], result: Cleaned) -> None:
    """Clean the customer's contact fields into `result`."""
    steps = (
        ("customer_name", lambda: clean_text(raw.get("customer_name"), "customer_name")),
        ("customer_email", lambda: clean_email(raw.get("customer_email"))),
        ("customer_country", lambda: clean_country(raw.get("customer_country"))),
        (
            "customer_phone",
            lambda: clean_phone(raw.get("customer_phone"), result.values.get("customer_country")),
        ),
        ("customer_locale", lambda: clean_locale(raw.get("customer_locale"))),
    )
    _run(steps, result)


def clean_transaction(raw: dict[str, Any], *, major_units: bool = False) -> Cleaned:
    """Validate a new transaction's fields; unknown keys are ignored.

    `major_units`: the amount is in major units whatever its form (staff form).
    """
    result = Cleaned()

    def currency() -> str:
        return money.normalize_currency(raw.get("currency"))

    def amount() -> int:
        if "currency" not in result.values:
            raise ValueError("Set a valid currency first.")
        return money.parse_amount(raw.get("amount"), result.values["currency"], major=major_units)

    steps = (
        ("transaction_ref", lambda: clean_ref(raw.get("transaction_ref"))),
        ("currency", currency),
        ("amount", amount),
        ("failure_code", lambda: clean_failure_code(raw.get("failure_code"))),
        ("failure_message", lambda: clean_text(raw.get("failure_message"), "failure_message")),
        ("failed_at", lambda: clean_datetime(raw.get("failed_at"))),
        ("metadata", lambda: clean_metadata(raw.get("metadata"))),
    )
    _run(steps, result)
    clean_contact(raw, result)
    if result.values.get("failed_at") is None:
        result.values.pop("failed_at", None)
    return result


def _run(steps: Any, result: Cleaned) -> None:
    for name, step in steps:
        try:
            result.values[name] = step()
        except ValueError as error:  # AmountError is a ValueError
            result.errors[name] = str(error)
