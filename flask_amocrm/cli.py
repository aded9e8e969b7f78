"""The ``flask amocrm`` command group."""

from __future__ import annotations

import json

import click
from flask import current_app
from flask.cli import AppGroup
from sqlalchemy import func, select

from .extension import get_state
from .models import FAILED, RETRYING, STATUSES, Event, utcnow

amocrm_cli = AppGroup("amocrm", help="Flask-AmoCRM: deliver site events to amoCRM.")


@amocrm_cli.command("init-db")
def init_db() -> None:
    """Create the amocrm_* tables that do not exist yet."""
    get_state().create_tables()
    click.echo("Flask-AmoCRM tables are ready.")


@amocrm_cli.command("worker")
@click.option("--burst", is_flag=True, help="Stop when the queue is empty.")
@click.option("--with-scheduler", is_flag=True,
              help="Also run delayed jobs and the periodic sweeper.")
@click.option("--maintenance-interval", default=60, show_default=True,
              help="Seconds between maintenance passes (registry cleanup, sweeper).")
def worker(burst: bool, with_scheduler: bool, maintenance_interval: int) -> None:
    """Run an RQ worker for the amoCRM queue, with this app bound to its jobs."""
    from .worker.job_class import AmoWorker, bind_app
    from .worker.queue import get_queue
    from .worker.sweeper import ensure_sweeper

    state = get_state()
    if not state.settings.redis_url:
        raise click.UsageError("AMOCRM_REDIS_URL is not set: the worker needs Redis. "
                               "Without Redis use 'flask amocrm process'.")
    bind_app(current_app._get_current_object())  # type: ignore[attr-defined]
    queue = get_queue(state, for_worker=True)
    if with_scheduler:
        ensure_sweeper()
    AmoWorker([queue], connection=queue.connection,
              maintenance_interval=maintenance_interval).work(
        burst=burst, with_scheduler=with_scheduler
    )


@amocrm_cli.command("process")
@click.option("--limit", type=int, default=None,
              help="Deliver at most this many events (default: AMOCRM_BATCH_SIZE).")
@click.option("--all", "everything", is_flag=True, help="Deliver every due event.")
def process_command(limit: int | None, everything: bool) -> None:
    """Deliver due events now, in this process (cron, or sites without Redis)."""
    from .worker.sweeper import process

    state = get_state()
    if everything:
        limit = None
    elif limit is None:
        limit = state.settings.batch_size
    counts = process(limit)
    click.echo(json.dumps(counts, sort_keys=True))


@amocrm_cli.command("retry")
@click.argument("event_id", type=int, required=False)
@click.option("--failed", "all_failed", is_flag=True, help="Retry every failed event.")
def retry(event_id: int | None, all_failed: bool) -> None:
    """Make a failed (or waiting) event due again, once its rule is fixed."""
    if (event_id is None) == (not all_failed):
        raise click.UsageError("Give an event id or --failed.")
    from .worker.queue import enqueue_event

    state = get_state()
    with state.session() as session:
        if all_failed:
            events = list(session.scalars(select(Event).where(Event.status == FAILED)))
        else:
            event = session.get(Event, event_id)
            if event is None:
                raise click.ClickException(f"There is no event {event_id}.")
            events = [event]
        for event in events:
            event.status = RETRYING
            event.next_attempt_at = utcnow()
            event.locked_until = None
        session.commit()
        ids = [e.id for e in events]
    if state.settings.delivery == "rq":
        for i in ids:
            enqueue_event(state, i)
    click.echo(f"{len(ids)} event(s) will be retried.")


@amocrm_cli.command("status")
def status() -> None:
    """Show how many events are in each state."""
    state = get_state()
    with state.session() as session:
        rows = dict(session.execute(
            select(Event.status, func.count()).group_by(Event.status)).all())
    for name in STATUSES:
        click.echo(f"{name:<11}{rows.get(name, 0)}")


@amocrm_cli.command("auth")
@click.argument("code", required=False)
def auth_command(code: str | None) -> None:
    """Connect amoCRM over OAuth: exchange an authorization CODE for tokens.

    Without CODE, print the address where an admin allows access and gets one.
    """
    from .amo import authorize_url, exchange_code
    from .errors import AmoCRMError

    state = get_state()
    settings = state.settings
    if not settings.client_id:
        raise click.UsageError("AMOCRM_CLIENT_ID is not set: this app uses a "
                               "long-lived token (AMOCRM_TOKEN), nothing to connect.")
    if not code:
        click.echo("Open this address, allow access, and run "
                   "'flask amocrm auth CODE' with the code you get (valid 20 minutes):")
        click.echo(authorize_url(settings))
        return
    try:
        row = exchange_code(state, code)
    except AmoCRMError as exc:
        raise click.ClickException(f"amoCRM refused the code: {exc}") from None
    click.echo(f"Connected to {row.base_url}; the access token expires at "
               f"{row.expires_at:%Y-%m-%d %H:%M} UTC and is refreshed automatically.")


@amocrm_cli.command("sync")
def sync_command() -> None:
    """Fetch the account's pipelines, users, fields and task types again."""
    from .amo import sync_metadata
    from .errors import AmoCRMError

    try:
        meta = sync_metadata(get_state())
    except AmoCRMError as exc:
        raise click.ClickException(f"Could not read the account: {exc}") from None
    fields = sum(len(meta.fields(entity)) for entity in ("leads", "contacts",
                                                        "companies"))
    click.echo(f"{len(meta.pipelines)} pipelines, {len(meta.users)} users, "
               f"{fields} custom fields, {len(meta.task_types)} task types.")
