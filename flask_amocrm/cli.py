"""The ``flask amocrm`` command group."""

from __future__ import annotations

import getpass
import json
import logging
import signal
import sys
import time
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
from .i18n import N_, _, localize, ngettext
from .importer import import_rows, read_rows
from .migrations import (
    EXTRA,
    BaselineRefused,
    MigrationError,
    NotAdopted,
    available,
    downgrade,
    upgrade,
)
from .models import (
    CANCELLED,
    FAILED,
    IGNORED,
    INBOUND_STATUSES,
    PENDING,
    PROCESSING,
    RETRYING,
    SPAM,
    STATUS_LABELS,
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
from .worker.health import (
    STUCK_AFTER,
    Health,
    check_account,
    check_health,
    listening_workers,
    waiting_since,
)
from .worker.index import refresh as refresh_index
from .worker.markers import forget_marker_field
from .worker.outage import current as current_outage
from .worker.outage import paused, reconnected
from .worker.preview import preview
from .worker.queue import get_queue
from .worker.reconcile import listened, read_until
from .worker.rules_file import rules_age
from .worker.schedule import ensure_tick, housekeeping, reconcile_due
from .worker.sources import forget_source

log = logging.getLogger("flask_amocrm.worker")

amocrm_cli = AppGroup("amocrm", help="Flask-AmoCRM: deliver site events to amoCRM.")

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
        _(
            "Redis at %(url)s does not answer (%(error)s): start it, or correct "
            "AMOCRM_REDIS_URL.",
            url=_safe_url(state.settings.redis_url or ""),
            error=type(exc).__name__,
        )
    )


#: How a person reads the counts of ``process`` and the housekeeping (the key with
#: spaces for the underscores, in English).
COUNT_LABELS = {
    **STATUS_LABELS,
    "spooled": N_("spooled"),
    "queued": N_("queued"),
    "purged_events": N_("purged events"),
    "purged_api_log": N_("purged api log"),
    "keep_alive": N_("keep alive"),
    "index_fill_pages": N_("index fill pages"),
    "index_poll_pages": N_("index poll pages"),
}


def _echo_counts(counts: dict[str, Any]) -> None:
    """One ``what: how many`` line per count."""
    for key in sorted(counts):
        label = COUNT_LABELS.get(key)
        click.echo(f"{_(label) if label else key.replace('_', ' ')}: {counts[key]}")


def _one_line(text: str | None, limit: int = 160) -> str:
    lines = (text or "").strip().splitlines()
    line = lines[0] if lines else ""
    return line if len(line) <= limit else line[: limit - 1] + "…"


@amocrm_cli.command("init-db")
def init_db() -> None:
    """Create the amocrm_* tables that do not exist yet (and stamp them for
    upgrade-db when Alembic is installed)."""
    get_state().create_tables()
    click.echo(_("Flask-AmoCRM tables are ready."))


def _need_alembic() -> None:
    if not available():
        raise click.ClickException(
            _(
                "Migrating the amocrm_* tables needs Alembic: pip install "
                "'Flask-AmoCRM[%(extra)s]'.",
                extra=EXTRA,
            )
        )


# ``upgrade-db`` pairs with ``init-db`` and takes Flask-Migrate's verb for applying
# revisions (``flask db upgrade``); there ``migrate`` means writing a new revision,
# which a site never does for our tables.
@amocrm_cli.command("upgrade-db")
@click.option(
    "--sql",
    is_flag=True,
    help="Print the SQL instead of running it (for a DBA to review or run).",
)
def upgrade_db(sql: bool) -> None:
    """Bring the amocrm_* tables to this version (Alembic migrations, in their
    own amocrm_alembic_version table); adopt tables made by init-db."""
    _need_alembic()
    state = get_state()
    try:
        done = upgrade(state.engine, sql=sql, output=sys.stdout)
    except NotAdopted:
        raise click.ClickException(
            _(
                "The amocrm_* tables were made without migrations: run "
                "'flask amocrm upgrade-db' once without --sql to adopt them."
            )
        ) from None
    if sql:
        return
    if done.adopted is not None:
        click.echo(
            _(
                "The amocrm_* tables made without migrations are adopted and "
                "stamped with revision %(revision)s.",
                revision=done.after,
            )
        )
        if done.adopted:
            click.echo(_("Added: %(what)s.", what=", ".join(done.adopted)))
    elif done.applied:
        click.echo(
            _(
                "Applied: %(revisions)s; the amocrm_* tables are at revision "
                "%(revision)s.",
                revisions=", ".join(done.applied),
                revision=done.after,
            )
        )
    else:
        click.echo(
            _(
                "The amocrm_* tables are already at revision %(revision)s.",
                revision=done.after,
            )
        )


@amocrm_cli.command("downgrade-db")
@click.argument("revision")
@click.option("--sql", is_flag=True, help="Print the SQL instead of running it.")
def downgrade_db(revision: str, sql: bool) -> None:
    """Take the amocrm_* tables back to REVISION (before going back to an older
    Flask-AmoCRM). The baseline is never undone."""
    _need_alembic()
    state = get_state()
    try:
        now = downgrade(state.engine, revision, sql=sql, output=sys.stdout)
    except BaselineRefused:
        raise click.ClickException(
            _(
                "The baseline of the amocrm_* tables is not undone: it would drop "
                "every event, token and log. To remove Flask-AmoCRM, back the "
                "database up and drop the amocrm_* tables yourself."
            )
        ) from None
    except MigrationError as exc:
        raise click.ClickException(str(exc)) from None
    if not sql:
        click.echo(_("The amocrm_* tables are at revision %(revision)s.", revision=now))


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
            _(
                "AMOCRM_REDIS_URL is not set: the worker needs Redis. Without "
                "Redis use 'flask amocrm process'."
            )
        )
    app = current_app._get_current_object()  # type: ignore[attr-defined]
    try:
        state.redis().ping()  # the short timeouts: a dead host cannot hang this
        queue = get_queue(state, for_worker=True)
        if with_scheduler:
            ensure_tick(state)
    except RedisError as exc:
        raise _redis_down(state, exc) from None
    while True:
        rq_worker = AmoWorker(
            [queue],
            apps=[app],
            connection=queue.connection,
            maintenance_interval=maintenance_interval,
        )
        try:
            rq_worker.work(burst=burst, with_scheduler=with_scheduler)
        except RedisError as exc:
            if burst:
                raise _redis_down(state, exc) from None
        else:
            if burst or _stop_asked(rq_worker):
                return
        # RQ's worker quits when Redis goes away under it (while it watches a work
        # horse, or as it reports its own death): Redis restarted, or failed over.
        # Wait for it and work again, rather than leave the queue to nobody.
        _wait_for_redis(state)


def _stop_asked(rq_worker: AmoWorker) -> bool:
    """Whether the worker ended because it was asked to (SIGTERM, Ctrl-C): RQ notes
    when, whether it was idle or busy then; only a busy one sets ``_stop_requested``."""
    return (
        getattr(rq_worker, "_shutdown_requested_date", None) is not None
        or getattr(rq_worker, "_stop_requested", False) is True
    )


def _wait_for_redis(state: AppState) -> None:
    """Sleep until Redis answers again (a SIGTERM or Ctrl-C stops the wait)."""
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # RQ's handlers need its loop
    signal.signal(signal.SIGINT, signal.default_int_handler)
    log.warning(
        "The RQ worker of %s stopped when Redis went away; it starts again when "
        "Redis answers",
        _safe_url(state.settings.redis_url or ""),
    )
    pause = 0.5
    while True:
        time.sleep(pause)
        try:
            state.redis().ping()
            return
        except RedisError:
            pause = min(pause * 2, 5.0)


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
    has passed, sends the signals of the changes from amoCRM that are due, does the
    contact index's share of a tick (a few pages of its fill, or its poll), and
    runs the hourly housekeeping (retention, token keep-alive)."""
    state = get_state()
    if everything:
        limit = None
    elif limit is None:
        limit = state.settings.batch_size
    reconciled = reconcile_due(state)  # stores; the run below sends their signals
    counts = process(state, limit)
    counts.update(reconciled)
    counts.update(refresh_index(state))
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
        raise click.UsageError(_("Give an event id, --failed or --ignored."))
    state = get_state()
    if all_failed or all_ignored:
        ids = retry_events(state, status=FAILED if all_failed else IGNORED)
    else:
        assert event_id is not None
        ids = retry_events(state, ids=[event_id])
        if not ids:
            with state.session() as session:
                status = session.scalar(
                    select(Event.status).where(Event.id == event_id)
                )
            if status is None:
                raise click.ClickException(_("There is no event %(id)s.", id=event_id))
            raise click.ClickException(
                _(
                    "Event %(id)s is %(status)s: it is not retried.",
                    id=event_id,
                    status=_(STATUS_LABELS.get(status, status)),
                )
            )
    click.echo(
        ngettext(
            "%(count)s event(s) will be retried.",
            "%(count)s event(s) will be retried.",
            len(ids),
        )
    )
    if state.settings.rules_file:
        click.echo(
            _(
                "Workers read the rules file again before their next batch when "
                "it changed (see 'flask amocrm status')."
            )
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
            raise click.ClickException(_("There is no event %(id)s.", id=event_id))
        raise click.ClickException(
            _(
                "Event %(id)s is %(status)s, not spam: nothing to release.",
                id=event_id,
                status=_(STATUS_LABELS.get(found.status, found.status)),
            )
        )
    if state.settings.delivery == "inline":
        outcome = deliver_events([event_id]).get(event_id, "skipped")
        shown = _(STATUS_LABELS[outcome]) if outcome in STATUS_LABELS else outcome
        click.echo(_("Event %(id)s released: %(status)s.", id=event_id, status=shown))
    elif state.settings.delivery == "rq":
        click.echo(_("Event %(id)s released: a worker will deliver it.", id=event_id))
    else:
        click.echo(
            _("Event %(id)s released: the next agent run delivers it.", id=event_id)
        )


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
        click.echo(
            _(
                "%(path)s: %(problem)s (skipped)",
                path=path,
                problem=localize(problem),
            ),
            err=True,
        )

    # read as a stream: the rows are stored a chunk at a time
    added, skipped = import_rows(state, read_rows(path, on_error=report))
    click.echo(
        ngettext(
            "%(count)s event(s) imported, %(skipped)s already imported before.",
            "%(count)s event(s) imported, %(skipped)s already imported before.",
            len(added),
            skipped=skipped,
        )
    )
    if bad:
        click.echo(
            ngettext(
                "%(count)s row(s) skipped: see the lines above.",
                "%(count)s row(s) skipped: see the lines above.",
                len(bad),
            ),
            err=True,
        )
    mode = state.settings.delivery
    if mode == "rq":
        with click.progressbar(added, label=_("Queueing")) as ids:
            hand_off_many(state, ids)
    elif mode == "inline":
        _echo_counts(process(state, None))
    else:
        click.echo(_("They will be delivered by the next agent run."))
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
    labels = {name: _(STATUS_LABELS[name]) for name in STATUSES}
    width = max(11, *(len(label) + 1 for label in labels.values()))
    for name in STATUSES:
        click.echo(f"{labels[name]:<{width}}{rows.get(name, 0)}")
    if failed:
        click.echo(_("Failed (%(count)s), newest first:", count=rows.get(FAILED, 0)))
        for event in failed:
            click.echo("  " + _event_line(event, event.last_error))
    if cancelled:
        click.echo(
            _(
                "Cancelled by a hook (%(count)s), newest first:",
                count=rows.get(CANCELLED, 0),
            )
        )
        for event in cancelled:
            click.echo("  " + _event_line(event, event.last_error))
    if spam:
        click.echo(
            _(
                "Held as spam (%(count)s), newest first ('flask amocrm release ID' "
                "delivers one that is not):",
                count=rows.get(SPAM, 0),
            )
        )
        for event in spam:
            click.echo("  " + _event_line(event, event.last_error))
    for switch in switches:
        click.echo(
            ngettext(
                "Switched off: %(what)s: %(count)s event(s) wait, delivered once it "
                "is switched on again",
                "Switched off: %(what)s: %(count)s event(s) wait, delivered once it "
                "is switched on again",
                switch.waiting,
                what=switch.what,
            )
        )
    if stuck:
        click.echo(
            _(
                "Stuck: due %(minutes)s ago or more, not delivered:",
                minutes=_minutes(STUCK_AFTER),
            )
        )
        for event in stuck:
            click.echo("  " + _event_line(event, _stuck_reason(event)))
    outage = current_outage(state)
    if outage:
        click.echo(_("amoCRM outage going on: %(reason)s", reason=outage))
    pause = paused(state)
    if pause:
        click.echo(_("Requests paused after a block: %(reason)s", reason=pause))
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
    return _("%(count)s min", count=int(delta.total_seconds() // 60))


def _event_line(event: Event, reason: str | None) -> str:
    """Id, form, when and why: never the event's data (personal data)."""
    when = f"{event.created_at:%Y-%m-%d %H:%M} UTC" if event.created_at else "-"
    label = STATUS_LABELS.get(event.status)
    status = _(label) if label else event.status
    return (
        f"#{event.id} {status} {event.kind} {_one_line(event.source, 60)} "
        f"{when}: {_one_line(reason) or _('no reason stored')}"
    )


def _stuck_reason(event: Event) -> str:
    if event.status == PROCESSING:
        return _("a worker took it and has not finished (retried when its lease ends)")
    if event.last_error:
        return event.last_error
    return _("no worker or agent run has taken it")


def _database_problem(state: AppState, exc: DBAPIError) -> click.ClickException:
    try:
        exists = inspect(state.engine).has_table(Event.__tablename__)
    except DBAPIError:
        exists = True
    if not exists:
        return click.ClickException(
            _(
                "The amocrm_* tables do not exist yet: run 'flask amocrm upgrade-db' "
                "(or 'flask amocrm init-db')."
            )
        )
    return click.ClickException(
        _(
            "The events database cannot be read: %(error)s.",
            error=type(exc.orig).__name__,
        )
    )


def _warn_without_worker(state: AppState) -> None:
    try:
        workers = listening_workers(state)
    except RedisError as exc:
        click.echo(_("warning: %(problem)s", problem=_redis_down(state, exc).message))
        return
    if not workers:
        click.echo(
            _(
                "warning: no worker is listening on queue %(queue)s: events wait "
                "until 'flask amocrm worker' runs.",
                queue=repr(state.settings.queue),
            )
        )


@amocrm_cli.command("health")
@click.option(
    "--json", "as_json", is_flag=True, help="Print the report as one JSON object."
)
def health_command(as_json: bool) -> None:
    """Tell whether the site delivers its events, without calling amoCRM: amoCRM
    reachable, the token, an outage or a pause, the queue, the oldest due event,
    the workers. Exits 0 when healthy, 1 when not (the report says why)."""
    report = check_health(get_state())
    if as_json:
        click.echo(json.dumps(report.as_json(), ensure_ascii=False, sort_keys=True))
    else:
        _echo_health(report)
    if not report.healthy:
        raise SystemExit(1)


def _when(moment: datetime | None) -> str:
    return f"{moment:%Y-%m-%d %H:%M} UTC" if moment is not None else "—"


def _echo_health(report: Health) -> None:
    """The report as a person reads it."""
    if report.healthy:
        click.echo(_("Healthy"))
    else:
        click.echo(
            ngettext(
                "Not healthy: %(count)s problem",
                "Not healthy: %(count)s problems",
                len(report.problems),
            )
        )
        for problem in report.problems:
            click.echo(f"  - {localize(problem.message)}")
    if report.outage is not None:
        click.echo(
            _("amoCRM: unreachable since %(when)s", when=_when(report.outage.since))
        )
    elif report.token is not None:
        click.echo(_("amoCRM: reachable"))
    token = report.token
    if token is not None:
        kind = _("long-lived") if token.kind == "long-lived" else "OAuth"
        if token.revoked_at is not None:
            state = _("revoked")
        else:
            state = _("in use") if token.connected else _("not connected")
        click.echo(
            _(
                "Token: %(kind)s, %(state)s, expires %(when)s",
                kind=kind,
                state=state,
                when=_when(token.expires_at),
            )
        )
    click.echo(_("Delivery: %(mode)s", mode=report.delivery))
    if report.queue_depth is not None:
        click.echo(_("Jobs in the queue: %(count)s", count=report.queue_depth))
    if report.workers is not None:
        click.echo(_("Workers: %(count)s", count=len(report.workers)))
    for status, count in report.events.items():
        click.echo(f"{_(STATUS_LABELS[status])}: {count}")
    age = report.oldest_due_age
    click.echo(
        _("Oldest due event: nothing is due")
        if age is None
        else _("Oldest due event: waiting %(seconds)s s", seconds=int(age))
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
            _(
                "AMOCRM_CLIENT_ID is not set: this app uses a long-lived token "
                "(AMOCRM_TOKEN), nothing to connect."
            )
        )
    if not code:
        click.echo(
            _(
                "Open this address, allow access, and run 'flask amocrm auth CODE' "
                "with the code you get (valid 20 minutes):"
            )
        )
        click.echo(authorize_url(settings))
        return
    try:
        row = exchange_code(state, code)
    except AmoCRMError as exc:
        raise click.ClickException(
            _("amoCRM refused the code: %(error)s", error=localize(exc))
        ) from None
    reconnected(state)
    click.echo(
        _(
            "Connected to %(url)s; the access token expires at %(when)s UTC and is "
            "refreshed automatically.",
            url=row.base_url,
            when=format(row.expires_at, "%Y-%m-%d %H:%M"),
        )
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
        raise _unreadable_account(exc) from None
    fields = sum(
        len(meta.fields(entity)) for entity in ("leads", "contacts", "companies")
    )
    counted = [
        ngettext("%(count)s pipeline", "%(count)s pipelines", len(meta.pipelines)),
        ngettext("%(count)s user", "%(count)s users", len(meta.users)),
        ngettext("%(count)s custom field", "%(count)s custom fields", fields),
        ngettext("%(count)s task type", "%(count)s task types", len(meta.task_types)),
    ]
    click.echo(", ".join(counted) + ".")


def _unreadable_account(exc: AmoCRMError) -> click.ClickException:
    return click.ClickException(
        _("Could not read the account: %(error)s", error=localize(exc))
    )


@amocrm_cli.command("check")
def check_command() -> None:
    """Check the rules against the account: fields, enum labels, pipelines,
    statuses, users and task types they name."""
    state = get_state()
    try:
        problems = check_account(state)
    except AmoCRMError as exc:
        raise _unreadable_account(exc) from None
    for problem in problems:
        click.echo(localize(problem))
    if problems:
        raise click.ClickException(
            ngettext(
                "%(count)s problem(s) in AMOCRM_RULES.",
                "%(count)s problem(s) in AMOCRM_RULES.",
                len(problems),
            )
        )
    click.echo(_("The rules match the account."))


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
        raise click.BadParameter(
            _("not JSON: %(error)s", error=exc), param_hint="--data"
        ) from None
    if not isinstance(data, dict):
        raise click.BadParameter(_("must be a JSON object"), param_hint="--data")
    if subject is not None:
        if not mail:
            raise click.BadParameter(
                _("is for a mail: add --mail"), param_hint="--subject"
            )
        message = data.get("mail")
        data["mail"] = {
            **(message if isinstance(message, dict) else {}),
            "subject": subject,
        }
    kind = "mail" if mail else "form"
    rule = find_rule(state.settings.rules, kind, source)
    if rule is None:
        raise click.ClickException(
            _(
                "There is no rule for %(kind)s %(source)s.",
                kind=kind,
                source=repr(source),
            )
        )
    try:
        result = preview(state, rule, kind=kind, source=source, data=data, page=page)
    except AmoCRMError as exc:
        raise click.ClickException(localize(exc)) from None
    for warning in result.warnings:
        click.echo(_("warning: %(problem)s", problem=localize(warning)))
    for line in result.log:
        click.echo(_("note: %(line)s", line=localize(line)))
    for call in result.calls:
        click.echo(f"{call.method} {call.target}")
        if call.body is not None:
            click.echo(json.dumps(call.body, ensure_ascii=False, indent=2))
    if result.error is not None:
        raise click.ClickException(
            _("the event would fail: %(error)s", error=localize(result.error))
        )


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
                _("must be an http(s) address, not %(url)s", url=repr(url)),
                param_hint="--url",
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
        _(
            "The site's public address is not known: give --url, or set "
            "AMOCRM_WEBHOOK_URL (or SERVER_NAME)."
        )
    )


def _destination(url: str | None) -> str:
    """The webhook's address: the site's, the path and the secret."""
    state = get_state()
    if not state.settings.webhook_secret:
        raise click.UsageError(
            _(
                "AMOCRM_WEBHOOK_SECRET is not set, so the site has no webhook "
                "endpoint: set it to a long random string (python -c 'import "
                "secrets; print(secrets.token_urlsafe(32))')."
            )
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
            _(
                "No receiver is connected to any of the signals %(signals)s: "
                "connect one when the app is created, or name the events with "
                "--event.",
                signals=", ".join(SIGNALS),
            )
        )
    try:
        hook = client_for(state).subscribe_webhook(destination, codes)
    except AmoCRMError as exc:
        raise click.ClickException(
            _("amoCRM refused the webhook: %(error)s", error=localize(exc))
        ) from None
    click.echo(_("Registered %(url)s", url=_shown(destination)))
    click.echo(_("events: %(codes)s", codes=", ".join(hook.get("settings") or codes)))


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
        raise click.ClickException(
            _("Could not read the webhooks: %(error)s", error=localize(exc))
        ) from None
    ours = [h for h in hooks if h.get("destination") == destination]
    if not ours:
        click.echo(_("This site's webhook is not registered with amoCRM."))
    for hook in hooks:
        mine = hook.get("destination") == destination
        where = (
            _shown(str(hook.get("destination")))
            if mine
            else urlsplit(str(hook.get("destination"))).netloc  # others: host only
        )
        flags = " " + _("(this site)") if mine else ""
        flags += " " + _("DISABLED by amoCRM") if hook.get("disabled") else ""
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
        _(
            "changes from amoCRM: %(counts)s",
            counts=", ".join(
                f"{name} {counts.get(name, 0)}" for name in INBOUND_STATUSES
            ),
        )
    )
    interval = state.settings.reconcile_interval
    if not interval:
        click.echo(_("reconciliation: off"))
        return
    until = read_until(state)
    last = _("not read yet")
    if until:
        when = datetime.fromtimestamp(until, UTC)
        last = _(
            "events log read up to %(when)s UTC",
            when=format(when, "%Y-%m-%d %H:%M:%S"),
        )
    click.echo(
        _("reconciliation: every %(seconds)s s; %(last)s", seconds=interval, last=last)
    )


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
            _("amoCRM has no webhook at %(url)s.", url=_shown(destination))
        ) from None
    except AmoCRMError as exc:
        raise click.ClickException(
            _("amoCRM refused: %(error)s", error=localize(exc))
        ) from None
    click.echo(_("Removed %(url)s", url=_shown(destination)))
