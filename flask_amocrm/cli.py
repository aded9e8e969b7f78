"""The ``flask amocrm`` command group."""

from __future__ import annotations

import json

import click
from flask import current_app
from flask.cli import AppGroup
from sqlalchemy import func, select

from .amo.auth import authorize_url
from .amo.connect import exchange_code
from .amo.metadata import clear_metadata, metadata_for, sync_metadata
from .errors import AmoCRMError, ImportRowError
from .importer import import_rows, read_rows
from .models import FAILED, IGNORED, STATUSES, Event
from .outbox import make_due
from .rules.check import check_rules
from .rules.schema import find_rule
from .state import get_state
from .worker.agent import process
from .worker.amo_worker import AmoWorker
from .worker.dispatch import hand_off_many
from .worker.markers import forget_marker_field
from .worker.outage import current as current_outage
from .worker.outage import paused, reconnected
from .worker.preview import preview
from .worker.queue import get_queue
from .worker.rules_file import rules_age
from .worker.schedule import ensure_tick, housekeeping

amocrm_cli = AppGroup("amocrm", help="Flask-AmoCRM: deliver site events to amoCRM.")


@amocrm_cli.command("init-db")
def init_db() -> None:
    """Create the amocrm_* tables that do not exist yet."""
    get_state().create_tables()
    click.echo("Flask-AmoCRM tables are ready.")


@amocrm_cli.command("worker")
@click.option("--burst", is_flag=True, help="Stop when the queue is empty.")
@click.option(
    "--with-scheduler/--without-scheduler",
    default=True,
    show_default=True,
    help="Also run delayed jobs and the periodic tasks (sweeper, retries, "
    "agent, retention, token keep-alive); one scheduler is active at a "
    "time however many workers run it.",
)
@click.option(
    "--maintenance-interval",
    default=60,
    show_default=True,
    help="Seconds between maintenance passes (registry cleanup, keeping "
    "the periodic tasks scheduled).",
)
def worker(burst: bool, with_scheduler: bool, maintenance_interval: int) -> None:
    """Run an RQ worker for the amoCRM queue, with this app bound to its jobs."""
    state = get_state()
    if not state.settings.redis_url:
        raise click.UsageError(
            "AMOCRM_REDIS_URL is not set: the worker needs Redis. "
            "Without Redis use 'flask amocrm process'."
        )
    app = current_app._get_current_object()  # type: ignore[attr-defined]
    queue = get_queue(state, for_worker=True)
    if with_scheduler:
        ensure_tick(state)
    AmoWorker(
        [queue],
        apps=[app],
        connection=queue.connection,
        maintenance_interval=maintenance_interval,
    ).work(burst=burst, with_scheduler=with_scheduler)


@amocrm_cli.command("process")
@click.option(
    "--limit",
    type=int,
    default=None,
    help="Deliver at most this many events (default: AMOCRM_BATCH_SIZE).",
)
@click.option(
    "--now",
    "--all",
    "everything",
    is_flag=True,
    help="Deliver every due event now, not just one batch.",
)
def process_command(limit: int | None, everything: bool) -> None:
    """Deliver due events in this process: the agent run for cron, or for sites
    without Redis. Also runs the hourly housekeeping (retention, token keep-alive)."""
    state = get_state()
    if everything:
        limit = None
    elif limit is None:
        limit = state.settings.batch_size
    counts = process(state, limit)
    counts.update(housekeeping(state))
    click.echo(json.dumps(counts, sort_keys=True))


@amocrm_cli.command("retry")
@click.argument("event_id", type=int, required=False)
@click.option("--failed", "all_failed", is_flag=True, help="Retry every failed event.")
@click.option(
    "--ignored",
    "all_ignored",
    is_flag=True,
    help="Replay every event that arrived while no rule existed for it.",
)
def retry(event_id: int | None, all_failed: bool, all_ignored: bool) -> None:
    """Make a failed (or waiting) event due again, once its rule is fixed."""
    if (event_id is not None) + all_failed + all_ignored != 1:
        raise click.UsageError("Give an event id, --failed or --ignored.")
    state = get_state()
    if all_failed or all_ignored:
        ids = make_due(state, status=FAILED if all_failed else IGNORED)
    else:
        assert event_id is not None
        ids = make_due(state, ids=[event_id])
        if not ids:
            raise click.ClickException(f"There is no event {event_id}.")
    if state.settings.delivery == "rq":
        hand_off_many(state, ids)
    click.echo(f"{len(ids)} event(s) will be retried.")
    if state.settings.rules_file:
        click.echo(
            "Workers read the rules file again before their next batch when it "
            "changed (see 'flask amocrm status')."
        )


@amocrm_cli.command("import")
@click.argument("path", type=click.Path(exists=True, dir_okay=False))
def import_command(path: str) -> None:
    """Import past form results or mail events from a CSV or JSON-lines file and
    deliver them like live events. Rows imported before are skipped."""
    state = get_state()
    try:
        rows = list(read_rows(path))
    except ImportRowError as exc:
        raise click.ClickException(f"{path}: {exc}") from None
    with click.progressbar(length=len(rows), label="Importing") as bar:
        added: list[int] = []
        skipped = 0
        for start in range(0, len(rows), 200):
            new, old = import_rows(state, rows[start : start + 200])
            added += new
            skipped += old
            bar.update(len(new) + old)
    click.echo(f"{len(added)} event(s) imported, {skipped} already imported before.")
    mode = state.settings.delivery
    if mode == "rq":
        with click.progressbar(added, label="Queueing") as ids:
            hand_off_many(state, ids)
    elif mode == "inline":
        click.echo(json.dumps(process(state, None), sort_keys=True))
    else:
        click.echo("They will be delivered by the next agent run.")


@amocrm_cli.command("status")
def status() -> None:
    """Show how many events are in each state."""
    state = get_state()
    with state.session() as session:
        rows = dict(
            session.execute(
                select(Event.status, func.count()).group_by(Event.status)
            ).all()
        )
    for name in STATUSES:
        click.echo(f"{name:<11}{rows.get(name, 0)}")
    outage = current_outage(state)
    if outage:
        click.echo(f"amoCRM outage going on: {outage}")
    pause = paused(state)
    if pause:
        click.echo(f"Requests paused after a block: {pause}")
    rules = rules_age(state)
    if rules:
        click.echo(rules)


@amocrm_cli.command("auth")
@click.argument("code", required=False)
def auth_command(code: str | None) -> None:
    """Connect amoCRM over OAuth: exchange an authorization CODE for tokens.

    Without CODE, print the address where an admin allows access and gets one.
    """
    state = get_state()
    settings = state.settings
    if not settings.client_id:
        raise click.UsageError(
            "AMOCRM_CLIENT_ID is not set: this app uses a "
            "long-lived token (AMOCRM_TOKEN), nothing to connect."
        )
    if not code:
        click.echo(
            "Open this address, allow access, and run "
            "'flask amocrm auth CODE' with the code you get (valid 20 minutes):"
        )
        click.echo(authorize_url(settings))
        return
    try:
        row = exchange_code(state, code)
    except AmoCRMError as exc:
        raise click.ClickException(f"amoCRM refused the code: {exc}") from None
    reconnected(state)
    click.echo(
        f"Connected to {row.base_url}; the access token expires at "
        f"{row.expires_at:%Y-%m-%d %H:%M} UTC and is refreshed automatically."
    )


@amocrm_cli.command("sync")
def sync_command() -> None:
    """Fetch the account's pipelines, users, fields and task types again, and
    forget every cached id (the marker field's too)."""
    state = get_state()
    forget_marker_field(state)
    clear_metadata(state)
    try:
        meta = sync_metadata(state)
    except AmoCRMError as exc:
        raise click.ClickException(f"Could not read the account: {exc}") from None
    fields = sum(
        len(meta.fields(entity)) for entity in ("leads", "contacts", "companies")
    )
    click.echo(
        f"{len(meta.pipelines)} pipelines, {len(meta.users)} users, "
        f"{fields} custom fields, {len(meta.task_types)} task types."
    )


@amocrm_cli.command("check")
def check_command() -> None:
    """Check the rules against the account: fields, enum labels, pipelines,
    statuses, users and task types they name."""
    state = get_state()
    try:
        meta = metadata_for(state, refresh=True)
    except AmoCRMError as exc:
        raise click.ClickException(f"Could not read the account: {exc}") from None
    problems = check_rules(state.settings.rules, meta)
    for problem in problems:
        click.echo(problem)
    if problems:
        raise click.ClickException(f"{len(problems)} problem(s) in AMOCRM_RULES.")
    click.echo("The rules match the account.")


@amocrm_cli.command("preview")
@click.argument("source")
@click.option(
    "--data",
    "data_json",
    default="{}",
    show_default=True,
    help="The submitted fields, as a JSON object.",
)
@click.option("--mail", is_flag=True, help="SOURCE is a mail event, not a form.")
@click.option("--page", default=None, help="The page address the form was sent from.")
def preview_command(source: str, data_json: str, mail: bool, page: str | None) -> None:
    """Print the API calls an event of form SOURCE would cause, without sending.

    The real delivery code runs against a client that records the calls: searches
    find nothing, and amoCRM's ids are made up."""
    state = get_state()
    try:
        data = json.loads(data_json)
    except ValueError as exc:
        raise click.BadParameter(f"not JSON: {exc}", param_hint="--data") from None
    if not isinstance(data, dict):
        raise click.BadParameter("must be a JSON object", param_hint="--data")
    kind = "mail" if mail else "form"
    rule = find_rule(state.settings.rules, kind, source)
    if rule is None:
        raise click.ClickException(f"There is no rule for {kind} {source!r}.")
    try:
        result = preview(state, rule, kind=kind, source=source, data=data, page=page)
    except AmoCRMError as exc:
        raise click.ClickException(str(exc)) from None
    for warning in result.warnings:
        click.echo(f"warning: {warning}")
    for line in result.log:
        click.echo(f"note: {line}")
    for call in result.calls:
        click.echo(f"{call.method} {call.target}")
        if call.body is not None:
            click.echo(json.dumps(call.body, ensure_ascii=False, indent=2))
    if result.error is not None:
        raise click.ClickException(f"the event would fail: {result.error}")
