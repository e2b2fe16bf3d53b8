"""Command-line entry points: `flask create-org`, `create-user`, `create-api-token`,
`link-stripe-account`, `seed-demo`, `worker`."""

from __future__ import annotations

from collections.abc import Callable
from functools import wraps
from typing import Any

import click
from flask import Flask

from recovery.audit import Actor
from recovery.config import settings
from recovery.extensions import db
from recovery.models import Role, utcnow
from recovery.organizations.services import create_organization, get_by_slug
from recovery.refusals import Refused
from recovery.tokens.services import MAX_EXPIRES_DAYS, create_token, expiry_after
from recovery.unit_of_work import commit_now, on_commit
from recovery.users.services import create_user


def unit_of_work(command: Callable[..., None]) -> Callable[..., None]:
    """Run a command as one unit of work, as a request is: one commit when it returns.

    What it has to say (`say`) is printed once that commit has happened, so a
    command never reports what did not happen; a refusal rolls everything back
    and is shown as the command's usage error.
    """

    @wraps(command)
    def run(*args: Any, **kwargs: Any) -> None:
        try:
            command(*args, **kwargs)
        except Refused as error:
            db.session.rollback()
            raise click.UsageError(str(error)) from None
        except BaseException:
            db.session.rollback()
            raise
        db.session.commit()

    return run


def say(text: str, *, err: bool = False) -> None:
    """Print `text` once the command's work has committed."""
    on_commit(db.session, click.echo, text, err=err)


def init_app(app: Flask) -> None:
    for command in (
        create_org,
        create_user_command,
        create_api_token,
        link_stripe_account,
        seed_demo,
        worker,
        import_csv_command,
    ):
        app.cli.add_command(command)


@click.command("create-org")
@click.option("--slug", required=True, help="Short unique id, e.g. acme.")
@click.option("--name", required=True, help="The merchant's name as customers see it.")
@click.option("--timezone", default="UTC", show_default=True, help="IANA time zone.")
@unit_of_work
def create_org(slug: str, name: str, timezone: str) -> None:
    """Create an organization (a merchant)."""
    organization = create_organization(db.session, slug, name, timezone)
    say(f"Created organization {organization.slug} ({organization.name}).")


@click.command("create-user")
@click.option("--org", "org_slug", required=True, help="The organization's slug.")
@click.option("--email", required=True)
@click.option("--role", type=click.Choice([r.value for r in Role]), required=True)
@click.option("--name", default="")
@click.option(
    "--password", prompt=True, hide_input=True, confirmation_prompt=True, help="Prompted if not given."
)
@unit_of_work
def create_user_command(org_slug: str, email: str, role: str, name: str, password: str) -> None:
    """Create a staff user in an organization."""
    organization = get_by_slug(db.session, org_slug.strip().lower())
    if organization is None:
        raise click.UsageError(f"No organization with slug {org_slug!r}; create it with `flask create-org`.")
    user = create_user(db.session, organization.id, email, password, role, name)
    say(f"Created {user.role} {user.email} in {organization.slug}.")


@click.command("create-api-token")
@click.option("--org", "org_slug", required=True, help="The organization's slug.")
@click.option("--role", type=click.Choice([r.value for r in Role]), required=True)
@click.option("--name", default="CLI token", show_default=True, help="What the token is for.")
@click.option(
    "--expires-days",
    type=click.IntRange(1, MAX_EXPIRES_DAYS),
    default=None,
    help="Days until the token stops working (default: never).",
)
@unit_of_work
def create_api_token(org_slug: str, role: str, name: str, expires_days: int | None) -> None:
    """Create a Bearer token for the JSON API and print it (once)."""
    organization = get_by_slug(db.session, org_slug.strip().lower())
    if organization is None:
        raise click.UsageError(f"No organization with slug {org_slug!r}; create it with `flask create-org`.")
    token, raw = create_token(
        db.session,
        organization.id,
        name,
        role,
        created_by=None,
        actor=Actor.system(organization.id, "command line"),
        expires_at=expiry_after(expires_days),
    )
    expiry = f", expires {token.expires_at:%Y-%m-%d %H:%M} UTC" if token.expires_at else ""
    # Only the token on stdout, so that `TOKEN=$(flask create-api-token ...)` works.
    say(f"Created {token.role} API token {token.name!r} for {organization.slug}{expiry}:", err=True)
    say(raw)
    say("Copy it now: it is not stored and will not be shown again.", err=True)


@click.command("link-stripe-account")
@click.option("--org", "org_slug", required=True, help="The organization's slug.")
@click.argument("account_id", required=False)
@click.option(
    "--unlink", is_flag=True, help="Stop treating the linked account's events as the organization's."
)
@unit_of_work
def link_stripe_account(org_slug: str, account_id: str | None, unlink: bool) -> None:
    """Treat a Stripe Connect account's events (acct_...) as an organization's.

    For the platform's operator, once Stripe shows the account connected to the
    platform: the organization then receives that account's failed payments and
    its customers' details, so merchants cannot link accounts themselves.
    """
    from recovery.webhooks.stripe_account import link_stripe_account as link

    if unlink == bool(account_id):
        raise click.UsageError("Give an account id (acct_...) to link, or --unlink, not both.")
    organization = get_by_slug(db.session, org_slug.strip().lower())
    if organization is None:
        raise click.UsageError(f"No organization with slug {org_slug!r}; create it with `flask create-org`.")
    changed = link(db.session, organization, Actor.system(organization.id, "command line"), account_id)
    if not changed:
        say(f"Nothing changed: {organization.slug} already has {account_id or 'no linked account'}.")
    elif account_id:
        say(f"Linked Stripe account {account_id} to {organization.slug}.")
    else:
        say(f"{organization.slug} has no linked Stripe account now.")


@click.command("import-csv")
@click.option("--org", "org_slug", required=True, help="The organization's slug.")
@click.option(
    "--map",
    "maps",
    multiple=True,
    metavar="FIELD=COLUMN",
    help="Which column holds a field, e.g. --map amount=Amount (repeatable; FIELD= leaves a field out). "
    "Fields not given keep the mapping last confirmed for this header, or the one proposed.",
)
@click.argument("path", type=click.Path(exists=True, dir_okay=False))
@unit_of_work
def import_csv_command(org_slug: str, maps: tuple[str, ...], path: str) -> None:
    """Import a CSV of failed payments (our template or a Stripe payments export) now."""
    from recovery.imports import running, services
    from recovery.imports.mapping import MappingRefused

    organization = get_by_slug(db.session, org_slug.strip().lower())
    if organization is None:
        raise click.UsageError(f"No organization with slug {org_slug!r}; create it with `flask create-org`.")
    chosen: dict[str, str] = {}
    for item in maps:
        field, equals, column = item.partition("=")
        if not equals or not field.strip():
            raise click.UsageError(f"--map {item!r}: write FIELD=COLUMN, e.g. --map amount=Amount.")
        chosen[field.strip()] = column
    config = settings()
    with open(path, "rb") as file:
        data = file.read(config.csv_max_bytes + 1)
    actor = Actor.system(organization.id, "command line")
    try:
        csv_import = services.create_import(
            db.session, actor, path.rsplit("/", 1)[-1], data, config.csv_max_bytes, mapping=chosen
        )
    except MappingRefused as error:
        lines = "\n".join(f"  {field}: {message}" for field, message in error.errors.items())
        raise click.UsageError("The columns cannot be used as mapped:\n" + lines) from None
    commit_now(db.session, "the import exists before its chunks go in")
    csv_import = running.run_import(db.session, csv_import.id, config.csv_chunk_rows)
    say(
        f"Import {csv_import.id}: {csv_import.imported_rows} imported, "
        f"{csv_import.duplicate_rows} duplicates, {csv_import.invalid_rows} invalid, "
        f"{csv_import.skipped_rows} skipped (not failed)."
    )
    for kind, rows in (("warning", csv_import.warnings), ("not imported", csv_import.problems)):
        for problem in rows or ():
            say(f"Row {problem['row']} ({kind}): {problem['reason']}")


@click.command("seed-demo")
@unit_of_work
def seed_demo() -> None:
    """Load the demo organization, its users and ~200 failed transactions (idempotent)."""
    from recovery.demo import seed

    result = seed(db.session, base_url=settings().base_url)
    say(f"Demo organization: {result.organization.name} ({result.organization.slug})")
    say(f"Transactions: {result.created} created, {result.existing} already there.")
    say("Demo logins (password for all: " + result.password + "):")
    for role, email in result.logins:
        say(f"  {role:<9} {email}")


@click.command("worker")
@click.option("--queue", "queues", multiple=True, help="Queue to listen on (repeatable).")
@click.option("--with-scheduler/--without-scheduler", default=True, show_default=True)
@click.option("--burst", is_flag=True, help="Stop when the queues are empty.")
@click.option(
    "--fork/--no-fork",
    default=False,
    show_default=True,
    help="Run each job in a forked work horse (RQ's default) instead of in the worker itself.",
)
def worker(queues: tuple[str, ...], with_scheduler: bool, burst: bool, fork: bool) -> None:
    """Run an RQ worker inside the app, with its scheduler and the periodic sweepers.

    Jobs run in the worker process by default (RQ's SimpleWorker): forking the
    app for every job and connecting to the database afresh cost ~70 ms a job,
    several times the work of processing a webhook or sending a message. Our
    jobs are short, keep no state between runs and have RQ's timeouts; a crash
    takes the worker down and the process manager starts it again. A Redis
    outage does not: the worker waits for Redis and works on (recovery/worker.py),
    except with --burst.
    """
    from recovery.queue import arm_periodic, get_queue, redis_connection, remove
    from recovery.worker import make_worker, wait_until_redis_answers

    names = list(queues) or list(settings().queues)
    connection = redis_connection()
    if not burst:
        wait_until_redis_answers(connection)
    rq_worker = make_worker(
        names,
        connection,
        fork=fork,
        with_scheduler=with_scheduler,
        check_every=settings().worker_check_seconds,
    )
    if with_scheduler:
        # The worker's maintenance rounds keep the periodic jobs placed (recovery/worker.py);
        # this first round also runs the send sweep now, not at the next minute: a restart
        # is when sends are likeliest overdue.
        arm_periodic(utcnow(), get_queue(names[0]), starting=True)
        # Until December 2026 these two repeated under fixed ids (RQ Repeat); a Redis kept
        # across that upgrade still holds them, and they would run beside their chains.
        for legacy in ("stripe-webhooks-sweeper", "stripe-webhooks-reconciler"):
            remove(legacy, connection)
    rq_worker.work(with_scheduler=with_scheduler, burst=burst)
