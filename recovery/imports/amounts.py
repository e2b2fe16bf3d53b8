"""How a CSV cell becomes an amount: one rule a merchant cannot get wrong.

A column mapped to `amount` holds amounts as people write them, in the
currency's own units: `50.00`, `$1,234.50`, `¥5000`, `BHD 5.000`. A column
mapped to `amount_minor` holds whole numbers of the currency's smallest unit
(`5000` for USD 50.00), as Stripe and our JSON API count.

Files written for the old rule put `5000` in `amount` and meant USD 50.00. So
in `amount`, a bare whole number (digits only: no decimal point, no currency
sign or code, no thousands separator) is refused when the currency has
decimals: it could be either, and guessing would be a hundredfold mistake.
Where the currency has no decimals (JPY, KRW...) both readings agree and it is
taken. Anything that shows it was written for people (a decimal point, `$`,
`USD`, `1,234`) is taken in the currency's units.
"""

from __future__ import annotations

import re
import unicodedata

from recovery import money

# Digits with optional comma thousands groups, then optional decimals.
_WRITTEN = re.compile(r"(?P<whole>[0-9]{1,3}(?:,[0-9]{3})+|[0-9]+)(?:\.(?P<fraction>[0-9]*))?", re.ASCII)
_AFFIXED = re.compile(r"(?P<before>[^0-9.,]*?)\s*(?P<number>[0-9][0-9.,]*|\.[0-9]+)\s*(?P<after>[^0-9.,]*)")
_WHOLE = re.compile(r"[0-9]+", re.ASCII)


def _shown(minor: int, currency: str) -> str:
    """USD 5,000.00: the code and the number, so no symbol can be misread."""
    places = money.exponent(currency)
    return f"{currency.upper()} {money.to_major(minor, currency):,.{places}f}"


def ambiguous_message(text: str, currency: str) -> str:
    """Row-level refusal of a bare whole number in `amount` (the issue's sentence)."""
    whole = int(text)
    as_major = whole * 10 ** money.exponent(currency)
    places = money.exponent(currency)
    return (
        f"{text} has no decimal point. Write {whole}.{'0' * places} for {_shown(as_major, currency)}, "
        f"or name the column amount_minor if {text} means {_shown(whole, currency)}."
    )


def _affix_ok(affix: str, currency: str) -> bool:
    """A currency code, a sign ($, ¥, €) or a sign with a country prefix (US$, CA$, R$)."""
    if not affix:
        return True
    if affix.upper() == currency.upper():
        return True
    letters = affix.rstrip("".join(c for c in affix if unicodedata.category(c) == "Sc"))
    signs = affix[len(letters) :]
    return bool(signs) and all(unicodedata.category(c) == "Sc" for c in signs) and len(letters) <= 2


def parse_written(raw: str, currency: str) -> int:
    """Return the amount of a cell mapped to `amount`, in the smallest unit, or raise AmountError."""
    text = (raw or "").strip().replace("\u00a0", " ")
    if not text:
        raise money.AmountError("Amount is required.")
    if text.startswith("-") or text.startswith("(") or "-" in text:
        raise money.AmountError(f"{raw!r} is negative; a failed payment's amount is greater than zero.")
    affixed = _AFFIXED.fullmatch(text)
    if affixed is None:
        raise money.AmountError(f"{raw!r} is not an amount; write it like 50.00 or $1,234.50.")
    before, number, after = (
        affixed.group("before").strip(),
        affixed.group("number"),
        affixed.group("after").strip(),
    )
    for affix in (before, after):
        if not _affix_ok(affix, currency):
            if len(affix) == 3 and affix.isalpha():
                raise money.AmountError(
                    f"{raw!r} says {affix.upper()} but the row's currency is {currency.upper()}."
                )
            raise money.AmountError(f"{raw!r} is not an amount; write it like 50.00 or $1,234.50.")
    written = _WRITTEN.fullmatch(number)
    if written is None:
        raise money.AmountError(
            f"{raw!r} is not an amount: use a point for decimals and commas only between "
            "thousands (1,234.50)."
        )
    whole, fraction = written.group("whole").replace(",", ""), written.group("fraction")
    bare = fraction is None and not before and not after and "," not in number
    if bare and money.exponent(currency) > 0:
        raise money.AmountError(ambiguous_message(whole, currency))
    decimal = whole + ("." + fraction if fraction else "")
    return money.parse_amount(decimal, currency, major=True)


def parse_minor(raw: str, currency: str) -> int:
    """Return the amount of a cell mapped to `amount_minor`: a whole number, or raise AmountError."""
    text = (raw or "").strip()
    if not text:
        raise money.AmountError("Amount is required.")
    if not _WHOLE.fullmatch(text):
        raise money.AmountError(
            f"{raw!r} is not a whole number. The amount_minor column takes whole numbers of the "
            f"currency's smallest unit (5000 for {_shown(5000, currency)}); "
            "map the column to amount if it is written with decimals."
        )
    return money.parse_amount(int(text.lstrip("0") or "0"), currency)
