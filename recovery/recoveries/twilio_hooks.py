"""Twilio calls us: delivery reports (POST /twilio/status) and replies to our texts (POST /twilio/inbound).

No login and no CSRF token: Twilio signs each request (X-Twilio-Signature, an
HMAC of the URL and the form with our auth token), and anything unsigned is
refused with 403 before it is read further.
"""

from __future__ import annotations

from flask import Blueprint, Response, abort, request
from twilio.request_validator import RequestValidator

from recovery.config import settings
from recovery.extensions import csrf, db, limiter
from recovery.logs import get_logger
from recovery.messaging.sender import messaging_settings
from recovery.models import utcnow
from recovery.recoveries import delivery_reports

log = get_logger("recovery.messaging")

bp = Blueprint("twilio", __name__, url_prefix="/twilio")
csrf.exempt(bp)  # Twilio cannot send a CSRF token; the signature is the check
# No rate limit: Twilio does not retry a refused callback, the report would be lost.
limiter.exempt(bp)

EMPTY_TWIML = '<?xml version="1.0" encoding="UTF-8"?><Response></Response>'


def public_urls() -> list[str]:
    """The URLs Twilio may have signed: ours under BASE_URL, and the one this request reached.

    Behind a proxy the second is right only with PROXY_FIX set; the first is
    right whenever BASE_URL is, which is where we told Twilio to call.
    """
    query = request.query_string.decode()
    suffix = request.path + (f"?{query}" if query else "")
    urls = [settings().base_url.rstrip("/") + suffix]
    if request.url not in urls:
        urls.append(request.url)
    return urls


def require_signature() -> None:
    token = messaging_settings().twilio_auth_token
    signature = request.headers.get("X-Twilio-Signature", "")
    if not token or not signature:
        log.warning("twilio_signature_missing", path=request.path, configured=bool(token))
        abort(403)
    validator = RequestValidator(token)
    if not any(validator.validate(url, request.form, signature) for url in public_urls()):
        log.warning("twilio_signature_invalid", path=request.path)
        abort(403)


@bp.post("/status")
def status() -> Response:
    """A MessageStatus callback: move the message's delivery status forward."""
    require_signature()
    sid = request.form.get("MessageSid") or request.form.get("SmsSid") or ""
    report = request.form.get("MessageStatus") or request.form.get("SmsStatus") or ""
    code = request.form.get("ErrorCode", type=int)
    message_id = request.args.get("message", type=int)
    if sid and report:
        delivery_reports.apply_status(
            db.session, provider_id=sid, status=report, error_code=code, now=utcnow(), message_id=message_id
        )
    return Response(status=204)


@bp.post("/inbound")
def inbound() -> Response:
    """A customer's reply: STOP and its synonyms opt the number out, START opts it back in."""
    require_signature()
    phone = (request.form.get("From") or "").strip()
    changed = delivery_reports.apply_reply(
        db.session, phone=phone, body=request.form.get("Body"), now=utcnow()
    )
    if changed:
        log.info(
            "twilio_reply_applied",
            keyword=delivery_reports.keyword(request.form.get("Body")),
            organizations=changed,
        )
    # Twilio itself answers STOP and START (Advanced Opt-Out): we add nothing.
    return Response(EMPTY_TWIML, mimetype="text/xml")
