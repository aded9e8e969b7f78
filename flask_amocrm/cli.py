"""The ``flask amocrm`` command group."""

from __future__ import annotations

import getpass
import json
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import click
from flask import current_app
from flask.cli import AppGroup
from redis import RedisError
from sqlalchemy import func, inspect, or_, select
from sqlalchemy.exc import DBAPIError

from .amo.auth import authorize_url
from .amo.clients import client_for
from .amo.connect import exchange_code
from .amo.metadata import clear_metadata, sync_metadata
from .changes import SIGNALS, WEBHOOK_CODES, webhook_codes
from .errors import AmoCRMError, NotFoundError
from .importer import import_rows, read_rows
from .models import (
    CANCELLED,
    FAILED,
    IGNORED,
    INBOUND_STATUSES,
    PENDING,
    PROCESSING,
    RETRYING,
    SPAM,
    STATUSES,
    Event,
    InboundChange,
    utcnow,
)
from .outbox import on_hold, switched_off
from .rules.schema import find_rule
from .state import AppState, get_state
from .worker.agent import process
from .worker.amo_worker import AmoWorker
from .worker.deliver import deliver_events
from .worker.dispatch import hand_off_many, release
from .worker.dispatch import retry as retry_events
from .worker.health import check_account, listening_workers, waiting_since
from .worker.markers import forget_marker_field
from .worker.outage import current as current_outage
from .worker.outage import paused, reconnected
from .worker.preview import preview
from .worker.queue import get_queue
from .worker.reconcile import listened, read_until
from .worker.rules_file import rules_age
from .worker.schedule import ensure_tick, housekeeping, reconcile_due
from .worker.sources import forget_source

amocrm_cli = AppGroup("amocrm", help="Flask-AmoCRM: deliver site events to amoCRM.")

#: An event due this long ago and still not delivered is shown as stuck by ``status``.
STUCK_AFTER = timedelta(minutes=15)
#: How many failed (and stuck) events ``status`` lists.
STATUS_LIST = 20


def _safe_url(url: str) -> str:
    """``url`` without its password, to be printed."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rpartition("@")[2]
    user = f"{parts.username}:***@" if parts.username else ":***@"
    return urlunsplit(parts._replace(netloc=user + netloc))


def _redis_down(state: AppState, exc: Exception) -> click.ClickException:
    return click.ClickException(
        f"Redis at {_safe_url(state.settings.redis_url or '')} does not answer "
        f"({type(exc).__name__}): start it, or correct AMOCRM_REDIS_URL."
    )


def _echo_counts(counts: dict[str, Any]) -> None:
    """One ``what: how many`` line per count."""
    for key in sorted(counts):
        click.echo(f"{key.replace('_', ' ')}: {counts[key]}")


def _one_line(text: str | None, limit: int = 160) -> str:
    lines = (text or "").strip().splitlines()
    line = lines[0] if lines else ""
    return line if len(line) <= limit else line[: limit - 1] + "…"


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
    try:
        state.redis().ping()  # the short timeouts: a dead host cannot hang this
        queue = get_queue(state, for_worker=True)
        if with_scheduler:
            ensure_tick(state)
    except RedisError as exc:
        raise _redis_down(state, exc) from None
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
    without Redis. Also reads amoCRM's events log when AMOCRM_RECONCILE_INTERVAL
    has passed, sends the signals of the changes from amoCRM that are due, and
    runs the hourly housekeeping (retention, token keep-alive)."""
    state = get_state()
    if everything:
        limit = None
    elif limit is None:
        limit = state.settings.batch_size
    reconciled = reconcile_due(state)  # stores; the run below sends their signals
    counts = process(state, limit)
    counts.update(reconciled)
    counts.update(housekeeping(state))
    _echo_counts(counts)


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
        ids = retry_events(state, status=FAILED if all_failed else IGNORED)
    else:
        assert event_id is not None
        ids = retry_events(state, ids=[event_id])
        if not ids:
            raise click.ClickException(f"There is no event {event_id}.")
    click.echo(f"{len(ids)} event(s) will be retried.")
    if state.settings.rules_file:
        click.echo(
            "Workers read the rules file again before their next batch when it "
            "changed (see 'flask amocrm status')."
        )


@amocrm_cli.command("release")
@click.argument("event_id", type=int)
@click.option(
    "--by",
    "who",
    default=None,
    help="Who releases it, for the event's log (default: the system user).",
)
def release_command(event_id: int, who: str | None) -> None:
    """Deliver an event held as spam that is not spam: it is sent without being
    judged again."""
    state = get_state()
    who = " ".join((who or _system_user()).split())[:200] or "cli"
    if not release(state, event_id, who):
        with state.session() as session:
            found = session.get(Event, event_id)
        if found is None:
            raise click.ClickException(f"There is no event {event_id}.")
        raise click.ClickException(
            f"Event {event_id} is {found.status}, not spam: nothing to release."
        )
    if state.settings.delivery == "inline":
        outcome = deliver_events([event_id]).get(event_id, "skipped")
        click.echo(f"Event {event_id} released: {outcome}.")
    elif state.settings.delivery == "rq":
        click.echo(f"Event {event_id} released: a worker will deliver it.")
    else:
        click.echo(f"Event {event_id} released: the next agent run delivers it.")


def _system_user() -> str:
    try:
        return f"{getpass.getuser()} (cli)"
    except (KeyError, OSError):  # no user name in a container
        return "cli"


@amocrm_cli.command("import")
@click.argument("path", type=click.Path(exists=True, dir_okay=False))
def import_command(path: str) -> None:
    """Import past form results or mail events from a CSV or JSON-lines file and
    deliver them like live events. Rows imported before are skipped."""
    state = get_state()
    bad: list[str] = []

    def report(problem: str) -> None:
        bad.append(problem)
        click.echo(f"{path}: {problem} (skipped)", err=True)

    # read as a stream: the rows are stored a chunk at a time
    added, skipped = import_rows(state, read_rows(path, on_error=report))
    click.echo(f"{len(added)} event(s) imported, {skipped} already imported before.")
    if bad:
        click.echo(f"{len(bad)} row(s) skipped: see the lines above.", err=True)
    mode = state.settings.delivery
    if mode == "rq":
        with click.progressbar(added, label="Queueing") as ids:
            hand_off_many(state, ids)
    elif mode == "inline":
        _echo_counts(process(state, None))
    else:
        click.echo("They will be delivered by the next agent run.")
    if bad:
        raise SystemExit(1)


@amocrm_cli.command("status")
def status() -> None:
    """Show how many events are in each state, the failed and stuck ones with their
    reasons, and whether a worker listens on the queue."""
    state = get_state()
    try:
        with state.session() as session:
            rows = dict(
                session.execute(
                    select(Event.status, func.count()).group_by(Event.status)
                ).all()
            )
            failed = _listed(session, Event.status == FAILED)
            cancelled = _listed(session, Event.status == CANCELLED)
            spam = _listed(session, Event.status == SPAM)
            hold = on_hold(state)
            stuck = _listed(
                session,
                _stuck_clause() if hold is None else _stuck_clause() & ~hold,
            )
            switches = switched_off(state)
    except DBAPIError as exc:
        raise _database_problem(state, exc) from None
    for name in STATUSES:
        click.echo(f"{name:<11}{rows.get(name, 0)}")
    if failed:
        click.echo(f"Failed ({rows.get(FAILED, 0)}), newest first:")
        for event in failed:
            click.echo("  " + _event_line(event, event.last_error))
    if cancelled:
        click.echo(f"Cancelled by a hook ({rows.get(CANCELLED, 0)}), newest first:")
        for event in cancelled:
            click.echo("  " + _event_line(event, event.last_error))
    if spam:
        click.echo(
            f"Held as spam ({rows.get(SPAM, 0)}), newest first "
            "('flask amocrm release ID' delivers one that is not):"
        )
        for event in spam:
            click.echo("  " + _event_line(event, event.last_error))
    for switch in switches:
        click.echo(
            f"Switched off: {switch.what}: {switch.waiting} event(s) wait, "
            "delivered once it is switched on again"
        )
    if stuck:
        click.echo(f"Stuck: due {_minutes(STUCK_AFTER)} ago or more, not delivered:")
        for event in stuck:
            click.echo("  " + _event_line(event, _stuck_reason(event)))
    outage = current_outage(state)
    if outage:
        click.echo(f"amoCRM outage going on: {outage}")
    pause = paused(state)
    if pause:
        click.echo(f"Requests paused after a block: {pause}")
    if state.settings.delivery == "rq":
        _warn_without_worker(state)
    rules = rules_age(state)
    if rules:
        click.echo(rules)


def _listed(session: Any, clause: Any) -> list[Event]:
    return list(
        session.scalars(
            select(Event).where(clause).order_by(Event.id.desc()).limit(STATUS_LIST)
        )
    )


def _stuck_clause() -> Any:
    since = utcnow() - STUCK_AFTER
    # Waiting since the last time it was made due (an imported event's created_at
    # is the past moment it happened, not when it was stored).
    return or_(
        Event.status.in_((PENDING, RETRYING)) & (waiting_since() < since),
        (Event.status == PROCESSING) & (Event.updated_at < since),
    )


def _minutes(delta: timedelta) -> str:
    return f"{int(delta.total_seconds() // 60)} min"


def _event_line(event: Event, reason: str | None) -> str:
    """Id, form, when and why: never the event's data (personal data)."""
    when = f"{event.created_at:%Y-%m-%d %H:%M} UTC" if event.created_at else "-"
    return (
        f"#{event.id} {event.status} {event.kind} {_one_line(event.source, 60)} "
        f"{when}: {_one_line(reason) or 'no reason stored'}"
    )


def _stuck_reason(event: Event) -> str:
    if event.status == PROCESSING:
        return "a worker took it and has not finished (retried when its lease ends)"
    if event.last_error:
        return event.last_error
    return "no worker or agent run has taken it"


def _database_problem(state: AppState, exc: DBAPIError) -> click.ClickException:
    try:
        exists = inspect(state.engine).has_table(Event.__tablename__)
    except DBAPIError:
        exists = True
    if not exists:
        return click.ClickException(
            "The amocrm_* tables do not exist yet: run 'flask amocrm init-db' "
            "(or your migrations)."
        )
    return click.ClickException(
        f"The events database cannot be read: {type(exc.orig).__name__}."
    )


def _warn_without_worker(state: AppState) -> None:
    try:
        workers = listening_workers(state)
    except RedisError as exc:
        click.echo(f"warning: {_redis_down(state, exc).message}")
        return
    if not workers:
        click.echo(
            f"warning: no worker is listening on queue {state.settings.queue!r}: "
            "events wait until 'flask amocrm worker' runs."
        )


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
    forget every cached id (the marker field's and the site source's too)."""
    state = get_state()
    forget_marker_field(state)
    forget_source(state)
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
        problems = check_account(state)
    except AmoCRMError as exc:
        raise click.ClickException(f"Could not read the account: {exc}") from None
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
@click.option(
    "--subject",
    default=None,
    help="The mail's subject (with --mail): what a rule reads as mail.subject.",
)
@click.option("--page", default=None, help="The page address the form was sent from.")
def preview_command(
    source: str, data_json: str, mail: bool, subject: str | None, page: str | None
) -> None:
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
    if subject is not None:
        if not mail:
            raise click.BadParameter(
                "is for a mail: add --mail", param_hint="--subject"
            )
        message = data.get("mail")
        data["mail"] = {
            **(message if isinstance(message, dict) else {}),
            "subject": subject,
        }
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


# -- the way back: amoCRM's webhooks (docs/webhooks.md) -------------------------------


@amocrm_cli.group("webhooks")
def webhooks_cli() -> None:
    """Register, show and remove the webhook amoCRM sends changes to."""


_URL_HELP = (
    "The site's public address (https://shop.example.com); default "
    "AMOCRM_WEBHOOK_URL, else SERVER_NAME with PREFERRED_URL_SCHEME."
)


def _site_url(url: str | None) -> str:
    app = current_app
    if url:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise click.BadParameter(
                f"must be an http(s) address, not {url!r}", param_hint="--url"
            )
        return url.rstrip("/")
    state = get_state()
    if state.settings.webhook_url:
        return state.settings.webhook_url
    server = app.config.get("SERVER_NAME")
    if server:
        scheme = app.config.get("PREFERRED_URL_SCHEME") or "http"
        root = str(app.config.get("APPLICATION_ROOT") or "/").strip("/")
        return f"{scheme}://{server}" + (f"/{root}" if root else "")
    raise click.UsageError(
        "The site's public address is not known: give --url, or set "
        "AMOCRM_WEBHOOK_URL (or SERVER_NAME)."
    )


def _destination(url: str | None) -> str:
    """The webhook's address: the site's, the path and the secret."""
    state = get_state()
    if not state.settings.webhook_secret:
        raise click.UsageError(
            "AMOCRM_WEBHOOK_SECRET is not set, so the site has no webhook endpoint: "
            "set it to a long random string (python -c 'import secrets; "
            "print(secrets.token_urlsafe(32))')."
        )
    return (
        f"{_site_url(url)}{state.settings.webhook_path}/{state.settings.webhook_secret}"
    )


def _shown(destination: str) -> str:
    """A destination as printed: the secret in it masked."""
    secret = get_state().settings.webhook_secret
    return destination.replace(secret, "***") if secret else destination


@webhooks_cli.command("install")
@click.option("--url", default=None, help=_URL_HELP)
@click.option(
    "--event",
    "events",
    multiple=True,
    type=click.Choice(sorted({c for v in WEBHOOK_CODES.values() for c in v})),
    help="A webhook code to subscribe (repeat it); default: the codes of the "
    "signals this site has receivers for.",
)
def webhooks_install(url: str | None, events: tuple[str, ...]) -> None:
    """Register the site's webhook endpoint with amoCRM (replaces the events of an
    earlier install at the same address)."""
    state = get_state()
    destination = _destination(url)
    codes = list(events) or webhook_codes(listened(state))
    if not codes:
        raise click.UsageError(
            "No receiver is connected to any of the signals "
            f"{', '.join(SIGNALS)}: connect one when the app is created, or "
            "name the events with --event."
        )
    try:
        hook = client_for(state).subscribe_webhook(destination, codes)
    except AmoCRMError as exc:
        raise click.ClickException(f"amoCRM refused the webhook: {exc}") from None
    click.echo(f"Registered {_shown(destination)}")
    click.echo(f"events: {', '.join(hook.get('settings') or codes)}")


@webhooks_cli.command("status")
@click.option("--url", default=None, help=_URL_HELP)
def webhooks_status(url: str | None) -> None:
    """Show the webhooks amoCRM has registered (this site's marked), and the
    changes that came back."""
    state = get_state()
    try:
        destination = _destination(url)
    except click.UsageError:  # no secret or no address: nothing is this site's
        destination = None
    try:
        hooks = client_for(state).webhooks()
    except AmoCRMError as exc:
        raise click.ClickException(f"Could not read the webhooks: {exc}") from None
    ours = [h for h in hooks if h.get("destination") == destination]
    if not ours:
        click.echo("This site's webhook is not registered with amoCRM.")
    for hook in hooks:
        mine = hook.get("destination") == destination
        where = (
            _shown(str(hook.get("destination")))
            if mine
            else urlsplit(str(hook.get("destination"))).netloc  # others: host only
        )
        flags = " (this site)" if mine else ""
        flags += " DISABLED by amoCRM" if hook.get("disabled") else ""
        click.echo(
            f"#{hook.get('id')} {where}{flags}: {', '.join(hook.get('settings') or [])}"
        )
    with state.session() as session:
        counts = dict(
            session.execute(
                select(InboundChange.status, func.count()).group_by(
                    InboundChange.status
                )
            ).all()
        )
    click.echo(
        "changes from amoCRM: "
        + ", ".join(f"{name} {counts.get(name, 0)}" for name in INBOUND_STATUSES)
    )
    interval = state.settings.reconcile_interval
    if not interval:
        click.echo("reconciliation: off")
        return
    until = read_until(state)
    last = "not read yet"
    if until:
        when = datetime.fromtimestamp(until, UTC)
        last = f"events log read up to {when:%Y-%m-%d %H:%M:%S} UTC"
    click.echo(f"reconciliation: every {interval} s; {last}")


@webhooks_cli.command("uninstall")
@click.option("--url", default=None, help=_URL_HELP)
def webhooks_uninstall(url: str | None) -> None:
    """Remove the site's webhook from amoCRM."""
    state = get_state()
    destination = _destination(url)
    try:
        client_for(state).unsubscribe_webhook(destination)
    except NotFoundError:
        raise click.ClickException(
            f"amoCRM has no webhook at {_shown(destination)}."
        ) from None
    except AmoCRMError as exc:
        raise click.ClickException(f"amoCRM refused: {exc}") from None
    click.echo(f"Removed {_shown(destination)}")
