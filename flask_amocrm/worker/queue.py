"""Putting events on the RQ queue. Only the event's id travels through Redis."""

from __future__ import annotations

import logging
import re
from datetime import datetime
from typing import TYPE_CHECKING, Any

from rq import Queue
from rq.exceptions import DuplicateJobError, NoSuchJobError
from rq.job import Job, JobStatus

from .job_class import make_job_class

if TYPE_CHECKING:
    from ..state import AppState

log = logging.getLogger("flask_amocrm.worker")

#: Kept briefly after success; a failed job (a crash, not an amoCRM error: those are
#: handled on the event) is kept a week for inspection.
RESULT_TTL = 60
FAILURE_TTL = 7 * 86400
JOB_TIMEOUT = 600
#: The job that delivers an event; the event's id is its one argument.
DELIVER = "flask_amocrm.worker.jobs.deliver"

_WAITING = {
    JobStatus.QUEUED,
    JobStatus.STARTED,
    JobStatus.SCHEDULED,
    JobStatus.DEFERRED,
}


def job_name(state: AppState, *parts: object) -> str:
    """An RQ job id of this app. Job ids are global in Redis, so they carry the queue
    name: two sites sharing a Redis with their own ``AMOCRM_QUEUE`` never take each
    other's ids. RQ allows letters, digits, ``_`` and ``-`` only."""
    queue = re.sub(r"[^A-Za-z0-9_-]", "_", state.settings.queue)
    return "-".join([queue, *(str(p) for p in parts)])


def job_id(state: AppState, event_id: int) -> str:
    """The RQ job id of an event: one job per event at a time
    (``amocrm-event-<id>`` by default)."""
    return job_name(state, "event", event_id)


def get_queue(state: AppState, *, for_worker: bool = False) -> Queue:
    """The RQ queue of this app (``AMOCRM_QUEUE``); its jobs run in this app."""
    job_class = state.local("job_class", lambda: make_job_class(state.app))
    return Queue(
        state.settings.queue,
        connection=state.redis(for_worker=for_worker),
        job_class=job_class,
    )


def _job_options(state: AppState, event_id: int) -> dict[str, Any]:
    """What every job of an event is given, however it is queued."""
    return {
        "job_id": job_id(state, event_id),
        "result_ttl": RESULT_TTL,
        "failure_ttl": FAILURE_TTL,
        "description": f"deliver amoCRM event {event_id}",
    }


def enqueue_new_event(state: AppState, event_id: int) -> None:
    """Queue delivery of an event capture has just stored, in one round trip to
    Redis: the job is built here and saved, with the queue's registration and the
    push of its id, in one ``MULTI``/``EXEC``. (RQ's unique ``enqueue`` takes two
    round trips: the queue's registration, then a script that checks and saves.)

    The event is new, so no job of it can be waiting; a job hash left under its id
    (an id SQLite gave again after the newest event was deleted) is replaced. Raises
    the Redis error if Redis cannot be reached: the event stays ``pending`` and the
    sweeper queues it later.
    """
    queue = state.local("web_queue", lambda: get_queue(state))
    job = queue.create_job(
        DELIVER, args=(event_id,), timeout=JOB_TIMEOUT, **_job_options(state, event_id)
    )
    with queue.connection.pipeline() as pipe:
        pipe.multi()
        pipe.delete(job.key)
        queue.enqueue_job(job, pipeline=pipe)
        pipe.execute()


def enqueue_event(
    state: AppState,
    event_id: int,
    *,
    at: datetime | None = None,
    abandoned: bool = False,
) -> bool:
    """Queue delivery of an event; ``False`` if a job for it is already waiting.

    ``abandoned``: the event's lease ran out, so a job of it that RQ still shows as
    started belongs to a worker that died (RQ notices that only minutes later); it is
    replaced. Raises the Redis error if Redis cannot be reached: the caller keeps the
    event ``pending`` and the sweeper queues it later.
    """
    queue = get_queue(state)
    jid = job_id(state, event_id)
    for _ in range(2):
        try:
            options = _job_options(state, event_id)
            options.update(unique=True, job_timeout=JOB_TIMEOUT)
            if at is None:
                queue.enqueue(DELIVER, event_id, **options)
            else:
                queue.enqueue_at(at, DELIVER, event_id, **options)
            return True
        except DuplicateJobError:
            try:
                old = Job.fetch(jid, connection=queue.connection)
            except NoSuchJobError:
                continue  # it ended between the two calls
            status = old.get_status(refresh=False)
            if status in _WAITING and not (abandoned and status == JobStatus.STARTED):
                return False
            old.delete()  # a finished or failed job of an earlier attempt
    return False


def jobs_waiting(
    state: AppState,
    event_ids: list[int],
    *,
    abandoned: set[int] | frozenset[int] = frozenset(),
) -> set[int]:
    """Which of these events have a job waiting (queued, scheduled or running), read
    in one round trip: the sweeper queues only the others, instead of trying each
    event's unique enqueue. A running job of an ``abandoned`` event (its lease ran
    out: its worker died) does not count."""
    if not event_ids:
        return set()
    connection = get_queue(state).connection
    with connection.pipeline(transaction=False) as pipe:
        for event_id in event_ids:
            pipe.hget(Job.key_for(job_id(state, event_id)), "status")
        statuses = pipe.execute()
    waiting = set()
    for event_id, raw in zip(event_ids, statuses, strict=True):
        status = raw.decode() if isinstance(raw, bytes) else raw
        if status not in _WAITING:
            continue
        if event_id in abandoned and status == JobStatus.STARTED:
            continue
        waiting.add(event_id)
    return waiting


def drop_jobs(state: AppState, event_ids: list[int]) -> None:
    """Remove the queued jobs of events a batch already handled, so workers do not
    spend a fork each on jobs that would only find their event done. A job that a
    worker already took runs and finds nothing to do (the event's claim decides)."""
    if not event_ids:
        return
    queue = get_queue(state, for_worker=True)
    with queue.connection.pipeline(transaction=False) as pipe:
        for event_id in event_ids:
            jid = job_id(state, event_id)
            queue.remove(jid, pipeline=pipe)
            pipe.delete(Job.key_for(jid))
        pipe.execute()


def change_job_id(state: AppState, change_id: int) -> str:
    """The RQ job id of a change from amoCRM (``amocrm-inbound-<id>``)."""
    return job_name(state, "inbound", change_id)


def enqueue_change(state: AppState, change_id: int) -> bool:
    """Queue the handling of a change from amoCRM; ``False`` if its job is
    waiting already. Raises the Redis error when Redis cannot be reached (the row
    stays due; the sweeper queues it later)."""
    queue = get_queue(state)
    jid = change_job_id(state, change_id)
    for _ in range(2):
        try:
            queue.enqueue(
                "flask_amocrm.worker.jobs.handle_change",
                change_id,
                job_id=jid,
                unique=True,
                result_ttl=RESULT_TTL,
                failure_ttl=FAILURE_TTL,
                job_timeout=JOB_TIMEOUT,
                description=f"signals of amoCRM change {change_id}",
            )
            return True
        except DuplicateJobError:
            try:
                old = Job.fetch(jid, connection=queue.connection)
            except NoSuchJobError:
                continue
            if old.get_status(refresh=False) in _WAITING:
                return False
            old.delete()
    return False
