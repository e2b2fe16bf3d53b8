"""What one statement costs from Python: raw psycopg, SQLAlchemy Core, the ORM.

    .venv/bin/python -m bench.statement_cost [--repeat 2000]

Runs the checkout create's first two lookups (the API token by its hash,
the transaction by organization and reference) against the benchmark
database, each way, on one connection, and prints the mean time per
statement. Needs rows to find: run `bench.checkout_create` once first.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from typing import Any

import psycopg
import sqlalchemy as sa
from sqlalchemy.orm import Session

from bench import common
from recovery.models import ApiToken, Transaction

TOKEN_SQL = "SELECT * FROM api_token WHERE token_hash = %s"
TRANSACTION_SQL = "SELECT * FROM transaction WHERE organization_id = %s AND transaction_ref = %s"


def mean_ms(call: Callable[[], Any], repeat: int) -> float:
    for _ in range(50):  # psycopg prepares a statement on its fifth run
        call()
    started = time.perf_counter()
    for _ in range(repeat):
        call()
    return (time.perf_counter() - started) / repeat * 1000


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--repeat", type=int, default=2000)
    repeat = parser.parse_args().repeat
    url = sa.make_url(common.DATABASE_URL).set(drivername="postgresql+psycopg")
    engine = sa.create_engine(url)
    with engine.connect() as conn:
        token_hash = conn.scalar(sa.select(ApiToken.token_hash).order_by(ApiToken.id.desc()).limit(1))
        row = conn.execute(
            sa.select(Transaction.organization_id, Transaction.transaction_ref)
            .order_by(Transaction.id.desc())
            .limit(1)
        ).first()
    if token_hash is None or row is None:
        sys.exit("No token or transaction in the benchmark database: run bench.checkout_create first.")
    org_id, ref = row
    results: list[tuple[str, float]] = []
    with engine.connect() as conn:
        raw: psycopg.Connection[Any] = conn.connection.driver_connection  # type: ignore[assignment]
        results += [
            ("psycopg: token", mean_ms(lambda: raw.execute(TOKEN_SQL, (token_hash,)).fetchone(), repeat)),
            (
                "psycopg: transaction",
                mean_ms(lambda: raw.execute(TRANSACTION_SQL, (org_id, ref)).fetchone(), repeat),
            ),
        ]
        token_select = sa.select(ApiToken.__table__).where(ApiToken.__table__.c.token_hash == token_hash)
        results.append(("Core: token", mean_ms(lambda: conn.execute(token_select).first(), repeat)))
        raw.rollback()
    with Session(engine) as session:
        results += [
            (
                "ORM: token",
                mean_ms(
                    lambda: session.scalar(sa.select(ApiToken).where(ApiToken.token_hash == token_hash)),
                    repeat,
                ),
            ),
            (
                "ORM: transaction",
                mean_ms(
                    lambda: session.scalar(
                        sa.select(Transaction).where(
                            Transaction.organization_id == org_id, Transaction.transaction_ref == ref
                        )
                    ),
                    repeat,
                ),
            ),
        ]
    engine.dispose()
    for label, ms in results:
        print(f"{label:<24}{ms:8.3f} ms")


if __name__ == "__main__":
    main()
