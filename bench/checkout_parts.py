"""Where a Checkout Session create spends its time, part by part, in process.

    .venv/bin/python -m bench.checkout_parts [--requests 300]

Starts the Stripe sandbox, makes fresh transactions as `bench.checkout_create`
does, then sends the creates through Flask's test client (no HTTP) with a
timer around each part of the request: the token, the transaction lookup,
the reservation, the Customer, the organization, the two Stripe calls, the
final flush and commit. Prints the mean per create. The timers wrap the
functions by name, so a part that is renamed drops out of the table.
"""

from __future__ import annotations

import argparse
import functools
import os
import tempfile
import time
from collections import defaultdict
from typing import Any

from bench import checkout_create, common


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--warmup", type=int, default=50)
    args = parser.parse_args()
    common.ensure_database()
    token, refs = checkout_create.prepare(args.warmup + args.requests)
    with tempfile.TemporaryDirectory() as state:
        sandbox = checkout_create.start_sandbox(state)
        try:
            measure(token, refs, args.warmup)
        finally:
            sandbox.terminate()
            sandbox.wait(timeout=10)


def measure(token: str, refs: list[str], warmup: int) -> None:
    from sqlalchemy.orm import scoping

    from recovery.payments import checkout, gateway
    from recovery.tokens import services as tokens

    spent: defaultdict[str, float] = defaultdict(float)

    def timed(owner: Any, name: str, label: str) -> None:
        inner = getattr(owner, name)

        @functools.wraps(inner)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            started = time.perf_counter()
            try:
                return inner(*args, **kwargs)
            finally:
                spent[label] += time.perf_counter() - started

        setattr(owner, name, wrapper)

    timed(tokens, "verify_token", "token")
    timed(checkout, "transaction_by_ref", "transaction (and organization) lookup")
    timed(checkout, "_reserve", "reservation, committed")
    timed(checkout, "get_or_create_customer", "Customer (Stripe call included)")
    timed(gateway.StripeGateway, "create_customer", "Stripe: create Customer")
    timed(gateway.StripeGateway, "create_checkout_session", "Stripe: create session")
    timed(scoping.scoped_session, "get", "organization (session.get)")
    timed(scoping.scoped_session, "commit", "commits in the view (the final one)")
    from recovery import create_app

    os.environ.update(checkout_create.stripe_env())
    app = create_app({**common.app_config(), "LOG_LEVEL": "WARNING"})  # as the HTTP benchmark runs
    wsgi = app.wsgi_app

    def whole(environ: Any, start_response: Any) -> Any:
        started = time.perf_counter()
        try:
            return wsgi(environ, start_response)
        finally:
            spent["whole request (Flask's wsgi_app)"] += time.perf_counter() - started

    app.wsgi_app = whole  # type: ignore[method-assign]
    client = app.test_client()
    headers = {"Authorization": f"Bearer {token}"}
    for i, ref in enumerate(refs):
        if i == warmup:
            spent.clear()
        response = client.post(
            "/v1/payments/stripe/checkout-sessions",
            json={"transaction_ref": ref, "metadata": {"order_id": ref}},
            headers=headers,
        )
        if response.status_code != 201:
            raise RuntimeError(f"{ref}: HTTP {response.status_code} {response.data[:300]!r}")
    count = len(refs) - warmup
    stripe_ms = (spent["Stripe: create Customer"] + spent["Stripe: create session"]) / count * 1000
    for label, seconds in sorted(spent.items(), key=lambda item: -item[1]):
        print(f"{seconds / count * 1000:8.3f} ms  {label}")
    whole_ms = spent["whole request (Flask's wsgi_app)"] / count * 1000
    print(f"{whole_ms - stripe_ms:8.3f} ms  whole request without the two Stripe calls")


if __name__ == "__main__":
    main()
