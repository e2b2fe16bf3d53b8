"""What the benchmarks share: settings, the app, gunicorn, sign-in and the load loop.

Everything talks to loopback only. Every load loop is bounded twice: by a
duration and by a request count, whichever comes first.
"""

from __future__ import annotations

import importlib
import json
import math
import os
import re
import resource
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from http.client import HTTPConnection, HTTPException
from http.cookies import SimpleCookie
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import sqlalchemy as sa
from flask import Flask

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "bench" / "out"
# The checkout whose app is measured (BENCH_TREE, e.g. a worktree of an older
# main): its `recovery` is imported here and its gunicorn and workers run in it.
# The benchmarks, their floors and the Stripe sandbox always come from ROOT.
APP_ROOT = Path(os.environ.get("BENCH_TREE") or ROOT).resolve()
if APP_ROOT != ROOT:
    sys.path.insert(0, str(APP_ROOT))

DATABASE_URL = os.environ.get("BENCH_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/recovery_bench")
REDIS_URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/5")
HOST = "127.0.0.1"
PORT = int(os.environ.get("BENCH_PORT", "18080"))

ORG_SLUG = "bench"
ORG_NAME = "Bench Outfitters"
USER_EMAIL = "owner@bench.example"
PASSWORD = "bench-password-1"  # benchmark database only
CUSTOMERS = 250_000  # distinct customers; each has rows // CUSTOMERS transactions
SEARCH_EMAIL = "customer000042@example.com"


def app_config() -> dict[str, str]:
    """The settings the app runs with under benchmark (also gunicorn's environment)."""
    return {
        "APP_ENV": "development",
        "SECRET_KEY": "bench-only-secret-key",
        "DATABASE_URL": DATABASE_URL,
        "REDIS_URL": REDIS_URL,
        "LOG_LEVEL": "INFO",
    }


def make_app() -> Flask:
    from recovery import create_app

    return create_app(app_config())


def first_of(*names: str) -> Any:
    """The first of `module:attribute` names that imports: where a name lives in this tree or an older one."""
    for name in names:
        module, _, attribute = name.partition(":")
        try:
            return getattr(importlib.import_module(module), attribute)
        except (ImportError, AttributeError):
            continue
    raise ImportError(f"none of {', '.join(names)}")


def ensure_database() -> None:
    """Create the benchmark database if missing (PostgreSQL only)."""
    url = sa.make_url(DATABASE_URL)
    if not url.drivername.startswith("postgresql"):
        sys.exit(f"The benchmarks need PostgreSQL; BENCH_DATABASE_URL is {DATABASE_URL!r}.")
    admin = sa.create_engine(
        url.set(drivername="postgresql+psycopg", database="postgres"), isolation_level="AUTOCOMMIT"
    )
    try:
        with admin.connect() as conn:
            if not conn.scalar(sa.text("SELECT 1 FROM pg_database WHERE datname = :n"), {"n": url.database}):
                conn.execute(sa.text(f'CREATE DATABASE "{url.database}"'))
    except sa.exc.OperationalError as error:
        sys.exit(f"PostgreSQL is not reachable at {DATABASE_URL}: {str(error).splitlines()[0]}")
    finally:
        admin.dispose()


def ensure_schema(app: Flask) -> None:
    """Bring the schema to the migrations' head (what `flask db upgrade` does)."""
    from flask_migrate import upgrade

    with app.app_context():
        upgrade()


def ensure_org_and_user(
    app: Flask, slug: str = ORG_SLUG, name: str = ORG_NAME, email: str = USER_EMAIL
) -> int:
    """Create the organization and its owner if missing; return the organization id."""
    from recovery.extensions import db
    from recovery.models import Role
    from recovery.organizations.services import create_organization, get_by_slug
    from recovery.users.services import create_user

    with app.app_context():
        organization = get_by_slug(db.session, slug) or create_organization(db.session, slug, name)
        if db.session.scalar(sa.text('SELECT 1 FROM "user" WHERE email = :e'), {"e": email}) is None:
            create_user(db.session, organization.id, email, PASSWORD, Role.OWNER, "Bench Owner")
        db.session.commit()
        return organization.id


def raw_connection(autocommit: bool = False) -> Any:
    """A plain psycopg connection to the benchmark database (COPY, EXPLAIN, VACUUM)."""
    import psycopg

    return psycopg.connect(
        DATABASE_URL.replace("postgresql+psycopg://", "postgresql://"), autocommit=autocommit
    )


# --- processes -------------------------------------------------------------


def port_is_free(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex((HOST, port)) != 0


def wait_for_http(port: int, path: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            conn = HTTPConnection(HOST, port, timeout=2)
            conn.request("GET", path)
            if conn.getresponse().status < 500:
                return
        except (OSError, HTTPException):
            pass
        time.sleep(0.2)
    raise TimeoutError(f"nothing answered on {HOST}:{port}{path} within {timeout:.0f} s")


@contextmanager
def gunicorn(
    workers: int = 2,
    port: int = PORT,
    log_name: str = "gunicorn.log",
    extra_env: dict[str, str] | None = None,
    app: str = "wsgi:app",
    ready_path: str = "/login",
) -> Iterator[subprocess.Popen[bytes]]:
    """Run `gunicorn <app> -w N` (sync workers) on loopback; stop it afterwards.

    The app (`wsgi:app`) runs in APP_ROOT, anything else (the floors) in ROOT;
    both read the gunicorn.conf.py of their directory.
    """
    if not port_is_free(port):
        sys.exit(f"Port {port} is taken; set BENCH_PORT to a free one.")
    OUT.mkdir(exist_ok=True)
    log = (OUT / log_name).open("wb")
    command = [
        str(Path(sys.executable).parent / "gunicorn"),
        app,
        "-w",
        str(workers),
        "-b",
        f"{HOST}:{port}",
    ]
    process = subprocess.Popen(
        command,
        cwd=APP_ROOT if app == "wsgi:app" else ROOT,
        env={**os.environ, **app_config(), **(extra_env or {})},
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        wait_for_http(port, ready_path, timeout=60)
        yield process
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)
        log.close()


def child_pids(pid: int) -> list[int]:
    path = Path(f"/proc/{pid}/task/{pid}/children")
    return [int(p) for p in path.read_text().split()] if path.exists() else []


def rss_mb(pid: int) -> float:
    """Resident set size (VmRSS) of a process, in MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise LookupError(f"no VmRSS for {pid}")


def cpu_times() -> tuple[float, float]:
    """(busy, total) jiffies of the whole machine, from /proc/stat."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + fields[4]
    return sum(fields) - idle, sum(fields)


def idle_check(seconds: float = 2.0) -> float:
    """Percent of the machine busy before a run; warn when something else is using it."""
    busy_before, total_before = cpu_times()
    time.sleep(seconds)
    busy_after, total_after = cpu_times()
    busy = 100 * (busy_after - busy_before) / max(1, total_after - total_before)
    if busy > 10:
        print(f"warning: the machine is {busy:.0f}% busy before the run; figures will be pessimistic")
    return busy


# --- HTTP ------------------------------------------------------------------


_CSRF = re.compile(r'name="csrf_token"[^>]*value="([^"]+)"')


def sign_in(email: str = USER_EMAIL, password: str = PASSWORD, port: int = PORT) -> str:
    """Sign in through the login form (CSRF token included); return the Cookie header."""
    conn = HTTPConnection(HOST, port, timeout=30)
    conn.request("GET", "/login")
    response = conn.getresponse()
    page = response.read().decode()
    cookies = SimpleCookie(response.headers.get("Set-Cookie", ""))
    match = _CSRF.search(page)
    if match is None:
        raise RuntimeError("no csrf_token on /login")
    body = urlencode({"csrf_token": match.group(1), "email": email, "password": password, "next": ""})
    conn.request(
        "POST",
        "/login",
        body=body,
        headers={
            "Content-Type": "application/x-www-form-urlencoded",
            "Cookie": "; ".join(f"{k}={v.value}" for k, v in cookies.items()),
        },
    )
    response = conn.getresponse()
    response.read()
    if response.status != 302:
        raise RuntimeError(f"sign-in failed: HTTP {response.status}")
    cookies.load(response.headers.get("Set-Cookie", ""))
    conn.close()
    return "; ".join(f"{k}={v.value}" for k, v in cookies.items())


def fetch(path: str, cookie: str, port: int = PORT) -> tuple[int, str]:
    conn = HTTPConnection(HOST, port, timeout=30)
    conn.request("GET", path, headers={"Cookie": cookie})
    response = conn.getresponse()
    body = response.read().decode()
    conn.close()
    return response.status, body


@dataclass
class LoadResult:
    name: str
    path: str
    clients: int
    mode: str
    requests: int
    errors: int
    seconds: float
    rps: float
    p50_ms: float
    p95_ms: float
    p99_ms: float
    max_ms: float
    machine_cpu_pct: float
    loadgen_cpu_pct: float
    # (wall-clock send time, latency in ms) of every request
    samples: list[tuple[float, float]] = field(default_factory=list, repr=False)

    @classmethod
    def of(
        cls,
        name: str,
        path: str,
        clients: int,
        mode: str,
        samples: list[tuple[float, float]],
        errors: int,
        seconds: float,
        cpu: float,
        loadgen: float,
    ) -> LoadResult:
        latencies = sorted(latency for _, latency in samples)
        return cls(
            name=name,
            path=path,
            clients=clients,
            mode=mode,
            requests=len(latencies),
            errors=errors,
            seconds=round(seconds, 2),
            rps=len(latencies) / seconds if seconds else 0.0,
            p50_ms=round(percentile(latencies, 50), 2),
            p95_ms=round(percentile(latencies, 95), 2),
            p99_ms=round(percentile(latencies, 99), 2),
            max_ms=round(latencies[-1], 2) if latencies else math.nan,
            machine_cpu_pct=cpu,
            loadgen_cpu_pct=loadgen,
            samples=samples,
        )

    def window(self, start: float, end: float) -> LoadResult:
        """The same run, counting only the requests sent between two wall-clock times."""
        inside = [(at, latency) for at, latency in self.samples if start <= at <= end]
        return LoadResult.of(
            self.name,
            self.path,
            self.clients,
            self.mode,
            inside,
            self.errors,
            end - start,
            self.machine_cpu_pct,
            self.loadgen_cpu_pct,
        )

    @classmethod
    def pooled(cls, name: str, runs: list[LoadResult]) -> LoadResult:
        """Several runs of one load as one: their requests together, their time added up."""
        first = runs[0]
        return cls.of(
            name, first.path, first.clients, first.mode,
            [sample for run in runs for sample in run.samples],
            sum(run.errors for run in runs), sum(run.seconds for run in runs),
            max(run.machine_cpu_pct for run in runs), max(run.loadgen_cpu_pct for run in runs),
        )  # fmt: skip

    def row(self) -> str:
        return (
            f"{self.name:<12} {self.mode:<10} {self.requests:>7} {self.errors:>4} {self.rps:>8.0f}"
            f" {self.p50_ms:>7.2f} {self.p95_ms:>7.2f} {self.p99_ms:>7.2f} {self.max_ms:>7.1f}"
            f" {self.machine_cpu_pct:>5.0f}% {self.loadgen_cpu_pct:>5.0f}%"
        )

    def summary(self) -> dict[str, Any]:
        data = asdict(self)
        del data["samples"]
        return data


HEADER = (
    f"{'scenario':<12} {'mode':<10} {'requests':>7} {'err':>4} {'req/s':>8}"
    f" {'p50 ms':>7} {'p95 ms':>7} {'p99 ms':>7} {'max ms':>7} {'cpu':>6} {'loadgen':>6}"
)


def percentile(sorted_values: list[float], q: float) -> float:
    """Nearest-rank percentile of an already sorted list."""
    if not sorted_values:
        return math.nan
    rank = max(1, math.ceil(q / 100 * len(sorted_values)))
    return sorted_values[rank - 1]


def run_load(
    name: str,
    path: str,
    cookies: list[str],
    *,
    seconds: float,
    max_requests: int,
    rate: float | None = None,
    port: int = PORT,
    stop: threading.Event | None = None,
) -> LoadResult:
    """Hit `path` from one thread per cookie (one signed-in client each).

    Without `rate` every client sends its next request as soon as the last one
    answered (closed loop: the server is saturated). With `rate` (requests per
    second, all clients together) each client keeps to a fixed schedule and the
    latency is measured from the scheduled start, so a stall is not hidden by
    the requests it delayed (no coordinated omission). The run ends after
    `seconds`, `max_requests` or when `stop` is set, whichever comes first.
    """
    clients = len(cookies)
    samples: list[list[tuple[float, float]]] = [[] for _ in cookies]
    errors = [0] * clients
    budget = [max_requests]
    lock = threading.Lock()
    start = time.perf_counter() + 0.05
    deadline = start + seconds
    interval = clients / rate if rate else 0.0
    wall_offset = time.time() - time.perf_counter()

    def take() -> bool:
        with lock:
            if budget[0] <= 0 or (stop is not None and stop.is_set()):
                return False
            budget[0] -= 1
            return True

    def client(index: int) -> None:
        conn = HTTPConnection(HOST, port, timeout=30)
        headers = {"Cookie": cookies[index]}
        scheduled = start + index * interval / clients
        mine = samples[index]
        while True:
            if interval:
                now = time.perf_counter()
                if scheduled > now:
                    time.sleep(scheduled - now)
                began = scheduled
                scheduled += interval
            else:
                began = time.perf_counter()
            if began >= deadline or not take():
                break
            if not interval:
                began = time.perf_counter()
            try:
                conn.request("GET", path, headers=headers)
                response = conn.getresponse()
                response.read()
                ok = response.status == 200
            except (OSError, HTTPException):
                conn.close()
                ok = False
            mine.append((began + wall_offset, (time.perf_counter() - began) * 1000))
            if not ok:
                errors[index] += 1
        conn.close()

    threads = [threading.Thread(target=client, args=(i,), daemon=True) for i in range(clients)]
    usage_before = resource.getrusage(resource.RUSAGE_SELF)
    busy_before, total_before = cpu_times()
    time.sleep(max(0.0, start - time.perf_counter()))
    began = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=seconds + 60)
    elapsed = time.perf_counter() - began
    busy_after, total_after = cpu_times()
    usage_after = resource.getrusage(resource.RUSAGE_SELF)
    loadgen = (usage_after.ru_utime + usage_after.ru_stime) - (usage_before.ru_utime + usage_before.ru_stime)
    return LoadResult.of(
        name,
        path,
        clients,
        f"{rate:.0f}/s" if rate else "closed",
        sorted(x for per_client in samples for x in per_client),
        sum(errors),
        elapsed,
        100 * (busy_after - busy_before) / max(1, total_after - total_before),
        100 * loadgen / elapsed if elapsed else 0.0,
    )


def write_json(name: str, data: Any) -> Path:
    OUT.mkdir(exist_ok=True)
    path = OUT / f"{name}-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps(data, indent=2, default=str))
    return path
