"""The `/v1` endpoints: the part of Stripe's API the app uses, plus listing and a test helper.

Authentication, request ids and fault injection happen in `app.py` before these
run; `idempotent` wraps every POST so a repeated `Idempotency-Key` replays the
first answer.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from datetime import UTC, datetime
from functools import wraps
from typing import Any
from urllib.parse import urlsplit

from flask import Blueprint, Response, g, request

from stripe_sandbox import objects, payments
from stripe_sandbox.context import Sandbox, current
from stripe_sandbox.errors import StripeError, invalid, missing, no_such
from stripe_sandbox.forms import (
    MAX_AMOUNT,
    as_bool,
    as_int,
    as_list,
    as_mapping,
    as_str,
    check_known,
    decode_form,
    metadata,
)
from stripe_sandbox.objects import (
    CURRENCIES,
    MINIMUM_CHARGE,
    PRIVATE,
    THREE_DECIMAL,
    WHOLE_UNITS_ONLY,
    fixture_keys,
    public,
)
from stripe_sandbox.pages import format_amount

bp = Blueprint("api", __name__, url_prefix="/v1")

# Parameters Stripe accepts beyond the fields of the object they create.
_READ_ONLY = {"id", "object", "created", "livemode", "status", "url"}
_EXTRA_PARAMS = {
    "customer": {"payment_method", "source", "tax", "tax_id_data", "cash_balance", "validate"},
    "product": {"default_price_data", "tax_details"},
    "price": {"product_data", "currency_options", "tiers", "transfer_lookup_key"},
    "checkout.session": {
        "line_items",
        "customer_update",
        "payment_intent_data",
        "payment_method_configuration",
        "payment_method_data",
        "redirect_on_completion",
        "return_url",
        "setup_intent_data",
        "subscription_data",
        "tax_id_collection",
        "optional_items",
        "branding_settings",
        "name_collection",
        "excluded_payment_method_types",
    },
    "payment_link": {"line_items", "optional_items", "name_collection"},
}
_LINE_ITEM_KEYS = {"price", "price_data", "quantity", "adjustable_quantity", "dynamic_tax_rates", "tax_rates"}
_PRICE_DATA_KEYS = {"currency", "product", "product_data", "unit_amount", "tax_behavior", "recurring"}
_PRODUCT_DATA_KEYS = {"name", "description", "images", "metadata", "tax_code", "unit_label", "tax_details"}
# Checkout's window for `expires_at`, counted like Stripe from the session's creation,
# with no slack: a caller who counts from an earlier moment must leave a margin.
MIN_EXPIRY = 30 * 60
MAX_EXPIRY = 24 * 3600


def params() -> dict[str, Any]:
    """Decode the request's form body (POST) or query string (GET) into nested values."""
    source = request.form if request.method == "POST" else request.args
    return decode_form(source.items(multi=True))


def allowed(kind: str) -> set[str]:
    return (set(fixture_keys(kind)) - _READ_ONLY) | _EXTRA_PARAMS.get(kind, set()) | {"expand"}


def optional_str(values: dict[str, Any], name: str, max_length: int = 5000) -> str | None:
    value = values.get(name)
    return None if value in (None, "") else as_str(value, name, max_length=max_length)


def web_url(value: str, param: str) -> str:
    """A URL a browser can be sent to, or Stripe's url_invalid (no javascript:, no bare words)."""
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise invalid(param, "Not a valid URL", code="url_invalid")
    return value


def optional_url(values: dict[str, Any], name: str) -> str | None:
    value = optional_str(values, name, max_length=5000)
    return None if value is None else web_url(value, name)


def currency(value: Any, param: str) -> str:
    if value in (None, ""):
        raise missing(param)
    code = as_str(value, param).lower()
    if code not in CURRENCIES:
        raise invalid(
            param,
            f"Invalid currency: {code}. Stripe currently supports these currencies: "
            + ", ".join(sorted(CURRENCIES)),
        )
    return code


def amount(value: Any, param: str) -> int:
    if value in (None, ""):
        raise missing(param)
    return as_int(value, param, minimum=0, maximum=MAX_AMOUNT)


# --- idempotency ---


def json_response(status: int, body: dict[str, Any], headers: dict[str, str] | None = None) -> Response:
    response = Response(json.dumps(body, indent=2), status=status, mimetype="application/json")
    response.headers.update(headers or {})
    return response


def idempotent(view: Callable[..., dict[str, Any]]) -> Callable[..., Response]:
    """Replay a POST's first answer for a repeated `Idempotency-Key`; refuse one reused for other params.

    Only requests that executed are saved (2xx, and 402 card declines). Like
    Stripe, a request refused by validation, or answered by an injected fault
    before it ran, leaves nothing behind, so a retry with the key executes.
    The store lock is held throughout, so a concurrent retry waits and replays.
    """

    @wraps(view)
    def wrapper(**kwargs: Any) -> Response:
        sandbox = current()
        key = request.headers.get("Idempotency-Key") or None
        g.idempotency_key = key
        try:
            body_hash = hashlib.sha256(json.dumps(params(), sort_keys=True).encode()).hexdigest()
        except StripeError as error:  # a body that does not decode
            return json_response(error.status, error.body())
        endpoint = f"{request.method} {request.path}"
        store = sandbox.store
        with store.lock:
            if key:
                saved = store.idempotent_result(g.api_key, key, store.now())
                if saved:
                    return _replay(key, endpoint, body_hash, *saved)
            try:
                # A refused request rolls back whatever it wrote before the refusal.
                with store.transaction():
                    try:
                        status, body = 200, view(**kwargs)
                    except StripeError as error:
                        if error.status != 402:  # a decline executed: keep it and its result
                            raise
                        status, body = error.status, error.body()
                    if key:
                        fingerprint = f"{endpoint}|{body_hash}"
                        store.save_idempotent_result(
                            g.api_key, key, fingerprint, status, json.dumps(body), store.now()
                        )
            except StripeError as error:
                return json_response(error.status, error.body())
            return json_response(status, body)

    return wrapper


def _replay(key: str, endpoint: str, body_hash: str, fingerprint: str, status: int, body: str) -> Response:
    first_endpoint, _, first_hash = fingerprint.partition("|")
    if first_endpoint != endpoint:
        message = (
            "Keys for idempotent requests can only be used for the same endpoint they were first used for "
            f"('{first_endpoint}' vs '{endpoint}'). Try using a key other than '{key}' if you meant to "
            "execute a different request."
        )
        return json_response(400, StripeError(400, message, type="idempotency_error").body())
    if first_hash != body_hash:
        message = (
            "Keys for idempotent requests can only be used with the same parameters they were first used "
            f"with. Try using a key other than '{key}' if you meant to execute a different request."
        )
        return json_response(400, StripeError(400, message, type="idempotency_error").body())
    g.replayed = True
    return json_response(status, json.loads(body), {"Idempotent-Replayed": "true"})


# --- expansion and lists ---

_KINDS = {
    "customer": "customer",
    "payment_intent": "payment_intent",
    "latest_charge": "charge",
    "charge": "charge",
    "payment_link": "payment_link",
    "product": "product",
    "price": "price",
}


def render(sandbox: Sandbox, obj: dict[str, Any], expand: list[str] | None = None) -> dict[str, Any]:
    """The object as the API answers it, with `expand[]` paths replaced by the objects they name."""
    result = public(obj)
    for index, path in enumerate(expand or []):
        if not isinstance(path, str):
            raise invalid(
                f"expand[{index}]",
                "Invalid string: expand entries must be strings",
                code="parameter_invalid_string",
            )
        _expand(sandbox, result, obj, path.split("."), f"expand[{index}]")
    return result


def _expand(
    sandbox: Sandbox, result: dict[str, Any], raw: dict[str, Any], path: list[str], param: str
) -> None:
    field, rest = path[0], path[1:]
    if field == "line_items" and PRIVATE in raw:
        result[field] = item_list(raw)
        return
    if field == "data" and result.get("object") == "list":
        for item in result["data"]:
            _expand(sandbox, item, item, rest, param)
        return
    value = result.get(field)
    if field not in _KINDS or (value is not None and not isinstance(value, str | dict)):
        raise invalid(param, f"This property cannot be expanded ({'.'.join(path)}).")
    if isinstance(value, str):
        stored = sandbox.store.get(value, _KINDS[field])
        if stored is not None:
            result[field] = value = public(stored)
    if rest and isinstance(value, dict):
        _expand(sandbox, value, value, rest, param)


def item_list(raw: dict[str, Any]) -> dict[str, Any]:
    base = "checkout/sessions" if raw["object"] == "checkout.session" else "payment_links"
    return {
        "object": "list",
        "data": raw[PRIVATE]["line_items"],
        "has_more": False,
        "url": f"/v1/{base}/{raw['id']}/line_items",
    }


def _param_name(field: str) -> str:
    """`customer_details.email` as a request names it: `customer_details[email]`."""
    head, *rest = field.split(".")
    return head + "".join(f"[{part}]" for part in rest)


def listing(kind: str, url: str, filters: dict[str, Any]) -> dict[str, Any]:
    """Answer a list request: newest first, `limit` (1-100), `starting_after` / `ending_before` cursors."""
    sandbox = current()
    values = params()
    limit = as_int(values["limit"], "limit", minimum=1, maximum=100) if values.get("limit") else 10
    # A nested or listed value (`type[0]=…`) is a 400, as at Stripe, not a query on a dict.
    cursors = {
        name: as_str(values[name], name) if values.get(name) not in (None, "") else None
        for name in ("starting_after", "ending_before")
    }
    found, has_more = sandbox.store.find(
        kind,
        {k: as_str(v, _param_name(k)) for k, v in filters.items() if v not in (None, "")},
        limit=limit,
        **cursors,
    )
    expand = [p.removeprefix("data.") for p in as_list(values.get("expand"), "expand")]
    return {
        "object": "list",
        "data": [render(sandbox, obj, expand) for obj in found],
        "has_more": has_more,
        "url": url,
    }


def retrieve(kind: str, object_id: str) -> dict[str, Any]:
    sandbox = current()
    if kind == "checkout.session":
        obj = payments.open_session(sandbox, object_id)
    else:
        obj = sandbox.store.get(object_id, kind)
    if obj is None:
        raise no_such(kind, object_id)
    return obj


def answer(obj: dict[str, Any], values: dict[str, Any] | None = None) -> dict[str, Any]:
    values = params() if values is None else values
    return render(current(), obj, as_list(values.get("expand"), "expand"))


def _get(kind: str) -> Callable[[str], Response]:
    def view(object_id: str) -> Response:
        try:
            return json_response(200, answer(retrieve(kind, object_id)))
        except StripeError as error:
            return json_response(error.status, error.body())

    return view


for _kind, _path in (
    ("customer", "customers"),
    ("product", "products"),
    ("price", "prices"),
    ("checkout.session", "checkout/sessions"),
    ("payment_link", "payment_links"),
    ("payment_intent", "payment_intents"),
    ("charge", "charges"),
    ("event", "events"),
):
    bp.add_url_rule(f"/{_path}/<object_id>", f"get_{_kind.replace('.', '_')}", _get(_kind), methods=["GET"])


def _list(kind: str, path: str, *fields: str) -> Callable[[], Response]:
    def view() -> Response:
        try:
            values = params()
            filters = {field: values.get(field) for field in fields}
            if kind == "checkout.session":
                payments.expire_due_sessions(current())
            if kind == "checkout.session" and isinstance(values.get("customer_details"), dict):
                filters["customer_details.email"] = values["customer_details"].get("email")
            return json_response(200, listing(kind, f"/v1/{path}", filters))
        except StripeError as error:
            return json_response(error.status, error.body())

    return view


for _kind, _path, _fields in (
    ("customer", "customers", ("email",)),
    ("product", "products", ("active",)),
    ("price", "prices", ("product", "currency")),
    ("checkout.session", "checkout/sessions", ("payment_intent", "payment_link", "customer", "status")),
    ("payment_link", "payment_links", ()),
    ("payment_intent", "payment_intents", ("customer",)),
    ("charge", "charges", ("payment_intent", "customer")),
    ("event", "events", ("type",)),
):
    bp.add_url_rule(
        f"/{_path}", f"list_{_kind.replace('.', '_')}", _list(_kind, _path, *_fields), methods=["GET"]
    )


@bp.get("/checkout/sessions/<object_id>/line_items")
def session_line_items(object_id: str) -> Response:
    try:
        return json_response(200, item_list(retrieve("checkout.session", object_id)))
    except StripeError as error:
        return json_response(error.status, error.body())


@bp.get("/payment_links/<object_id>/line_items")
def link_line_items(object_id: str) -> Response:
    try:
        return json_response(200, item_list(retrieve("payment_link", object_id)))
    except StripeError as error:
        return json_response(error.status, error.body())


# --- customers, products, prices ---


@bp.post("/customers")
@idempotent
def create_customer() -> dict[str, Any]:
    sandbox, values = current(), params()
    check_known(values, allowed("customer"))
    customer = objects.customer(
        now=sandbox.store.now(),
        email=optional_str(values, "email", 512),
        name=optional_str(values, "name", 256),
        phone=optional_str(values, "phone", 20),
        description=optional_str(values, "description"),
        metadata=metadata(values.get("metadata")),
    )
    return answer(sandbox.store.put(customer), values)


@bp.post("/products")
@idempotent
def create_product() -> dict[str, Any]:
    sandbox, values = current(), params()
    check_known(values, allowed("product"))
    name = optional_str(values, "name")
    if not name:
        raise missing("name")
    product = objects.product(
        now=sandbox.store.now(),
        name=name,
        description=optional_str(values, "description"),
        metadata=metadata(values.get("metadata")),
        active=as_bool(values["active"], "active") if "active" in values else True,
    )
    return answer(sandbox.store.put(product), values)


@bp.post("/prices")
@idempotent
def create_price() -> dict[str, Any]:
    sandbox, values = current(), params()
    check_known(values, allowed("price"))
    code = currency(values.get("currency"), "currency")
    unit_amount = amount(values.get("unit_amount"), "unit_amount")
    product_id = _product_for(sandbox, values.get("product"), values.get("product_data"), "")
    price = objects.price(
        now=sandbox.store.now(),
        product_id=product_id,
        currency=code,
        unit_amount=unit_amount,
        metadata=metadata(values.get("metadata")),
        nickname=optional_str(values, "nickname"),
        lookup_key=optional_str(values, "lookup_key", 200),
    )
    return answer(sandbox.store.put(price), values)


def _product_for(sandbox: Sandbox, product_id: Any, product_data: Any, prefix: str) -> str:
    """Return the id of an existing product, or of one made from `product_data`."""
    product_param = f"{prefix}[product]" if prefix else "product"
    data_param = f"{prefix}[product_data]" if prefix else "product_data"
    if product_id not in (None, ""):
        if sandbox.store.get(as_str(product_id, product_param), "product") is None:
            raise no_such("product", product_id, param=product_param)
        return str(product_id)
    if product_data in (None, ""):
        raise missing(product_param)
    data = as_mapping(product_data, data_param)
    check_known(
        {f"{data_param}[{k}]": v for k, v in data.items()}, {f"{data_param}[{k}]" for k in _PRODUCT_DATA_KEYS}
    )
    name = data.get("name")
    if name in (None, ""):
        raise missing(f"{data_param}[name]")
    product = objects.product(
        now=sandbox.store.now(),
        name=as_str(name, f"{data_param}[name]"),
        description=data.get("description") or None,
        metadata=metadata(data.get("metadata"), f"{data_param}[metadata]"),
        active=True,
    )
    sandbox.store.put(product)
    return str(product["id"])


def line_items(sandbox: Sandbox, raw: Any, owner: str = "Checkout Session") -> list[dict[str, Any]]:
    """Parse `line_items[n][price]` or `[price_data]` with `[quantity]` into Checkout's line items.

    Refused as Stripe refuses them: mixed currencies, an amount Stripe cannot
    charge in its currency, a total under the currency's minimum charge.
    """
    entries = as_list(raw, "line_items")
    if not entries:
        raise missing("line_items")
    items, amount_params = [], []
    for index, entry in enumerate(entries):
        param = f"line_items[{index}]"
        entry = as_mapping(entry, param)
        check_known(
            {f"{param}[{k}]": v for k, v in entry.items()}, {f"{param}[{k}]" for k in _LINE_ITEM_KEYS}
        )
        if entry.get("quantity") in (None, ""):
            raise missing(f"{param}[quantity]")
        quantity = as_int(entry["quantity"], f"{param}[quantity]", minimum=1, maximum=999_999)
        if entry.get("price") not in (None, ""):
            price = sandbox.store.get(as_str(entry["price"], f"{param}[price]"), "price")
            if price is None:
                raise no_such("price", entry["price"], param=f"{param}[price]")
            amount_params.append(f"{param}[price]")
        elif entry.get("price_data") not in (None, ""):
            price = _inline_price(sandbox, as_mapping(entry["price_data"], f"{param}[price_data]"), param)
            amount_params.append(f"{param}[price_data][unit_amount]")
        else:
            raise missing(f"{param}[price]")
        product = sandbox.store.get(price["product"], "product")
        description = product["name"] if product else ""
        items.append(objects.line_item(price_obj=price, description=description, quantity=quantity))
    if len({item["currency"] for item in items}) > 1:
        raise invalid("line_items", "All line items must use the same currency.")
    for index, item in enumerate(items):
        code, unit_amount = item["currency"], item["price"]["unit_amount"]
        if code in THREE_DECIMAL and unit_amount % 10:
            # Stripe's rule for card payments in three-decimal currencies.
            raise invalid(
                amount_params[index],
                f"Amounts in {code.upper()} must be a multiple of 10 (the last digit must be 0) "
                f"to be charged; got {unit_amount}.",
                code="invalid_charge_amount",
            )
        if code in WHOLE_UNITS_ONLY and unit_amount % 100:
            raise invalid(
                amount_params[index],
                f"Amounts in {code.upper()} must be whole {code.upper()} (a multiple of 100, the decimal "
                f"amount always 00); got {unit_amount}.",
                code="invalid_charge_amount",
            )
    total = sum(item["amount_total"] for item in items)
    least = max(MINIMUM_CHARGE.get(items[0]["currency"], 1), 1)
    if total < least:
        code = items[0]["currency"]
        raise invalid(
            amount_params[0] if len(items) == 1 else "line_items",
            f"The {owner}'s total amount due must add up to at least {format_amount(least, code)} {code}",
            code="amount_too_small",
        )
    return items


def _inline_price(sandbox: Sandbox, data: dict[str, Any], param: str) -> dict[str, Any]:
    prefix = f"{param}[price_data]"
    check_known({f"{prefix}[{k}]": v for k, v in data.items()}, {f"{prefix}[{k}]" for k in _PRICE_DATA_KEYS})
    code = currency(data.get("currency"), f"{prefix}[currency]")
    unit_amount = amount(data.get("unit_amount"), f"{prefix}[unit_amount]")
    product_id = _product_for(sandbox, data.get("product"), data.get("product_data"), prefix)
    price = objects.price(
        now=sandbox.store.now(), product_id=product_id, currency=code, unit_amount=unit_amount, metadata={}
    )
    price["active"] = False  # Stripe's ad-hoc prices cannot be reused
    return sandbox.store.put(price)


def intent_data(raw: Any) -> dict[str, Any]:
    data = as_mapping(raw, "payment_intent_data")
    return {
        "metadata": metadata(data.get("metadata"), "payment_intent_data[metadata]"),
        "description": data.get("description") or None,
    }


# --- Checkout Sessions ---


@bp.post("/checkout/sessions")
@idempotent
def create_session() -> dict[str, Any]:
    sandbox, values = current(), params()
    check_known(values, allowed("checkout.session"))
    now = sandbox.store.now()
    mode = values.get("mode")
    if mode in (None, ""):
        raise missing("mode")
    if mode != "payment":
        raise invalid("mode", f"Invalid mode: {mode}. The sandbox supports only mode=payment.")
    customer_id = optional_str(values, "customer")
    customer_email = optional_str(values, "customer_email", 800)
    if customer_id and customer_email:
        raise invalid(
            "customer_email",
            "You may only specify one of these parameters: customer, customer_email.",
            code="parameters_exclusive",
        )
    if customer_id and sandbox.store.get(customer_id, "customer") is None:
        raise no_such("customer", customer_id, param="customer")
    expires_at = now + MAX_EXPIRY
    if values.get("expires_at") not in (None, ""):
        expires_at = as_int(values["expires_at"], "expires_at")
        if expires_at < now + MIN_EXPIRY:
            raise invalid(
                "expires_at",
                "The `expires_at` timestamp must be at least 30 minutes from Checkout Session creation.",
            )
        if expires_at > now + MAX_EXPIRY:
            raise invalid(
                "expires_at",
                "The `expires_at` timestamp must be less than 24 hours from Checkout Session creation.",
            )
    session = objects.checkout_session(
        now=now,
        public_url=sandbox.config.public_url,
        items=line_items(sandbox, values.get("line_items")),
        customer_id=customer_id,
        customer_email=customer_email,
        client_reference_id=optional_str(values, "client_reference_id", 200),
        metadata=metadata(values.get("metadata")),
        success_url=optional_url(values, "success_url"),
        cancel_url=optional_url(values, "cancel_url"),
        expires_at=expires_at,
        locale=optional_str(values, "locale", 10),
        payment_link=None,
        payment_intent_data=intent_data(values.get("payment_intent_data")),
    )
    return answer(sandbox.store.put(session), values)


@bp.post("/checkout/sessions/<object_id>/expire")
@idempotent
def expire_session(object_id: str) -> dict[str, Any]:
    sandbox = current()
    session = retrieve("checkout.session", object_id)
    if session["status"] != "open":
        raise StripeError(400, 'Only Checkout Sessions with a status in ["open"] can be expired.')
    payments.expire(sandbox, session, request_id=g.request_id, idempotency_key=g.idempotency_key)
    return answer(session)


@bp.post("/test_helpers/checkout/sessions/<object_id>/pay")
@idempotent
def pay_session(object_id: str) -> dict[str, Any]:
    """Pay a session with a test card, exactly as the hosted page does (not a real Stripe endpoint)."""
    sandbox, values = current(), params()
    check_known(values, {"card", "email", "name", "exp_month", "exp_year", "cvc", "expand"})
    if values.get("card") in (None, ""):
        raise missing("card")
    # By default a card that expires in five years on the sandbox's clock, as the hosted page's would.
    default_year = datetime.fromtimestamp(sandbox.store.now(), UTC).year + 5
    year = as_int(values["exp_year"], "exp_year") if values.get("exp_year") else default_year
    month = as_int(values["exp_month"], "exp_month", minimum=1, maximum=12) if values.get("exp_month") else 12
    try:
        attempt = payments.pay(
            sandbox,
            object_id,
            card_number=as_str(values["card"], "card"),
            exp_month=month,
            exp_year=year,
            email=optional_str(values, "email"),
            name=optional_str(values, "name"),
            request_id=g.request_id,
            idempotency_key=g.idempotency_key,
        )
    except LookupError:
        raise no_such("checkout.session", object_id) from None
    except payments.NotPayable as refusal:
        message = (
            "This Checkout Session's Payment Link is no longer active."
            if refusal.status == "link_deactivated"
            else f"This Checkout Session is no longer open (status: {refusal.status})."
        )
        raise StripeError(400, message, code="checkout_session_not_open") from None
    if attempt.error:
        raise attempt.error
    return answer(attempt.session, values)


# --- Payment Links ---


@bp.post("/payment_links")
@idempotent
def create_link() -> dict[str, Any]:
    sandbox, values = current(), params()
    check_known(values, allowed("payment_link"))
    link = objects.payment_link(
        public_url=sandbox.config.public_url,
        items=line_items(sandbox, values.get("line_items"), "Payment Link"),
        metadata=metadata(values.get("metadata")),
        limit=_limit(values.get("restrictions")),
        redirect_url=_redirect(values.get("after_completion")),
        payment_intent_data=intent_data(values.get("payment_intent_data")),
    )
    return answer(sandbox.store.put(link), values)


def _limit(raw: Any) -> int | None:
    restrictions = as_mapping(raw, "restrictions")
    if not restrictions:
        return None
    completed = as_mapping(restrictions.get("completed_sessions"), "restrictions[completed_sessions]")
    if completed.get("limit") in (None, ""):
        raise missing("restrictions[completed_sessions][limit]")
    return as_int(completed["limit"], "restrictions[completed_sessions][limit]", minimum=1, maximum=10_000)


def _redirect(raw: Any) -> str | None:
    after = as_mapping(raw, "after_completion")
    if not after:
        return None
    kind = after.get("type")
    if kind in (None, ""):
        raise missing("after_completion[type]")
    if kind == "hosted_confirmation":
        return None
    if kind != "redirect":
        raise invalid("after_completion[type]", f"Invalid after_completion[type]: {kind}")
    url = as_mapping(after.get("redirect"), "after_completion[redirect]").get("url")
    if url in (None, ""):
        raise missing("after_completion[redirect][url]")
    return web_url(
        as_str(url, "after_completion[redirect][url]", max_length=2048), "after_completion[redirect][url]"
    )


@bp.post("/payment_links/<object_id>")
@idempotent
def update_link(object_id: str) -> dict[str, Any]:
    sandbox, values = current(), params()
    check_known(values, allowed("payment_link") - {"line_items", "currency"} | {"active"})
    link = retrieve("payment_link", object_id)
    if "active" in values:
        link["active"] = as_bool(values["active"], "active")
    if "metadata" in values:
        # Stripe merges metadata on update; an empty value removes the key.
        merged = {**link["metadata"], **as_mapping(values["metadata"], "metadata")}
        link["metadata"] = metadata(merged)
    if "restrictions" in values:
        limit = _limit(values["restrictions"])
        count = link["restrictions"]["completed_sessions"]["count"] if link["restrictions"] else 0
        link["restrictions"] = {"completed_sessions": {"count": count, "limit": limit}} if limit else None
    if "after_completion" in values:
        url = _redirect(values["after_completion"])
        link["after_completion"] = (
            {"type": "redirect", "redirect": {"url": url}}
            if url
            else {"type": "hosted_confirmation", "hosted_confirmation": {"custom_message": None}}
        )
    if "payment_intent_data" in values:
        data = intent_data(values["payment_intent_data"])
        link["payment_intent_data"].update(data)
    return answer(sandbox.store.put(link), values)
