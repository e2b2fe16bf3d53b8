"""What a recovery message says: rendered from templates/messages in one language.

The copy lives in Jinja templates with `{% trans %}` blocks, so another
language is a gettext catalogue away (recovery/translations/<locale>/LC_MESSAGES/messages.mo,
compiled with `pybabel compile`). Amounts and dates follow the language the
copy is actually in (`writing_locale`): a French customer gets French
formats only once the copy is French, never "50,00 €" inside English text.
"""

from __future__ import annotations

import gettext
import re
import unicodedata
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from functools import cache
from pathlib import Path
from zoneinfo import ZoneInfo

from babel import Locale, UnknownLocaleError
from babel.dates import format_date, format_skeleton
from babel.support import Translations
from flask import current_app, has_app_context
from jinja2 import Environment, FileSystemLoader, StrictUndefined, select_autoescape
from markupsafe import Markup

from recovery import money
from recovery.messaging.quiet_hours import country_zone, customer_zones

TEMPLATES = Path(__file__).resolve().parents[1] / "templates" / "messages"
TRANSLATIONS = Path(__file__).resolve().parents[1] / "translations"
DEFAULT_LOCALE = "en_US"
# The English a customer reads when their own language has no copy yet: CLDR's
# "English for the world" puts the day before a spelled-out month (as most of the
# world reads dates), keeps the decimal point that English text implies, and names
# currencies without ambiguity (US$, JP¥), which a French or Japanese reader needs
# more than an American does.
WORLD_ENGLISH = "en_001"

# Declines the customer cannot fix by trying again: they need another card.
NEW_CARD_CODES = frozenset(
    {
        "expired_card",
        "incorrect_number",
        "invalid_number",
        "authentication_required",
        "stolen_card",
        "lost_card",
        "pickup_card",
    }
)

# GSM 03.38: the basic set costs one septet, the extension table two.
GSM7_BASIC = frozenset(
    "@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞÆæßÉ !\"#¤%&'()*+,-./0123456789:;<=>?"
    "¡ABCDEFGHIJKLMNOPQRSTUVWXYZÄÖÑÜ§¿abcdefghijklmnopqrstuvwxyzäöñüà"
)
GSM7_EXTENDED = frozenset("^{}\\[~]|€")
# Typography that would force the whole SMS into UCS-2 (70 characters a segment).
_GSM7_REPLACEMENTS = {
    "\u00a0": " ",
    "\u202f": " ",
    "\u2009": " ",
    "\u2018": "'",
    "\u2019": "'",
    "\u201c": '"',
    "\u201d": '"',
    "\u2013": "-",
    "\u2014": "-",
    "\u2026": "...",
    "\u00b7": "-",
}
SMS_SEGMENT = 160
_SPACES = re.compile(r"[ \t\r\n]+")


@dataclass(frozen=True)
class MessageFacts:
    """Everything a message may mention, already decided by the caller."""

    merchant: str
    brand_color: str
    customer_name: str | None
    amount: int
    currency: str
    transaction_ref: str
    failure_code: str | None
    link: str
    unsubscribe_url: str
    expires_at: datetime
    timezone: str  # the organization's: the customer's zone when nothing else tells it
    locale: str | None
    step: int
    contact_email: str | None
    # Where the customer may be, as quiet hours judge it (ISO 3166 alpha-2, E.164).
    country: str | None = None
    phone: str | None = None


@dataclass(frozen=True)
class RenderedEmail:
    subject: str
    text: str
    html: str


def babel_locale(locale: str | None) -> str:
    """A Babel locale name for a BCP 47 tag (en-US → en_US); the default if unknown."""
    if not locale:
        return DEFAULT_LOCALE
    try:
        return str(Locale.parse(locale.replace("-", "_")))
    except (ValueError, UnknownLocaleError):
        return DEFAULT_LOCALE


def bdi(value: object) -> Markup:
    """`value` escaped and isolated: right-to-left text in it cannot reorder the sentence around it."""
    return Markup("<bdi>{}</bdi>").format(value)


def catalogue_dir() -> Path:
    """Where the compiled catalogues are: the app's TRANSLATIONS_DIR if set, else the package's own."""
    if has_app_context():
        configured = current_app.config.get("TRANSLATIONS_DIR")
        if configured:
            return Path(configured)
    return TRANSLATIONS


def writing_locale(locale: str | None, catalogues: Path | None) -> str:
    """The one locale a message is written in: the language of its copy, and that language's formats.

    The customer's own locale, region included (fr_CA), when the copy exists in
    their language: English, the source, or a compiled catalogue in `catalogues`
    (None: the text is not translated at all, as the customer pages are not).
    Otherwise the copy is English, so the numbers and dates are too
    (WORLD_ENGLISH): a mixture ("January" next to "50,00 €") reads as a
    mistake, or a phishing attempt. An English locale keeps its region
    (en_GB, en_IN): it belongs to the language.
    """
    wanted = babel_locale(locale)
    if Locale.parse(wanted).language == "en":
        return wanted
    if catalogues is not None and gettext.find("messages", str(catalogues), [wanted]) is not None:
        return wanted
    return WORLD_ENGLISH


@cache
def _environment(locale: str, catalogues: Path) -> Environment:
    """One Jinja environment per locale and catalogue directory, with that locale's catalogue installed."""
    env = Environment(
        loader=FileSystemLoader(TEMPLATES),
        autoescape=select_autoescape(["html"]),
        extensions=["jinja2.ext.i18n"],
        undefined=StrictUndefined,
        # Tags sit inline in the templates, so the text keeps exactly the lines written.
        keep_trailing_newline=False,
    )
    env.filters["bdi"] = bdi
    translations = Translations.load(str(catalogues), [locale], domain="messages")
    env.install_gettext_translations(translations, newstyle=True)  # type: ignore[attr-defined]
    return env


def expiry_zone(
    expires_at: datetime, country: str | None, phone: str | None, organization_zone: str
) -> ZoneInfo:
    """The zone in which to tell the customer when their link expires.

    One of the zones quiet hours think the customer may be in: the country's
    main zone if it is one (the clock most of its people read), else the one
    where the link expires on the earliest date, the most eastern on a tie.
    Any of them tells the truth, since the time is shown with its zone.
    """
    zones = customer_zones(country, phone, organization_zone)
    main = country_zone(country)
    if main in zones:
        return main

    def earliest_date_then_east(zone: ZoneInfo) -> tuple[date, timedelta, str]:
        local = expires_at.astimezone(zone)
        return (local.date(), -(local.utcoffset() or timedelta()), zone.key)

    return min(zones, key=earliest_date_then_east)


def format_expiry(
    expires_at: datetime,
    locale: str,
    *,
    country: str | None,
    phone: str | None,
    organization_zone: str,
    short: bool = False,
) -> str:
    """When the link stops working, in the customer's zone: "January 15, 2026, 3:00 PM (UTC-5)".

    The time goes with it: the link dies at the time of day the recovery
    started, so its last date is only partly usable. Rounded down to the hour,
    a promise the link keeps. The zone is written as its UTC offset, true
    wherever the customer reads it; CLDR's zone names are not everywhere
    (Babel gives "summer time" all year in Russian and Mexican Spanish, and
    "Unknown Region" for fixed-offset zones). `short`, for a text message
    with no room to spare: the date alone and no year ("Jan 15"), or digits
    ("1/15") where the month's name would need more than the GSM-7 alphabet,
    which would cut the segment to 70 characters.
    """
    zone = expiry_zone(expires_at, country, phone, organization_zone)
    local = expires_at.astimezone(zone).replace(minute=0, second=0, microsecond=0)
    if short:
        day = format_skeleton("MMMd", local, tzinfo=zone, locale=locale)
        return day if is_gsm7(day) else format_skeleton("Md", local, tzinfo=zone, locale=locale)
    parsed = Locale.parse(locale)
    hour = "H" if "H" in parsed.time_formats["short"].pattern else "h"
    clock = format_skeleton(hour + "m", local, tzinfo=zone, locale=locale) + f" ({utc_offset(local)})"
    # CLDR's "{1}, {0}": date, then time; quotes only mark literal text.
    pattern: str = parsed.datetime_formats["long"]
    return (
        pattern.replace("'", "")
        .replace("{1}", format_date(local, "long", locale=locale))
        .replace("{0}", clock)
    )


def utc_offset(moment: datetime) -> str:
    """ "UTC", "UTC+1", "UTC-5", "UTC+5:30": a zone's offset at `moment`, in ASCII (fine in an SMS too)."""
    minutes = int((moment.utcoffset() or timedelta()).total_seconds() // 60)
    if minutes == 0:
        return "UTC"
    hours, rest = divmod(abs(minutes), 60)
    return f"UTC{'+' if minutes > 0 else '-'}{hours}" + (f":{rest:02d}" if rest else "")


def _expiry(facts: MessageFacts, locale: str, *, short: bool) -> str:
    return format_expiry(
        facts.expires_at,
        locale,
        country=facts.country,
        phone=facts.phone,
        organization_zone=facts.timezone,
        short=short,
    )


def _context(facts: MessageFacts, locale: str) -> dict[str, object]:
    return {
        "merchant": facts.merchant,
        "brand_color": facts.brand_color,
        "name": facts.customer_name,
        "amount": money.format_amount(facts.amount, facts.currency, locale),
        "ref": facts.transaction_ref,
        "link": facts.link,
        "unsubscribe_url": facts.unsubscribe_url,
        "expiry": _expiry(facts, locale, short=False),
        "short_expiry": _expiry(facts, locale, short=True),
        "reminder": facts.step > 0,
        "new_card": (facts.failure_code or "") in NEW_CARD_CODES,
        "contact_email": facts.contact_email,
        "lang": locale.split("_")[0],
    }


def render_email(facts: MessageFacts) -> RenderedEmail:
    """Subject, plain text and HTML of the step's email."""
    catalogues = catalogue_dir()
    locale = writing_locale(facts.locale, catalogues)
    env = _environment(locale, catalogues)
    context = _context(facts, locale)
    # Collapse the template's line breaks, but keep Babel's no-break spaces (50,00 €).
    subject = _SPACES.sub(" ", env.get_template("email_subject.txt").render(context)).strip()
    return RenderedEmail(
        subject=subject,
        text=env.get_template("email.txt").render(context).strip() + "\n",
        html=env.get_template("email.html").render(context),
    )


def render_sms(facts: MessageFacts) -> str:
    """The step's text message: GSM-7 where the content allows, one segment where it fits."""
    catalogues = catalogue_dir()
    locale = writing_locale(facts.locale, catalogues)
    env = _environment(locale, catalogues)
    context = _context(facts, locale)
    for variant in ("full", "short"):
        text = to_gsm7(" ".join(env.get_template("sms.txt").render(context, variant=variant).split()))
        if sms_length(text) <= SMS_SEGMENT:
            return text
    return text


def to_gsm7(text: str) -> str:
    """Replace typography with GSM-7 look-alikes and strip accents GSM-7 lacks; leave the rest."""
    out = []
    for char in text:
        char = _GSM7_REPLACEMENTS.get(char, char)
        if len(char) == 1 and char not in GSM7_BASIC and char not in GSM7_EXTENDED:
            stripped = "".join(c for c in unicodedata.normalize("NFKD", char) if not unicodedata.combining(c))
            if stripped and all(c in GSM7_BASIC for c in stripped):
                char = stripped
        out.append(char)
    return "".join(out)


def is_gsm7(text: str) -> bool:
    return all(c in GSM7_BASIC or c in GSM7_EXTENDED for c in text)


def sms_length(text: str) -> int:
    """Septets for GSM-7 text; for anything else the UCS-2 length scaled to a 160-septet segment."""
    if is_gsm7(text):
        return sum(2 if c in GSM7_EXTENDED else 1 for c in text)
    # A UCS-2 segment holds 70 characters: scale so that 160 still means "one segment".
    return -(-len(text) * SMS_SEGMENT // 70)
