"""Decode Stripe's form bodies (`line_items[0][price_data][currency]=usd`) into nested values.

stripe-python flattens every parameter into bracketed keys; lists are always
written with explicit indices (`expand[0]=...`). Values stay strings: the
endpoints convert the ones Stripe's API types as integers or booleans.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any

from stripe_sandbox.errors import StripeError, invalid, unknown

_KEY = re.compile(r"^([^\[\]]+)((?:\[[^\[\]]*\])*)$")
_PART = re.compile(r"\[([^\[\]]*)\]")
# Stripe's own ceiling for amounts in the smallest currency unit.
MAX_AMOUNT = 99_999_999


class FormError(StripeError):
    """A body whose keys contradict each other (`a=1&a[b]=2`) or cannot be parsed."""

    def __init__(self, key: str) -> None:
        super().__init__(400, f"Invalid parameter: {key}", code="parameter_invalid", param=key)


def _split(key: str) -> list[str]:
    match = _KEY.match(key)
    if not match:
        raise FormError(key)
    return [match.group(1), *_PART.findall(match.group(2))]


def decode_form(pairs: Iterable[tuple[str, str]]) -> dict[str, Any]:
    """Turn `(key, value)` pairs into nested dicts; all-digit keys of one level become a list."""
    root: dict[str, Any] = {}
    for key, value in pairs:
        parts = _split(key)
        node = root
        for depth, part in enumerate(parts):
            last = depth == len(parts) - 1
            if part == "":  # `expand[]=a&expand[]=b`: append in order
                part = str(len(node))
            if last:
                if isinstance(node.get(part), dict):
                    raise FormError(key)
                node[part] = value
            else:
                child = node.setdefault(part, {})
                if not isinstance(child, dict):
                    raise FormError(key)
                node = child
    return _listify(root)  # type: ignore[no-any-return]


def _listify(value: Any) -> Any:
    if not isinstance(value, dict):
        return value
    items = {k: _listify(v) for k, v in value.items()}
    if items and all(k.isdigit() for k in items):
        return [items[k] for k in sorted(items, key=int)]
    return items


def as_mapping(value: Any, param: str) -> dict[str, Any]:
    """Read a hash parameter; `metadata[0]=x` decodes as a list, so turn it back into a hash."""
    if value is None or value == "":
        return {}
    if isinstance(value, list):
        return {str(i): v for i, v in enumerate(value)}
    if not isinstance(value, dict):
        raise invalid(param, f"Invalid object: {param} must be a hash", code="parameter_invalid")
    return value


def as_list(value: Any, param: str) -> list[Any]:
    if value is None or value == "":
        return []
    if isinstance(value, dict):
        raise invalid(param, f"Invalid array: {param} must be an array", code="parameter_invalid")
    return value if isinstance(value, list) else [value]


def as_int(value: Any, param: str, *, minimum: int | None = 0, maximum: int | None = None) -> int:
    """Parse an integer parameter the way Stripe checks it."""
    if not isinstance(value, str) or not re.fullmatch(r"-?[0-9]+", value.strip()):
        raise invalid(param, f"Invalid integer: {value}", code="parameter_invalid_integer")
    number = int(value)
    if minimum is not None and number < minimum:
        raise invalid(
            param, f"This value must be greater than or equal to {minimum}.", code="parameter_invalid_integer"
        )
    if maximum is not None and number > maximum:
        raise invalid(
            param, f"This value must be less than or equal to {maximum}.", code="parameter_invalid_integer"
        )
    return number


def as_bool(value: Any, param: str) -> bool:
    if value in ("true", "false"):
        return bool(value == "true")
    raise invalid(param, f"Invalid boolean: {value}", code="parameter_invalid_boolean")


def as_str(value: Any, param: str, *, max_length: int = 5000) -> str:
    if not isinstance(value, str):
        raise invalid(param, f"Invalid string: {param} must be a string", code="parameter_invalid_string")
    if len(value) > max_length:
        raise invalid(
            param,
            f"Invalid string: {value[:20]}...; must be at most {max_length} characters",
            code="parameter_invalid_string",
        )
    return value


def metadata(value: Any, param: str = "metadata") -> dict[str, str]:
    """Validate a metadata hash with Stripe's limits; an empty value unsets a key."""
    result: dict[str, str] = {}
    for key, item in as_mapping(value, param).items():
        if len(key) > 40:
            raise invalid(f"{param}[{key}]", "Metadata keys can have up to 40 characters.")
        if not isinstance(item, str):
            raise invalid(f"{param}[{key}]", "Metadata values must be strings.")
        if len(item) > 500:
            raise invalid(f"{param}[{key}]", "Metadata values can have up to 500 characters.")
        if item != "":
            result[key] = item
    if len(result) > 50:
        raise invalid(param, "You can have up to 50 metadata keys.")
    return result


def check_known(params: Mapping[str, Any], allowed: Iterable[str]) -> None:
    """Refuse a top-level parameter Stripe would not know, so a typo fails here as it would live."""
    known = set(allowed)
    for name in params:
        if name not in known:
            raise unknown(name)
