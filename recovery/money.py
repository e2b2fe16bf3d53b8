"""Currencies and amounts: minor units in, the currency's own format out.

Exponents follow Stripe's lists (zero-decimal and three-decimal currencies);
every other currency has two decimals. Formatting uses Babel's CLDR data.
"""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass
from decimal import Decimal
from functools import cache

from babel import Locale, UnknownLocaleError
from babel.numbers import (
    NumberPattern,
    format_currency,
    get_currency_symbol,
    get_decimal_symbol,
    get_group_symbol,
    list_currencies,
)

# Stripe's currency rules, from https://docs.stripe.com/currencies ("Zero-decimal
# currencies", "Special cases", "Minimum and maximum charge amounts").
# fmt: off
ZERO_DECIMAL = frozenset({
    "bif", "clp", "djf", "gnf", "jpy", "kmf", "krw", "mga",
    "pyg", "rwf", "vnd", "vuv", "xaf", "xof", "xpf",
})
# fmt: on
THREE_DECIMAL = frozenset({"bhd", "jod", "kwd", "omr", "tnd"})
# "Special cases": ISK and UGX became zero-decimal, but Stripe keeps them two-decimal
# for backward compatibility, with the decimals always 00 (5 ISK is `500`): counted
# in hundredths, charged only in whole units. (HUF and TWD are zero-decimal for
# payouts only; charges take ordinary two-decimal amounts, so no rule here.)
WHOLE_UNITS_ONLY = frozenset({"isk", "ugx"})
# Stripe's minimum charge per currency, in minor units, from its table (the
# minimum follows the account's settlement currency; we cannot tell that, so the
# charge currency's own row is used). A currency without a row has no minimum of
# its own at Stripe: the charge must convert to the settlement currency's, which
# only Stripe can judge, so we refuse nothing there and show Stripe's refusal.
# fmt: off
MINIMUM_CHARGE = {
    "usd": 50, "aed": 200, "ars": 50, "aud": 50, "brl": 50, "cad": 50, "chf": 50,
    "cop": 50, "czk": 1500, "dkk": 250, "eur": 50, "gbp": 30, "hkd": 400,
    "huf": 17500, "idr": 50, "ils": 50, "inr": 50, "jpy": 50, "krw": 50,
    "mxn": 1000, "myr": 200, "nok": 300, "nzd": 50, "php": 50, "pln": 200,
    "ron": 200, "rub": 50, "sek": 300, "sgd": 50, "thb": 1000, "zar": 50,
}
# fmt: on
# The currencies Stripe charges cards in (its "presentment currencies"). ISO 4217
# and CLDR know ~300 codes, withdrawn ones (dem, vef) and non-money ones (xxx,
# xau) included: a transaction in one of those could never be collected, and
# Stripe would only say so at the first checkout, long after the import.
# (The sandbox keeps its own copy: it plays Stripe, and must not share our beliefs.)
_STRIPE_CURRENCY_LIST = """
usd aed afn all amd ang aoa ars aud awg azn bam bbd bdt bgn bhd bif bmd bnd bob brl bsd bwp byn bzd
cad cdf chf clp cny cop crc cve czk djf dkk dop dzd egp etb eur fjd fkp gbp gel gip gmd gnf gtq gyd
hkd hnl htg huf idr ils inr isk jmd jod jpy kes kgs khr kmf krw kwd kyd kzt lak lbp lkr lrd lsl mad
mdl mga mkd mmk mnt mop mur mvr mwk mxn myr mzn nad ngn nio nok npr nzd omr pab pen pgk php pkr pln
pyg qar ron rsd rub rwf sar sbd scr sek sgd shp sle sos srd std szl thb tjs tnd top try ttd twd tzs
uah ugx uyu uzs vnd vuv wst xaf xcd xof xpf yer zar zmw
"""
STRIPE_CURRENCIES = frozenset(_STRIPE_CURRENCY_LIST.split())

# Stripe's largest amount is 99,999,999 in most currencies' minor units; we keep
# a roomier bound that still catches a misplaced decimal separator.
MAX_AMOUNT = 999_999_999_99


# ASCII digits only: `\d` would also take "١٢" or fullwidth "１２".
_NUMBER = re.compile(r"-?([0-9]+)(?:\.([0-9]+))?", re.ASCII)
# More digits than this cannot be a valid amount in any currency.
_MAX_DIGITS = 20


class AmountError(ValueError):
    """An amount or currency that cannot be accepted; the message says why."""


@cache
def known_currencies() -> frozenset[str]:
    return frozenset(code.lower() for code in list_currencies())


def exponent(currency: str) -> int:
    currency = currency.lower()
    if currency in ZERO_DECIMAL:
        return 0
    if currency in THREE_DECIMAL:
        return 3
    return 2


def normalize_currency(raw: str | None) -> str:
    """Return an ISO 4217 code that Stripe charges in, in lower case, or raise AmountError."""
    code = (raw or "").strip().lower()
    if not code:
        raise AmountError("Currency is required (an ISO 4217 code such as usd).")
    if len(code) != 3 or not code.isalpha() or code not in known_currencies():
        raise AmountError(f"{raw!r} is not a known ISO 4217 currency code.")
    if code not in STRIPE_CURRENCIES:
        raise AmountError(f"{code.upper()} is not a currency Stripe can charge cards in.")
    return code


def parse_amount(raw: str | int | None, currency: str, *, major: bool = False) -> int:
    """Return a positive amount in minor units.

    An integer ("5000") is taken as minor units; a decimal string ("50.00") as
    major units, converted exactly digit by digit (never through float) and
    refused if it has more decimals than the currency allows. A float (from
    JSON) is refused: it may already have lost the cents. With `major`, every string is in
    major units (a staff form: "50" means $50.00).
    """
    if isinstance(raw, bool):
        raise AmountError("Amount must be a number.")
    if isinstance(raw, int):
        minor = raw
    elif raw is not None and not isinstance(raw, str):
        raise AmountError('Amount must be a whole number of cents (5000) or a decimal string ("50.00").')
    else:
        text = (raw or "").strip().replace("_", "")
        if not text:
            raise AmountError("Amount is required.")
        match = _NUMBER.fullmatch(text)
        if not match:
            raise AmountError(f"{raw!r} is not a number; write it like 50.00.")
        whole, fraction = match.group(1).lstrip("0"), match.group(2)
        if len(whole) > _MAX_DIGITS:
            raise AmountError("Amount is too large.")
        minor = int(whole or "0")
        if fraction is not None or major:
            # Digit by digit, not through Decimal's 28-digit context, which would
            # round "0.100000000000000000000000000001" to an acceptable 0.10.
            places = exponent(currency)
            fraction = (fraction or "").rstrip("0")
            if len(fraction) > places:
                unit = "no decimals" if places == 0 else f"at most {places} decimals"
                raise AmountError(f"{currency.upper()} amounts take {unit}; got {raw!r}.")
            minor = minor * 10**places + int(fraction.ljust(places, "0") or "0")
        if text.startswith("-"):
            minor = -minor
    if minor <= 0:
        raise AmountError("Amount must be greater than zero.")
    if minor > MAX_AMOUNT:
        raise AmountError("Amount is too large.")
    return minor


def charge_step(currency: str) -> int:
    """The minor units Stripe charges `currency` in multiples of (1 for most currencies)."""
    code = currency.lower()
    if code in THREE_DECIMAL:
        return 10
    if code in WHOLE_UNITS_ONLY:
        return 100
    return 1


def minimum_charge(currency: str) -> int:
    """The smallest amount, in minor units, that Stripe will charge in `currency`.

    The row of Stripe's minimum table for the currency, or else one charge step
    (see MINIMUM_CHARGE for why nothing larger is guessed).
    """
    code = currency.lower()
    return max(MINIMUM_CHARGE.get(code, 0), charge_step(code))


def card_charge_problem(amount: int, currency: str, locale: str = "en_US") -> str | None:
    """Why Stripe would refuse to charge `amount` by card, or None if it would not.

    Stripe takes three-decimal currencies in thousandths but charges them only in
    whole tens (5.124 KWD must become 5.120 or 5.130), and ISK and UGX only in
    whole units. We never round a customer's debt ourselves, so such an amount
    cannot be collected as it is. Below Stripe's minimum nothing can be charged.
    """
    code = currency.lower()
    step = charge_step(code)
    if amount % step:
        unit = "whole units" if step == 100 else "steps of 0.010"
        return (
            f"Stripe charges {code.upper()} only in {unit}, so "
            f"{format_amount(amount, code, locale)} cannot be collected as it is."
        )
    least = minimum_charge(code)
    if amount < least:
        return (
            f"Stripe can't charge less than {format_amount(least, code, locale)}; "
            f"this transaction is {format_amount(amount, code, locale)}."
        )
    return None


def to_major(amount: int, currency: str) -> Decimal:
    return Decimal(amount).scaleb(-exponent(currency))


def format_amount(amount: int, currency: str, locale: str = "en_US") -> str:
    """Format minor units for people: 5000 usd → $50.00, 5000 jpy → ¥5,000."""
    places = exponent(currency)
    style = _style(locale, places, currency.upper())
    if style is not None and amount >= 0:
        return style.render(amount, places)
    try:
        return format_currency(
            to_major(amount, currency),
            currency.upper(),
            format=_pattern(locale, places),
            locale=locale,
            currency_digits=False,
        )
    except (ValueError, LookupError, UnknownLocaleError):
        return f"{to_major(amount, currency):,.{places}f} {currency.upper()}"


@cache
def _pattern(locale: str, places: int) -> NumberPattern:
    """The locale's currency pattern with exactly `places` decimals.

    CLDR's own digits differ from Stripe's for some currencies (HUF, IDR, ISK,
    COP...: none in CLDR, two at Stripe); rounding 12345 huf to "HUF123" would
    hide money, so the decimals always follow the amount's minor unit.
    """
    pattern: NumberPattern = copy.copy(Locale.parse(locale).currency_formats["standard"])
    pattern.frac_prec = (places, places)
    return pattern


@dataclass(frozen=True)
class _CurrencyStyle:
    """Babel's rendering of one (locale, decimals, currency), worked out once.

    Babel derives the symbols and affixes again on every call (~25 µs, and a
    list page shows fifty amounts). `render` repeats exactly what its pattern
    does for a plain pattern and a non-negative amount; tests compare the two.
    """

    prefix: str
    suffix: str
    group: str
    decimal: str
    grouping: tuple[int, int]
    min_digits: int

    def render(self, amount: int, places: int) -> str:
        whole, fraction = divmod(amount, 10**places)
        digits = str(whole).rjust(self.min_digits, "0")
        size, grouped = self.grouping[0], ""
        while len(digits) > size:  # Babel's NumberPattern._format_int
            grouped = self.group + digits[-size:] + grouped
            digits = digits[:-size]
            size = self.grouping[1]
        number = digits + grouped
        if places:
            number += self.decimal + str(fraction).rjust(places, "0")
        return self.prefix + number + self.suffix


@cache
def _style(locale: str, places: int, code: str) -> _CurrencyStyle | None:
    """The fast rendering for this combination, or None where only Babel will do.

    None for an unknown locale and for anything but a plain pattern: scientific
    or significant-digit patterns, plural currency names (¤¤¤), and quotes, which
    Babel strips from the whole string (de_CH groups with an apostrophe).
    """
    try:
        parsed = Locale.parse(locale)
        pattern = parsed.currency_formats["standard"]
        symbol = get_currency_symbol(code, parsed)
        group, decimal = get_group_symbol(parsed), get_decimal_symbol(parsed)
    except (ValueError, LookupError, UnknownLocaleError):
        return None
    prefix, suffix = pattern.prefix[0], pattern.suffix[0]
    plain = bool(pattern.number_pattern) and not pattern.exp_prec and not pattern.scale
    if (
        not plain
        or "@" in pattern.pattern
        or "¤¤¤" in prefix + suffix
        or "'" in prefix + suffix + symbol + group + decimal
        or "¤" in code + group + decimal
    ):
        return None

    def affix(text: str) -> str:
        return text.replace("¤¤", code).replace("¤", symbol)

    return _CurrencyStyle(affix(prefix), affix(suffix), group, decimal, pattern.grouping, pattern.int_prec[0])


def format_major(amount: int, currency: str) -> str:
    """Plain decimal string in major units, for forms and CSV: 5000 usd → 50.00."""
    places = exponent(currency)
    return f"{to_major(amount, currency):.{places}f}"


# The one way every entry point words the amount rule (form, CSV, API docs, errors):
# people write amounts with the currency's decimals; "smallest unit" integers are
# for machines (the JSON API's `amount`, a CSV column named amount_minor).
AMOUNT_RULE = (
    "Write amounts with the currency's decimals: "
    "50.00 for USD 50.00, 5000 for JPY 5,000, 5.000 for BHD 5.000."
)
AMOUNT_MINOR_RULE = (
    "A CSV column named amount_minor, and the JSON API's amount, take whole numbers of the "
    "currency's smallest unit instead: 5000 for USD 50.00."
)
