"""The periodic work, run by the RQ scheduler or by ``flask amocrm process`` (cron).

Every :data:`TICK` seconds a ``tick`` job (scheduled by ``flask amocrm worker
--with-scheduler`` and kept alive on every worker maintenance pass) does what is due:

- ``rq`` mode: the sweeper queues events that are due and have no job;
- ``deferred`` mode (the agent): a batch of ``AMOCRM_BATCH_SIZE`` events is delivered
  every ``AMOCRM_AGENT_INTERVAL`` seconds;
- hourly: delivered events and API log rows past ``AMOCRM_RETENTION_DAYS`` are purged,
  and an OAuth token is refreshed before amoCRM's three-month expiry (keep-alive).

Each task is gated by a shared flag, so many workers run it once per interval.
"""

from __future__ import annotations

import logging
import time
from datetime import timedelta

from .. import flags
from ..extension import _State, get_state

log = logging.getLogger("flask_amocrm.worker")

#: Seconds between two ticks.
TICK = 30
_HOURLY = 3600


def housekeeping(state: _State) -> dict[str, int]:
    """The hourly tasks, run at most once an hour across all processes."""
    done: dict[str, int] = {}
    if not flags.set_once(state, "housekeeping", seconds=_HOURLY):
        return done
    from ..amo.apilog import purge_api_log
    from ..amo.auth import keep_alive
    from .retention import purge_events

    done["purged_events"] = purge_events(state)
    done["purged_api_log"] = purge_api_log(state)
    try:
        done["keep_alive"] = int(keep_alive(state))
    except Exception:  # a failed refresh alerts by itself; the tick goes on
        log.exception("amoCRM keep-alive refresh failed")
    return done


def tick() -> dict[str, int]:
    """Run what is due now (the body of the periodic job)."""
    from .sweeper import process, sweep

    state = get_state()
    done: dict[str, int] = {}
    if state.settings.delivery == "rq":
        done["queued"] = sweep()
    elif state.settings.delivery == "deferred" and flags.set_once(
        state, "agent", seconds=state.settings.agent_interval
    ):
        done.update(process(state.settings.batch_size))
    done.update(housekeeping(state))
    return done


def ensure_tick() -> None:
    """Schedule the next tick unless it is scheduled already (idempotent)."""
    from rq.exceptions import DuplicateJobError

    from .queue import get_queue

    state = get_state()
    if not state.settings.redis_url:
        return
    queue = get_queue(state)
    slot = int(time.time() // TICK) + 1
    try:
        queue.enqueue_in(
            timedelta(seconds=max(slot * TICK - time.time(), 0)),
            "flask_amocrm.worker.jobs.tick",
            job_id=f"amocrm-tick-{slot}",
            unique=True,
            result_ttl=TICK * 2,
            description="amoCRM periodic tasks",
        )
    except DuplicateJobError:
        pass


def run_tick() -> dict[str, int]:
    """The periodic job: do what is due, then schedule the next tick."""
    try:
        return tick()
    finally:
        ensure_tick()
