"""The command line: `flask create-org`, `create-user`, `link-stripe-account`, `seed-demo`."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import func, select

from recovery.models import AuditEvent, Organization, Transaction, User
from tests.conftest import login

GOOD_PASSWORD = "a long enough password"


@pytest.fixture
def run(app) -> Any:
    runner = app.test_cli_runner()

    def invoke(*args: str, input: str | None = None) -> Any:
        return runner.invoke(args=list(args), input=input)

    return invoke


def organizations(db: Any) -> list[Organization]:
    db.session.expire_all()
    return list(db.session.scalars(select(Organization).order_by(Organization.id)))


def find_user(db: Any, email: str) -> User | None:
    db.session.expire_all()
    return db.session.scalar(select(User).where(User.email == email))


# --- create-org ---------------------------------------------------------------------


def test_create_org(run, db):
    result = run("create-org", "--slug", "Acme", "--name", "  Acme Ltd ", "--timezone", "Europe/Berlin")

    assert result.exit_code == 0, result.output
    assert "Created organization acme (Acme Ltd)." in result.output
    [org] = organizations(db)
    assert (org.slug, org.name, org.timezone) == ("acme", "Acme Ltd", "Europe/Berlin")


def test_create_org_defaults_to_utc(run, db):
    assert run("create-org", "--slug", "acme", "--name", "Acme").exit_code == 0

    assert organizations(db)[0].timezone == "UTC"


def test_create_org_refuses_a_duplicate_slug(run, db):
    run("create-org", "--slug", "acme", "--name", "Acme")

    result = run("create-org", "--slug", "ACME", "--name", "Other Acme")

    assert result.exit_code == 2
    assert "An organization with slug 'acme' already exists." in result.output
    assert [o.name for o in organizations(db)] == ["Acme"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--slug", "acme corp"], "The slug must be 1–63 lower-case letters, digits or hyphens"),
        (["--slug", "-acme"], "The slug must be"),
        (["--slug", "acme-"], "The slug must be"),
        (["--slug", "ac_me"], "The slug must be"),
        (["--slug", "a" * 64], "The slug must be"),
        (["--slug", ""], "The slug must be"),
        (["--name", ""], "The name must have 1–200 characters."),
        (["--name", "n" * 201], "The name must have 1–200 characters."),
        (["--timezone", "Mars/Olympus"], "'Mars/Olympus' is not an IANA time zone"),
        (["--timezone", "utc"], "is not an IANA time zone"),
        (["--timezone", "+02:00"], "is not an IANA time zone"),
    ],
)
def test_create_org_refuses_bad_input(run, db, args, message):
    values = {"--slug": "acme", "--name": "Acme", "--timezone": "UTC"}
    values.update(dict(zip(args[::2], args[1::2], strict=True)))

    result = run("create-org", *[part for pair in values.items() for part in pair])

    assert result.exit_code == 2
    assert message in result.output
    assert organizations(db) == []


@pytest.mark.parametrize("missing", ["--slug", "--name"])
def test_create_org_requires_slug_and_name(run, db, missing):
    values = {"--slug": "acme", "--name": "Acme"}
    del values[missing]

    result = run("create-org", *[part for pair in values.items() for part in pair])

    assert result.exit_code == 2
    assert f"Missing option '{missing}'" in result.output


# --- create-user ----------------------------------------------------------------------


@pytest.fixture
def acme(run, db) -> Organization:
    assert run("create-org", "--slug", "acme", "--name", "Acme").exit_code == 0
    return organizations(db)[0]


def create_user(
    run: Any, *extra: str, email: str = "ops@acme.example", role: str = "operator", **kwargs: Any
) -> Any:
    return run("create-user", "--org", "acme", "--email", email, "--role", role, *extra, **kwargs)


# --- link-stripe-account ----------------------------------------------------------


def test_link_stripe_account_links_and_unlinks_with_an_audit_trail(run, db, acme):
    result = run("link-stripe-account", "--org", "acme", "acct_1Acme")

    assert result.exit_code == 0, result.output
    assert "Linked Stripe account acct_1Acme to acme." in result.output
    assert organizations(db)[0].stripe_account_id == "acct_1Acme"
    again = run("link-stripe-account", "--org", "acme", "acct_1Acme")
    assert again.exit_code == 0 and "Nothing changed" in again.output

    result = run("link-stripe-account", "--org", "acme", "--unlink")

    assert result.exit_code == 0, result.output
    assert organizations(db)[0].stripe_account_id is None
    actions = db.session.scalars(select(AuditEvent.action).order_by(AuditEvent.id)).all()
    assert actions[-2:] == ["organization.stripe_account_linked", "organization.stripe_account_unlinked"]


def test_link_stripe_account_refuses_an_account_linked_elsewhere(run, db, acme):
    assert run("create-org", "--slug", "other", "--name", "Other").exit_code == 0
    assert run("link-stripe-account", "--org", "other", "acct_1Shared").exit_code == 0

    result = run("link-stripe-account", "--org", "acme", "acct_1Shared")

    assert result.exit_code == 2
    assert "already linked to the organization 'other'; unlink it there first" in result.output
    assert organizations(db)[0].stripe_account_id is None


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--org", "acme", "cus_1Abc"], "is not a Stripe account id"),
        (["--org", "acme", "acct_1 Abc"], "is not a Stripe account id"),
        (["--org", "acme"], "Give an account id (acct_...) to link, or --unlink, not both."),
        (["--org", "acme", "acct_1Abc", "--unlink"], "Give an account id (acct_...) to link, or --unlink"),
        (["--org", "nobody", "acct_1Abc"], "No organization with slug 'nobody'"),
    ],
)
def test_link_stripe_account_refuses_bad_input(run, db, acme, args, message):
    result = run("link-stripe-account", *args)

    assert result.exit_code == 2
    assert message in result.output
    assert "Traceback" not in result.output
    assert organizations(db)[0].stripe_account_id is None


def test_create_user_with_password_option(run, db, acme, client):
    result = create_user(run, "--password", GOOD_PASSWORD, "--name", "Olive Ops")

    assert result.exit_code == 0, result.output
    assert "Created operator ops@acme.example in acme." in result.output
    user = find_user(db, "ops@acme.example")
    assert (user.organization_id, user.role, user.name) == (acme.id, "operator", "Olive Ops")
    assert GOOD_PASSWORD not in user.password_hash
    assert login(client, user, GOOD_PASSWORD).status_code == 302


def test_create_user_prompts_for_the_password_twice(run, db, acme):
    result = create_user(run, input=f"{GOOD_PASSWORD}\n{GOOD_PASSWORD}\n")

    assert result.exit_code == 0, result.output
    assert "Password:" in result.output
    assert "Repeat for confirmation:" in result.output
    assert GOOD_PASSWORD not in result.output, "the prompt does not echo"
    assert find_user(db, "ops@acme.example").check_password(GOOD_PASSWORD)


def test_create_user_prompt_refuses_different_passwords(run, db, acme):
    result = create_user(run, input=f"{GOOD_PASSWORD}\nsomething else entirely\n")

    assert result.exit_code != 0
    assert "The two entered values do not match." in result.output
    assert find_user(db, "ops@acme.example") is None


def test_create_user_normalises_the_email(run, db, acme):
    result = create_user(run, "--password", GOOD_PASSWORD, email="  Ops@ACME.example ")

    assert result.exit_code == 0, result.output
    assert find_user(db, "ops@acme.example") is not None


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--org", "nope"], "No organization with slug 'nope'; create it with `flask create-org`."),
        (["--email", "not-an-email"], "email"),
        (["--email", ""], "An email address is required."),
        (["--email", "taken@acme.example"], "taken@acme.example already has an account."),
        (["--email", "TAKEN@acme.example"], "taken@acme.example already has an account."),
        (["--password", "short"], "The password must have at least 12 characters."),
        (["--password", "p" * 257], "The password must have at most 256 characters."),
        (["--role", "superuser"], "Invalid value for '--role'"),
    ],
)
def test_create_user_refuses_bad_input(run, db, acme, make_user, args, message):
    make_user(org=acme, email="taken@acme.example")
    values = {"--org": "acme", "--email": "new@acme.example", "--role": "viewer", "--password": GOOD_PASSWORD}
    values.update(dict(zip(args[::2], args[1::2], strict=True)))

    result = run("create-user", *[part for pair in values.items() for part in pair])

    assert result.exit_code == 2
    assert message in result.output
    db.session.expire_all()
    assert db.session.scalar(select(func.count()).select_from(User)) == 1


@pytest.mark.parametrize("role", ["owner", "admin", "operator", "viewer"])
def test_create_user_accepts_every_role(run, db, acme, role):
    result = create_user(run, "--password", GOOD_PASSWORD, role=role, email=f"{role}@acme.example")

    assert result.exit_code == 0, result.output
    assert find_user(db, f"{role}@acme.example").role == role


# --- seed-demo ---------------------------------------------------------------------------

DEMO_LOGINS = ["owner@demo.example", "admin@demo.example", "operator@demo.example", "viewer@demo.example"]


def demo_counts(db: Any) -> dict[str, Any]:
    db.session.expire_all()
    org = db.session.scalar(select(Organization).where(Organization.slug == "demo"))
    transactions = db.session.scalars(select(Transaction).where(Transaction.organization_id == org.id)).all()
    users = db.session.scalars(select(User).where(User.organization_id == org.id)).all()
    return {
        "organizations": db.session.scalar(select(func.count()).select_from(Organization)),
        "transactions": len(transactions),
        "refs": len({t.transaction_ref for t in transactions}),
        "currencies": {t.currency for t in transactions},
        "failure_codes": {t.failure_code for t in transactions},
        "countries": {t.customer_country for t in transactions},
        "roles": sorted(u.role for u in users),
    }


def test_seed_demo_is_idempotent_and_prints_working_credentials(run, db, app):
    first = run("seed-demo")
    after_first = demo_counts(db)
    second = run("seed-demo")
    after_second = demo_counts(db)

    assert first.exit_code == second.exit_code == 0, first.output + second.output
    assert "Transactions: 200 created, 0 already there." in first.output
    assert "Transactions: 0 created, 200 already there." in second.output
    assert after_first == after_second
    assert after_first["organizations"] == 1
    assert after_first["transactions"] == after_first["refs"] == 200
    assert after_first["currencies"] >= {"usd", "eur", "gbp", "jpy"}
    assert after_first["failure_codes"] >= {
        "card_declined",
        "insufficient_funds",
        "expired_card",
        "authentication_required",
    }
    assert len(after_first["countries"]) >= 4
    assert after_first["roles"] == ["admin", "operator", "owner", "viewer"]

    password = first.output.split("password for all: ", 1)[1].split(")", 1)[0]
    for email in DEMO_LOGINS:
        assert email in first.output
        user = find_user(db, email)
        assert login(app.test_client(), user, password).status_code == 302


def test_seed_demo_completes_a_partial_demo(run, db):
    from recovery.models import AuditEvent, RecoveryAttempt

    run("seed-demo")
    # Two that the story leaves alone (failed, no recovery): only their "created" entry goes with them.
    gone = select(Transaction.id).where(Transaction.transaction_ref.in_(["DEMO-0001", "DEMO-0150"]))
    assert db.session.scalar(select(func.count()).where(RecoveryAttempt.transaction_id.in_(gone))) == 0
    db.session.execute(AuditEvent.__table__.delete().where(AuditEvent.transaction_id.in_(gone)))
    db.session.execute(Transaction.__table__.delete().where(Transaction.id.in_(gone)))
    db.session.commit()

    result = run("seed-demo")

    assert "Transactions: 2 created, 198 already there." in result.output
    assert demo_counts(db)["transactions"] == 200


def record_pid() -> int:
    """An RQ job: which process ran it, and whether the database pool there works."""
    import os

    from recovery.extensions import db
    from recovery.jobs import app_job

    @app_job
    def check() -> int:
        return int(db.session.scalar(select(func.count()).select_from(Organization)) or 0)

    check()
    return os.getpid()


@pytest.mark.parametrize(("flag", "forks"), [((), False), (("--fork",), True)])
def test_worker_runs_jobs_in_process_unless_told_to_fork(run, app, db, flag, forks):
    import os

    from recovery.queue import get_queue

    job = get_queue().enqueue(record_pid)
    result = run("worker", "--burst", "--without-scheduler", *flag)
    assert result.exit_code == 0, result.output
    job.refresh()
    assert job.get_status() == "finished", job.get_status()
    assert (job.return_value() != os.getpid()) is forks
    # The pool still works in this process after the job (it was not disposed under us).
    assert db.session.scalar(select(func.count()).select_from(Organization)) == 0


def test_worker_with_its_scheduler_places_the_periodic_jobs_and_sweeps_at_once(run, app, db):
    from rq.registry import ScheduledJobRegistry

    from recovery.queue import PERIODIC, is_waiting, redis_connection

    redis = redis_connection(app)
    result = run("worker", "--burst")

    assert result.exit_code == 0, result.output
    scheduled = set(ScheduledJobRegistry("default", connection=redis).get_job_ids())
    # Each periodic job ran in the burst (the send sweep at once) and placed its next slot's run.
    assert {job_id.rsplit("-", 1)[0] for job_id in scheduled} == {job.name for job in PERIODIC}
    assert all(is_waiting(redis, job_id) for job_id in scheduled)


def test_a_worker_start_removes_the_fixed_id_repeats_of_before_the_periodic_registry(run, app, db):
    from datetime import timedelta

    from rq import Repeat

    from recovery.queue import get_queue, is_waiting, redis_connection

    for legacy, path in (
        ("stripe-webhooks-sweeper", "recovery.webhooks.jobs.sweep_webhook_events"),
        ("stripe-webhooks-reconciler", "recovery.webhooks.jobs.reconcile_checkout_sessions"),
    ):  # as the workers placed them until December 2026
        get_queue().enqueue_in(
            timedelta(seconds=60), path, job_id=legacy, repeat=Repeat(times=600_000, interval=60)
        )

    result = run("worker", "--burst")

    assert result.exit_code == 0, result.output
    redis = redis_connection(app)
    assert not is_waiting(redis, "stripe-webhooks-sweeper")
    assert not is_waiting(redis, "stripe-webhooks-reconciler")


def test_a_worker_waits_for_redis_with_capped_jittered_backoff(monkeypatch):
    from redis.exceptions import ConnectionError as RedisConnectionError

    from recovery import worker as worker_module

    waits: list[float] = []
    monkeypatch.setattr(worker_module.time, "sleep", waits.append)

    class Flaky:
        """Refuses 8 pings, then answers."""

        refused = 8

        def ping(self) -> bool:
            if self.refused:
                self.refused -= 1
                raise RedisConnectionError("Connection refused.")
            return True

    worker_module.wait_for_redis(Flaky(), RedisConnectionError("lost"))  # type: ignore[arg-type]

    assert len(waits) == 9
    ceilings = [0.5, 1, 2, 4, 8, 10, 10, 10, 10]
    assert all(ceiling / 2 <= wait <= ceiling for wait, ceiling in zip(waits, ceilings, strict=True)), waits


@pytest.mark.parametrize(
    ("with_scheduler", "name"), [(True, "ArmingSimpleWorker"), (False, "SteadySimpleWorker")]
)
def test_an_idle_worker_wakes_every_worker_check_seconds(app, with_scheduler, name):
    from recovery.queue import redis_connection
    from recovery.worker import make_worker

    worker = make_worker(
        ["default"], redis_connection(app), fork=False, with_scheduler=with_scheduler, check_every=7
    )

    assert type(worker).__name__ == name
    assert worker.dequeue_timeout == 7  # RQ's own default is 405 s
    assert getattr(worker, "check_every", 7) == 7
