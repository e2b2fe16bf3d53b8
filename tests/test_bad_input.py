"""Input that misleads or breaks the API's contract (issue 15, items 8 and 9).

Text that displays otherwise than it is (bidirectional overrides, invisible
characters) is refused wherever it enters, and pages isolate what users typed
with <bdi>. Metadata holds strings, bounded numbers and booleans only; list
filters that cannot match are 422; an over-long URL gets the app's own 414,
checked over real HTTP against gunicorn run with the repository's config.
"""

from __future__ import annotations

import html
import http.client
import json
import os
import re
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from flask.testing import FlaskClient
from sqlalchemy import func, select

from recovery.messaging.content import MessageFacts, render_email
from recovery.models import Organization, Transaction, User
from recovery.transactions.validation import (
    METADATA_MAX_NUMBER,
    clean_metadata,
    clean_text,
    strip_deceptive,
)
from tests.conftest import base_config, bearer
from tests.fixtures.csvdata import HEADER, csv_bytes, row
from tests.fixtures.imports import problems, upload

ROOT = Path(__file__).resolve().parent.parent
VALID = {"transaction_ref": "TXN-BAD-1", "amount": 5000, "currency": "usd"}
DECEPTIVE = [
    "\u202a",  # LEFT-TO-RIGHT EMBEDDING
    "\u202b",
    "\u202c",
    "\u202d",
    "\u202e",  # RIGHT-TO-LEFT OVERRIDE
    "\u2066",  # LEFT-TO-RIGHT ISOLATE
    "\u2067",
    "\u2068",
    "\u2069",
    "\u200b",  # ZERO WIDTH SPACE
    "\u2060",  # WORD JOINER
    "\ufeff",  # ZERO WIDTH NO-BREAK SPACE (a BOM inside text)
]


# --- the rules ----------------------------------------------------------------------------------


@pytest.mark.parametrize("char", DECEPTIVE)
@pytest.mark.parametrize("name", ["customer_name", "failure_message", "transaction_ref", "customer_email"])
def test_text_direction_and_invisible_characters_are_refused_naming_the_character(name, char):
    with pytest.raises(ValueError, match=f"U\\+{ord(char):04X}"):
        clean_text(f"abc{char}gnp.exe", name)


@pytest.mark.parametrize(
    "text",
    [
        "می\u200cخواهم",  # Persian: ZWNJ between Arabic letters
        "क्\u200dष",  # Devanagari: ZWJ after a virama
        "👩\u200d💻",  # emoji ZWJ sequence
        "👩🏽\u200d💻",  # with a skin tone modifier
        "👩\u200d❤\ufe0f\u200d👨",  # with a variation selector
        "Ada Lovelace",
        "\u05d3\u05d5\u05d3 (\u200fCEO\u200f)",  # RLM, a mark that moves no letter
    ],
)
def test_joiners_doing_their_job_in_a_name_are_kept(text):
    assert clean_text(text, "customer_name") == text
    assert strip_deceptive(text) == text


@pytest.mark.parametrize(
    ("text", "name"),
    [
        ("pay\u200dpal", "customer_name"),  # between ASCII letters: hides a seam
        ("Ada\u200c Lovelace", "customer_name"),
        ("\u200dAda", "customer_name"),
        ("Ada\u200d", "customer_name"),
        ("می\u200c", "customer_name"),  # at the end
        ("TXN\u200c1", "transaction_ref"),  # never in references
        ("می\u200cخواهم", "transaction_ref"),
    ],
)
def test_joiners_out_of_place_are_refused(text, name):
    with pytest.raises(ValueError, match=r"U\+200[CD]"):
        clean_text(text, name)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("abc\u202egnp.exe\u200b", "abcgnp.exe"),
        ("\u2067Ada\u2069 \u200bLovelace", "Ada Lovelace"),
        ("pay\u200dpal", "paypal"),
        ("می\u200c\u200cخواهم", "می\u200cخواهم"),
        ("\ufeffAda", "Ada"),
    ],
)
def test_stripe_text_is_stripped_of_what_would_be_refused(text, expected):
    assert strip_deceptive(text) == expected
    assert clean_text(expected, "customer_name") == expected


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ('{"order_id": null}', 'Metadata "order_id": null is not a value'),
        ({"order_id": None}, 'Metadata "order_id": null is not a value'),
        ('{"big": 1000000000000000000000000000000}', 'Metadata "big": numbers must lie within'),
        ({"big": 10**30}, 'Metadata "big": numbers must lie within'),
        ({"big": -(10**30)}, 'Metadata "big": numbers must lie within'),
        ({"big": 1e300}, 'Metadata "big": numbers must lie within'),
        ({"big": METADATA_MAX_NUMBER + 1}, 'Metadata "big": numbers must lie within'),
        ({"a\u202eb": "x"}, 'Metadata "a\\\\u202eb": the key must not contain .*U\\+202E'),
        ({"k\u200d": "x"}, "the key must not contain .*U\\+200D"),
        ({"note": "abc\u202egnp.exe"}, 'Metadata "note": the value must not contain .*U\\+202E'),
        ({"note": "x\u200by"}, "the value must not contain .*U\\+200B"),
        ({"nested": {"a": 1}}, 'Metadata "nested": values must be strings, numbers or booleans'),
    ],
)
def test_metadata_refusals_name_the_key(raw, message):
    with pytest.raises(ValueError, match=message):
        clean_metadata(raw)


@pytest.mark.parametrize(
    "value",
    [
        METADATA_MAX_NUMBER,
        -METADATA_MAX_NUMBER,
        0,
        1.5,
        -2.25e15,
        True,
        False,
        "",
        "👩\u200d💻",
        "می\u200cخواهم",
    ],
)
def test_metadata_values_within_the_rules_are_kept(value):
    assert clean_metadata({"k": value}) == {"k": value}


# --- where text enters: the API, the form, a CSV -------------------------------------------------


@pytest.fixture
def api(client: FlaskClient, make_token: Any, org: Organization) -> Callable[..., Any]:
    _, raw = make_token(org=org, role="operator")

    def call(method: str, url: str, **kwargs: Any) -> Any:
        return client.open(url, method=method, headers=bearer(raw), **kwargs)

    return call


def count(db: Any) -> int:
    return int(db.session.scalar(select(func.count()).select_from(Transaction)))


@pytest.mark.parametrize(
    ("fields", "field", "message"),
    [
        ({"customer_name": "abc\u202egnp.exe\u200b"}, "customer_name", "U+202E RIGHT-TO-LEFT OVERRIDE"),
        ({"customer_name": "Ada\u200bLovelace"}, "customer_name", "U+200B ZERO WIDTH SPACE"),
        ({"failure_message": "Declined \u2066x\u2069"}, "failure_message", "U+2066"),
        ({"transaction_ref": "TXN-1\u202e"}, "transaction_ref", "U+202E"),
        ({"metadata": {"order\u2060id": "1"}}, "metadata", 'Metadata "order\\u2060id": the key'),
        ({"metadata": {"note": "\ufeffhi"}}, "metadata", 'Metadata "note": the value'),
        ({"metadata": {"order_id": None}}, "metadata", 'Metadata "order_id": null is not a value'),
        ({"metadata": {"big": 10**30}}, "metadata", 'Metadata "big": numbers must lie within'),
        ({"metadata": {"big": 2**53}}, "metadata", 'Metadata "big": numbers must lie within'),
    ],
)
def test_the_api_refuses_it_naming_the_field(api, db, fields, field, message):
    response = api("POST", "/v1/transactions", json={**VALID, **fields})

    assert response.status_code == 422, response.get_json()
    error = response.get_json()["error"]
    assert error["type"] == "validation_error"
    assert list(error["fields"]) == [field]
    assert message in error["fields"][field]
    assert count(db) == 0


def test_the_api_keeps_a_persian_name_and_an_emoji(api, db):
    name = "می\u200cخواهم 👩\u200d💻"

    response = api("POST", "/v1/transactions", json={**VALID, "customer_name": name})

    assert response.status_code == 201, response.get_json()
    assert response.get_json()["customer_name"] == name


FORM = {"transaction_ref": "TXN-FORM-1", "amount": "50", "currency": "USD"}


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("customer_name", "abc\u202egnp.exe\u200b", "U+202E"),
        ("transaction_ref", "TXN\u200b1", "U+200B"),
        ("failure_message", "a\u2067b", "U+2067"),
        ("metadata", '{"order_id": null}', 'Metadata "order_id": null'),
        ("metadata", '{"n": 1e30}', 'Metadata "n": numbers must lie within'),
        ("metadata", '{"k": "\u202ex"}', 'Metadata "k": the value must not contain'),
    ],
)
def test_the_form_refuses_it_next_to_the_field(
    client: FlaskClient, signed_in: Callable[..., User], db: Any, field: str, value: str, message: str
) -> None:
    signed_in("operator")

    response = client.post("/transactions/new", data={**FORM, field: value})

    assert response.status_code == 422
    page = response.get_data(as_text=True)
    error = re.search(rf'<p class="error" id="{field}-error">(.*?)</p>', page, re.S)
    assert error, f"no error next to {field}"
    assert message in html.unescape(error.group(1))
    assert count(db) == 0


def test_editing_the_contact_refuses_it(
    client: FlaskClient, signed_in: Callable[..., User], make_transaction: Callable[..., Transaction], db: Any
) -> None:
    user = signed_in("operator")
    transaction = make_transaction(user.organization, customer_name="Ada")

    response = client.post(
        f"/transactions/{transaction.id}/edit", data={"customer_name": "Ada\u202e", "customer_email": ""}
    )

    assert response.status_code == 422
    assert "U+202E" in response.get_data(as_text=True)
    db.session.expire_all()
    assert db.session.get(Transaction, transaction.id).customer_name == "Ada"


def test_a_csv_lists_each_such_row_with_its_reason_and_keeps_the_others(
    client: FlaskClient, signed_in: Callable[..., User], db: Any
) -> None:
    signed_in("operator")
    header = [*HEADER, "metadata"]
    records = [
        row(1),
        row(2, customer_name="abc\u202egnp.exe"),
        row(3, transaction_ref="CSV-\u200b3"),
        row(4, metadata='{"order_id": null}'),
        row(5, metadata='{"big": 1000000000000000000000000000000}'),
        row(6, metadata='{"k\u2066": "v"}'),
        row(7, customer_name="می\u200cخواهم"),
    ]

    response = upload(client, csv_bytes(records, header, bom=True))

    assert response.status_code == 302
    page = client.get(response.headers["Location"]).get_data(as_text=True)
    found = {line: reason for line, _ref, reason in problems(page)}
    assert set(found) == {3, 4, 5, 6, 7}
    assert found[3].startswith("customer_name: ") and "U+202E" in found[3]
    assert found[4].startswith("transaction_ref: ") and "U+200B" in found[4]
    assert 'Metadata "order_id": null' in found[5]
    assert 'Metadata "big": numbers must lie within' in found[6]
    assert "the key must not contain" in found[7] and "U+2066" in found[7]
    names = set(db.session.scalars(select(Transaction.customer_name)))
    assert names == {"Customer 1", "می\u200cخواهم"}  # the BOM at the file's start is still the CSV reader's


# --- pages and emails isolate what users typed ------------------------------------------------


def test_the_dashboard_and_the_detail_page_isolate_the_name(
    client: FlaskClient, signed_in: Callable[..., User], make_transaction: Callable[..., Transaction]
) -> None:
    user = signed_in("viewer")
    # Stored before the rules (or by hand): the page must still not let it reorder its neighbours.
    transaction = make_transaction(
        user.organization,
        customer_name="abc\u202egnp.exe",
        failure_message="ليس <b>bold</b>",
        meta={"note": "مرحبا"},
    )

    listing = client.get("/transactions").get_data(as_text=True)
    detail = client.get(f"/transactions/{transaction.id}").get_data(as_text=True)

    assert "<bdi>abc\u202egnp.exe</bdi>" in listing
    assert f'<bdi><a href="/transactions/{transaction.id}">{transaction.transaction_ref}</a></bdi>' in listing
    assert "<bdi>abc\u202egnp.exe</bdi>" in detail
    assert "<bdi>ليس &lt;b&gt;bold&lt;/b&gt;</bdi>" in detail
    assert "<dt><bdi>note</bdi></dt><dd><bdi>مرحبا</bdi></dd>" in detail


def test_the_html_email_isolates_the_names_and_the_reference():
    merchant = "\u0645\u062a\u062c\u0631 <Acme>"  # Arabic, with markup to escape
    facts = MessageFacts(
        merchant=merchant,
        brand_color="#1f6feb",
        customer_name="דוד",
        amount=5000,
        currency="usd",
        transaction_ref="TXN-1",
        failure_code=None,
        link="http://localhost/pay/x",
        unsubscribe_url="http://localhost/u/x",
        expires_at=datetime.now(UTC) + timedelta(days=7),
        timezone="UTC",
        locale="en",
        step=0,
        contact_email=None,
    )

    email = render_email(facts)

    assert "Hello <bdi>דוד</bdi>," in email.html
    assert "to <bdi>\u0645\u062a\u062c\u0631 &lt;Acme&gt;</bdi> did not go through." in email.html
    assert "<strong><bdi>TXN-1</bdi></strong>" in email.html
    assert "<bdi>" not in email.text and "<bdi>" not in email.subject
    assert "Hello דוד," in email.text


# --- the list's filters --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("query", "field", "message"),
    [
        ("currency=zzz", "currency", "ZZZ is not an ISO 4217 currency code"),
        ("currency=ZZZ", "currency", "ZZZ is not an ISO 4217 currency code"),
        ("currency=us", "currency", "three-letter"),
        ("q=" + "x" * 255, "q", "at most 254 characters"),
        ("date_from=2025-02-01&date_to=2025-01-01", "date_to", "is before 'From' (1 Feb 2025)"),
        ("sort=amount", "sort", "needs a currency filter"),
        ("status=lost", "status", "Unknown status"),
        ("limit=0", "limit", "1 to 100"),
        ("after=garbage", "after", "Not a cursor"),
    ],
)
def test_a_list_filter_that_cannot_match_is_422(api, query, field, message):
    response = api("GET", f"/v1/transactions?{query}")

    assert response.status_code == 422, response.get_json()
    error = response.get_json()["error"]
    assert error["type"] == "validation_error"
    assert field in error["fields"] and message in error["fields"][field]


def test_a_known_currency_that_no_row_has_is_an_empty_list(api):
    response = api("GET", "/v1/transactions?currency=XOF")

    assert response.status_code == 200
    assert response.get_json()["data"] == []


# --- over-long URLs, over real HTTP ----------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def gunicorn_serving(config: dict[str, Any], log_path: Path) -> Iterator[int]:
    """`gunicorn -c gunicorn.conf.py wsgi:app` from the repository root, one worker, on a free port."""
    port = free_port()
    env = {**os.environ, **{key: str(value) for key, value in config.items()}}
    command = [
        str(Path(sys.executable).parent / "gunicorn"),
        "-c",
        "gunicorn.conf.py",
        "wsgi:app",
        "--bind",
        f"127.0.0.1:{port}",
        "--workers",
        "1",
    ]
    with log_path.open("wb") as log:
        process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + 30
            while True:
                try:
                    socket.create_connection(("127.0.0.1", port), timeout=1).close()
                    break
                except OSError:
                    if process.poll() is not None or time.monotonic() > deadline:
                        raise RuntimeError(f"gunicorn did not start: {log_path.read_text()}") from None
                    time.sleep(0.1)
            yield port
        finally:
            process.terminate()
            process.wait(timeout=30)


@pytest.fixture(scope="module")
def served(redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    """No database is touched before a URL is judged, so an empty SQLite file serves."""
    folder = tmp_path_factory.mktemp("gunicorn-urls")
    config = base_config(f"sqlite:///{folder / 'empty.sqlite3'}", redis_url)
    with gunicorn_serving(config, folder / "gunicorn.log") as port:
        yield port


def get(port: int, target: str) -> tuple[int, str, str]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        connection.request("GET", target, headers={"Host": "localhost", "Authorization": "Bearer rcv_x"})
        response = connection.getresponse()
        return response.status, response.getheader("Content-Type") or "", response.read().decode()
    finally:
        connection.close()


def request_line_of(path: str, length: int) -> str:
    """`path?q=xxx...` whose request line (`GET <target> HTTP/1.1`) is `length` bytes."""
    overhead = len("GET ") + len(f"{path}?q=") + len(" HTTP/1.1")
    return f"{path}?q=" + "x" * (length - overhead)


@pytest.mark.parametrize("length", [5 * 1024, 8190])
def test_a_long_api_url_gets_the_json_414_up_to_gunicorns_maximum(served, length):
    status, content_type, body = get(served, request_line_of("/v1/transactions", length))

    assert status == 414
    assert content_type == "application/json"
    error = json.loads(body)["error"]
    assert error["type"] == "request_uri_too_long"
    assert "at most 4096" in error["message"]


def test_a_long_page_url_gets_the_apps_error_page(served):
    status, content_type, body = get(served, request_line_of("/transactions", 5 * 1024))

    assert status == 414
    assert content_type.startswith("text/html")
    assert "<!doctype html>" in body.lower() and "4096" in body


def test_a_url_at_the_limit_is_served(served):
    target = "/v1/transactions?q=" + "x" * (4096 - len("/v1/transactions?q="))

    status, _content_type, body = get(served, target)

    assert status == 401  # judged on its token, not its length
    assert json.loads(body)["error"]["type"] == "unauthorized"


def test_past_gunicorns_maximum_gunicorn_answers_itself(served):
    """The documented remainder (docs/api.md): a request line over 8190 bytes never reaches the app."""
    status, content_type, body = get(served, request_line_of("/v1/transactions", 9 * 1024))

    assert status == 414
    assert content_type == "text/html" and "Request Line is too large" in body


@pytest.mark.parametrize(
    "metadata",
    [{"order": "abc\u202egnp.exe"}, {"ord\u200ber": "1"}, {"order": "pay\u200dpal"}, {"order": "\ufeff1"}],
)
def test_checkout_metadata_refuses_text_that_displays_otherwise(metadata) -> None:
    from recovery.payments.rules import PaymentRefused
    from recovery.payments.rules import clean_metadata as clean_checkout_metadata

    with pytest.raises(PaymentRefused, match="invisible or text-direction"):
        clean_checkout_metadata(metadata)


def test_checkout_metadata_keeps_joined_names() -> None:
    from recovery.payments.rules import clean_metadata as clean_checkout_metadata

    persian = "می\u200cخواهم"
    assert clean_checkout_metadata({"note": persian}) == {"note": persian}
