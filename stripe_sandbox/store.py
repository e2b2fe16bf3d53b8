"""The sandbox's state in one SQLite file: Stripe objects as JSON text keyed by id, plus bookkeeping.

One connection shared by all threads behind a re-entrant lock: the werkzeug
server's request threads and the webhook thread take turns, which is plenty for
a development tool and makes every business operation atomic. WAL mode lets a
second process (a restarted sandbox, a curious `sqlite3` shell) read meanwhile.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

SCHEMA = """
CREATE TABLE IF NOT EXISTS objects (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    type TEXT NOT NULL,
    data TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS objects_type_seq ON objects (type, seq);
CREATE TABLE IF NOT EXISTS idempotency (
    api_key TEXT NOT NULL,
    key TEXT NOT NULL,
    fingerprint TEXT NOT NULL,
    status INTEGER NOT NULL,
    body TEXT NOT NULL,
    created REAL NOT NULL,
    PRIMARY KEY (api_key, key)
);
CREATE TABLE IF NOT EXISTS webhook_endpoints (
    url TEXT PRIMARY KEY,
    secret TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS deliveries (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    event_id TEXT NOT NULL,
    url TEXT NOT NULL,
    secret TEXT NOT NULL,
    state TEXT NOT NULL DEFAULT 'pending',
    attempts INTEGER NOT NULL DEFAULT 0,
    next_at REAL NOT NULL,
    last_status INTEGER,
    last_error TEXT
);
CREATE INDEX IF NOT EXISTS deliveries_due ON deliveries (state, next_at);
CREATE TABLE IF NOT EXISTS requests (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    request_id TEXT NOT NULL,
    method TEXT NOT NULL,
    path TEXT NOT NULL,
    idempotency_key TEXT,
    status INTEGER NOT NULL,
    replayed INTEGER NOT NULL,
    created REAL NOT NULL,
    stripe_version TEXT
);
CREATE TABLE IF NOT EXISTS settings (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
"""

TABLES = ("objects", "idempotency", "webhook_endpoints", "deliveries", "requests", "settings")
# Idempotency keys live 24 hours, as on Stripe.
IDEMPOTENCY_TTL = 24 * 3600
# The request log is for tests counting calls, not an archive.
MAX_LOGGED_REQUESTS = 2000


class Store:
    """Typed access to the sandbox tables; `transaction()` groups writes and holds the lock."""

    def __init__(self, path: str | Path) -> None:
        if str(path) != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        self.lock = threading.RLock()
        self._depth = 0
        self._db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None, timeout=10)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA busy_timeout=10000")
        self._db.executescript(SCHEMA)
        columns = {row[1] for row in self._db.execute("PRAGMA table_info(requests)")}
        if "stripe_version" not in columns:  # a database file from before the column
            self._db.execute("ALTER TABLE requests ADD COLUMN stripe_version TEXT")

    def close(self) -> None:
        with self.lock:
            self._db.close()

    @contextmanager
    def transaction(self) -> Iterator[None]:
        """Run the block atomically; nested blocks join the outer transaction."""
        with self.lock:
            if self._depth:
                self._depth += 1
                try:
                    yield
                finally:
                    self._depth -= 1
                return
            self._db.execute("BEGIN IMMEDIATE")
            self._depth = 1
            try:
                yield
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            else:
                self._db.execute("COMMIT")
            finally:
                self._depth = 0

    def _rows(self, sql: str, args: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        with self.lock:
            return self._db.execute(sql, args).fetchall()

    def _run(self, sql: str, args: tuple[Any, ...] = ()) -> int:
        with self.lock:
            return self._db.execute(sql, args).lastrowid or 0

    # --- the clock: the sandbox's "now" can be moved forward for tests ---

    def now(self) -> int:
        return int(time.time() + self.clock_offset())

    def clock_offset(self) -> float:
        rows = self._rows("SELECT value FROM settings WHERE key = 'clock_offset'")
        return float(rows[0][0]) if rows else 0.0

    def advance_clock(self, seconds: float) -> None:
        offset = self.clock_offset() + seconds
        self._run("INSERT OR REPLACE INTO settings (key, value) VALUES ('clock_offset', ?)", (str(offset),))

    # --- Stripe objects ---

    def get(self, object_id: str, type: str | None = None) -> dict[str, Any] | None:
        rows = self._rows("SELECT type, data FROM objects WHERE id = ?", (object_id,))
        if not rows or (type is not None and rows[0][0] != type):
            return None
        return json.loads(rows[0][1])  # type: ignore[no-any-return]

    def put(self, obj: dict[str, Any], type: str | None = None) -> dict[str, Any]:
        """Insert or replace an object; its `object` field is its type unless one is given."""
        kind = type or obj["object"]
        data = json.dumps(obj, separators=(",", ":"))
        self._run(
            "INSERT INTO objects (id, type, data) VALUES (?, ?, ?)"
            " ON CONFLICT (id) DO UPDATE SET data = excluded.data",
            (obj["id"], kind, data),
        )
        return obj

    def find(
        self,
        type: str,
        filters: dict[str, Any] | None = None,
        *,
        limit: int = 10,
        starting_after: str | None = None,
        ending_before: str | None = None,
    ) -> tuple[list[dict[str, Any]], bool]:
        """Return objects newest first, filtered on top-level fields, and whether more follow."""
        where = ["type = ?"]
        args: list[Any] = [type]
        for field, value in (filters or {}).items():
            where.append(f"json_extract(data, '$.{field}') = ?")
            args.append(value)
        order = "DESC"
        for cursor, op in ((starting_after, "<"), (ending_before, ">")):
            if cursor:
                where.append(f"seq {op} COALESCE((SELECT seq FROM objects WHERE id = ?), -1)")
                args.append(cursor)
        if ending_before:
            order = "ASC"
        sql = f"SELECT data FROM objects WHERE {' AND '.join(where)} ORDER BY seq {order} LIMIT ?"
        rows = self._rows(sql, (*args, limit + 1))
        objects = [json.loads(row[0]) for row in rows[:limit]]
        if ending_before:
            objects.reverse()
        return objects, len(rows) > limit

    def expired_open_sessions(self, now: int) -> list[dict[str, Any]]:
        rows = self._rows(
            "SELECT data FROM objects WHERE type = 'checkout.session'"
            " AND json_extract(data, '$.status') = 'open' AND json_extract(data, '$.expires_at') <= ?",
            (now,),
        )
        return [json.loads(row[0]) for row in rows]

    # --- idempotency keys ---

    def idempotent_result(self, api_key: str, key: str, now: float) -> tuple[str, int, str] | None:
        """Return (fingerprint, status, body) of the first request made with this key, if still kept."""
        rows = self._rows(
            "SELECT fingerprint, status, body FROM idempotency WHERE api_key = ? AND key = ? AND created > ?",
            (api_key, key, now - IDEMPOTENCY_TTL),
        )
        return (rows[0][0], rows[0][1], rows[0][2]) if rows else None

    def save_idempotent_result(
        self, api_key: str, key: str, fingerprint: str, status: int, body: str, now: float
    ) -> None:
        with self.transaction():
            self._run("DELETE FROM idempotency WHERE created <= ?", (now - IDEMPOTENCY_TTL,))
            self._run(
                "INSERT OR REPLACE INTO idempotency (api_key, key, fingerprint, status, body, created)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                (api_key, key, fingerprint, status, body, now),
            )

    # --- webhook endpoints and deliveries ---

    def add_endpoint(self, url: str, secret: str) -> None:
        self._run("INSERT OR REPLACE INTO webhook_endpoints (url, secret) VALUES (?, ?)", (url, secret))

    def endpoints(self) -> list[tuple[str, str]]:
        return [(row[0], row[1]) for row in self._rows("SELECT url, secret FROM webhook_endpoints")]

    def enqueue_delivery(self, event_id: str, url: str, secret: str) -> None:
        self._run(
            "INSERT INTO deliveries (event_id, url, secret, next_at) VALUES (?, ?, ?, ?)",
            (event_id, url, secret, time.time()),
        )

    def next_delivery(self) -> tuple[int, str, str, str, int, float] | None:
        """Return the oldest pending delivery (seq, event_id, url, secret, attempts, next_at)."""
        rows = self._rows(
            "SELECT seq, event_id, url, secret, attempts, next_at FROM deliveries"
            " WHERE state = 'pending' ORDER BY next_at, seq LIMIT 1"
        )
        return tuple(rows[0]) if rows else None  # type: ignore[return-value]

    def record_attempt(
        self, seq: int, *, state: str, attempts: int, next_at: float, status: int | None, error: str | None
    ) -> None:
        self._run(
            "UPDATE deliveries SET state = ?, attempts = ?, next_at = ?, last_status = ?, last_error = ?"
            " WHERE seq = ?",
            (state, attempts, next_at, status, error, seq),
        )

    def deliveries(self) -> list[dict[str, Any]]:
        rows = self._rows(
            "SELECT seq, event_id, url, state, attempts, next_at, last_status, last_error"
            " FROM deliveries ORDER BY seq"
        )
        names = ("id", "event_id", "url", "state", "attempts", "next_at", "last_status", "last_error")
        return [dict(zip(names, row, strict=True)) for row in rows]

    # --- the request log ---

    def log_request(
        self,
        request_id: str,
        method: str,
        path: str,
        key: str | None,
        status: int,
        replayed: bool,
        stripe_version: str | None = None,
    ) -> None:
        with self.transaction():
            seq = self._run(
                "INSERT INTO requests (request_id, method, path, idempotency_key, status, replayed, created,"
                " stripe_version) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (request_id, method, path, key, status, int(replayed), time.time(), stripe_version),
            )
            self._run("DELETE FROM requests WHERE seq <= ?", (seq - MAX_LOGGED_REQUESTS,))

    def requests(self) -> list[dict[str, Any]]:
        rows = self._rows(
            "SELECT request_id, method, path, idempotency_key, status, replayed, created, stripe_version"
            " FROM requests ORDER BY seq"
        )
        return [
            {
                "id": row[0],
                "method": row[1],
                "path": row[2],
                "idempotency_key": row[3],
                "status": row[4],
                "replayed": bool(row[5]),
                "created": row[6],
                # The Stripe-Version header as sent; None when the client named none.
                "stripe_version": row[7],
            }
            for row in rows
        ]

    def reset(self) -> None:
        """Forget everything: objects, keys, endpoints added at runtime, deliveries, log, clock."""
        with self.transaction():
            for table in TABLES:
                self._run(f"DELETE FROM {table}")
