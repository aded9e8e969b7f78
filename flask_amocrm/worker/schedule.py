"""The periodic work, run by the RQ scheduler or by ``flask amocrm process`` (cron).

Every :data:`TICK` seconds a ``tick`` job (scheduled by ``flask amocrm worker
--with-scheduler`` and kept alive on every worker maintenance pass) does what is due:

- ``rq`` mode: the sweeper queues events that are due and have no job;
- ``deferred`` mode (the agent): a batch of ``AMOCRM_BATCH_SIZE`` events is delivered
  every ``AMOCRM_AGENT_INTERVAL`` seconds;
- the contact index (:mod:`.index`): a few pages of its fill every tick until it is
  complete, then a poll for changed contacts every ``AMOCRM_INDEX_INTERVAL`` seconds;
- hourly: delivered events and API log rows past ``AMOCRM_RETENTION_DAYS`` are purged,
  and an OAuth token is refreshed before amoCRM's three-month expiry (keep-alive);
- every ``AMOCRM_RECONCILE_INTERVAL`` seconds: amoCRM's events log is read for the
  changes no webhook brought (:mod:`.reconcile`); in ``rq`` mode the sweeper also
  queues the changes from amoCRM that are due (the agent handles them in the
  other modes).

Each task is gated by a shared flag, so many workers run it once per interval.
"""

from __future__ import annotations

import logging
import time
from datetime import timedelta

from rq.exceptions import DuplicateJobError

from .. import shared
from ..amo.apilog import purge_api_log
from ..amo.connect import keep_alive
from ..config import TICK_SECONDS
from ..errors import AmoCRMError
from ..outbox import load_spool
from ..state import AppState
from .agent import process
from .dispatch import hand_off_changes
from .index import refresh as refresh_index
from .outage import alert_auth_failure
from .queue import get_queue, job_name
from .reconcile import reconcile
from .retention import purge_changes, purge_events
from .sweeper import sweep, sweep_changes

log = logging.getLogger("flask_amocrm.worker")

#: Seconds between two ticks (defined with the settings, which refuse an agent
#: interval shorter than it).
TICK = TICK_SECONDS
_HOURLY = 3600


def housekeeping(state: AppState) -> dict[str, int]:
    """The hourly tasks, run at most once an hour across all processes."""
    done: dict[str, int] = {}
    if not shared.set_once(state, "housekeeping", seconds=_HOURLY):
        return done
    done["purged_events"] = purge_events(state)
    done["purged_changes"] = purge_changes(state)
    done["purged_api_log"] = purge_api_log(state)
    try:
        done["keep_alive"] = int(keep_alive(state))
    except Exception as exc:  # the tick goes on; the admins hear of a dead token
        log.exception("amoCRM keep-alive refresh failed")
        alert_auth_failure(state, exc)
    return done


def tick(state: AppState) -> dict[str, int]:
    """Run what is due now (the body of the periodic job)."""
    done: dict[str, int] = {}
    if state.settings.delivery == "rq":
        # Events the database refused at capture, on this machine (the spool is a
        # file in the instance folder), are stored, then queued with the rest.
        done["spooled"] = load_spool(state, state.app.instance_path)
        done["queued"] = sweep(state, include_fresh=bool(done["spooled"]))
        done["changes_queued"] = sweep_changes(state)
    elif state.settings.delivery == "deferred" and shared.set_once(
        state, "agent", seconds=state.settings.agent_interval
    ):
        done.update(process(state, state.settings.batch_size))
    done.update(reconcile_due(state))
    done.update(refresh_index(state))
    done.update(housekeeping(state))
    return done


def reconcile_due(state: AppState) -> dict[str, int]:
    """Read amoCRM's events log if ``AMOCRM_RECONCILE_INTERVAL`` has passed since
    the last read by any process, and hand on what it found."""
    interval = state.settings.reconcile_interval
    if not interval or not shared.set_once(state, "reconcile", seconds=interval):
        return {}
    try:
        stored = reconcile(state)
    except AmoCRMError as exc:  # amoCRM is down: the next interval reads again
        log.warning("Reading amoCRM's events log failed: %s", exc)
        return {}
    hand_off_changes(state, stored)
    return {"reconciled": len(stored)}


def ensure_tick(state: AppState) -> None:
    """Schedule this app's next tick unless it is scheduled already (idempotent).
    The job id carries the queue: two sites sharing one Redis each get their own."""
    if not state.settings.redis_url:
        return
    queue = get_queue(state)
    slot = int(time.time() // TICK) + 1
    try:
        queue.enqueue_in(
            timedelta(seconds=max(slot * TICK - time.time(), 0)),
            "flask_amocrm.worker.jobs.tick",
            job_id=job_name(state, "tick", slot),
            unique=True,
            result_ttl=TICK * 2,
            description="amoCRM periodic tasks",
        )
    except DuplicateJobError:
        pass


def run_tick(state: AppState) -> dict[str, int]:
    """The periodic job: do what is due, then schedule the next tick."""
    try:
        return tick(state)
    finally:
        ensure_tick(state)
