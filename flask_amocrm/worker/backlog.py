"""Working through a backlog: one job delivers batch after batch, several at once.

amoCRM answers each call after a round trip, and the calls of one batch follow one
another (the leads before their notes and tasks), so a worker that sends one batch
at a time leaves the request budget unused while it waits for an answer and while it
claims and plans the next batch. :func:`drain` keeps ``AMOCRM_WORKER_THREADS``
batches on the way in threads of this process: while one waits for amoCRM, the next
is claimed and planned (each thread is started once the one before has planned its
batch: planning at once, they would share the CPU and delay every first call), and
the shared rate limiter
(:mod:`flask_amocrm.amo.ratelimit`) hands the account's requests to whichever is
ready. Each thread claims the oldest due events itself
(:func:`~flask_amocrm.outbox.claim_due`), so the threads of every worker on every
machine take different events, in full batches.

A job that started draining stops taking new batches after :data:`DRAIN_SECONDS`,
so the periodic tick and the changes from amoCRM on the same queue get their turn;
the events still due have their own jobs, or the sweeper queues them.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from flask import Flask, current_app
from sqlalchemy.pool import SingletonThreadPool, StaticPool

from ..models import RETRYING
from ..state import AppState
from .deliver import (
    claim_events,
    deliver_claimed,
    deliver_due,
    deliver_events,
    next_batch_size,
)

log = logging.getLogger("flask_amocrm.worker")

#: How long one job keeps taking new batches (RQ stops a job after ten minutes).
DRAIN_SECONDS = 60.0


def drain(
    state: AppState,
    *,
    first: list[int] | None = None,
    ids: list[int] | None = None,
    seconds: float = DRAIN_SECONDS,
    after_batch: Callable[[list[int]], None] | None = None,
    give_up: bool = True,
    stop: Callable[[], bool] | None = None,
) -> dict[int, str]:
    """Deliver due events batch after batch, ``AMOCRM_WORKER_THREADS`` batches at
    once, until none is due or ``seconds`` passed; the status each event ended in.

    ``first`` is a batch to deliver first (a job's own event and the events due with
    it): one thread starts with it while the others claim the oldest due events.
    ``ids`` are the events to deliver instead (those due when a run began), whatever
    becomes due meanwhile. ``after_batch`` is given the ids of each batch once it is
    done (the worker drops their queued jobs). No new batch is taken once ``stop()``
    says so (the worker was asked to shut down).

    With ``give_up`` a thread stops early when amoCRM took nothing of its batch
    (every event is to be retried: amoCRM is down or pausing us), leaving the rest
    to their jobs and the sweeper. The first unexpected error of a thread is raised
    once every thread has finished the batch in hand."""
    app: Flask = current_app._get_current_object()  # type: ignore[attr-defined]
    deadline = time.monotonic() + seconds
    lock = threading.Lock()
    outcomes: dict[int, str] = {}
    errors: list[BaseException] = []
    todo = None if ids is None else list(ids)

    threads: list[threading.Thread] = []
    others = _threads(state) - 1

    def start_another() -> None:
        """Start one more lane, up to ``AMOCRM_WORKER_THREADS``: each is started
        when the one before has planned its batch. Lanes planning at once would
        share the CPU, and every batch's first call would wait for all of them."""
        with lock:
            if len(threads) >= others or errors:
                return
            thread = threading.Thread(
                target=lane, name=f"amocrm-batch-{len(threads) + 1}", daemon=True
            )
            threads.append(thread)
        thread.start()

    def next_batch(planned: Callable[[], None]) -> dict[int, str] | None:
        """The outcomes of the next batch (:func:`~.deliver.next_batch_size`);
        ``{}`` when it claimed nothing, ``None`` when there is no more to take."""
        size = next_batch_size(state)
        if time.monotonic() >= deadline or (stop is not None and stop()):
            return None
        with lock:
            if errors:
                return None
            if todo is None:
                batch = None
            elif todo:
                batch, todo[:size] = todo[:size], []
            else:
                return None
        if batch is None:
            return deliver_due(size, planned=planned)
        return deliver_events(batch, planned=planned)

    def lane(batch: list[int] | None = None) -> None:
        started = False

        def planned() -> None:
            nonlocal started
            if not started:
                started = True
                start_another()

        with app.app_context():
            try:
                while True:
                    if batch:
                        done, batch = deliver_claimed(batch, planned=planned), None
                    else:
                        found = next_batch(planned)
                        if found is None or (not found and todo is None):
                            return  # no more to take, or nothing is due
                        done = found
                    with lock:
                        outcomes.update(done)
                    if done and after_batch is not None:
                        after_batch(list(done))
                    if give_up and _stalled(done):
                        return
            except BaseException as exc:  # noqa: BLE001 - raised in the caller
                log.exception("Delivering a batch failed")
                with lock:
                    errors.append(exc)

    # Claimed before the other threads claim theirs, so they do not split it.
    # Workers starting together compute their first batches from the same oldest
    # events: what another took is made up from the events nobody holds.
    claimed = (
        claim_events(first[: next_batch_size(state)], fill=True) if first else None
    )
    lane(claimed)  # this thread is the first lane; it starts the next
    joined = 0
    while True:
        with lock:
            if joined == len(threads):
                break  # a lane starts the next before it ends: none is left out
            thread = threads[joined]
        joined += 1
        # The other threads finish the batch in hand before this returns, even if
        # this thread is interrupted meanwhile (RQ's job timeout): with an error
        # recorded they take no new one.
        while thread.is_alive():
            try:
                thread.join()
            except BaseException as exc:  # noqa: BLE001 - raised below
                with lock:
                    errors.append(exc)
    if errors:
        raise errors[0]
    return outcomes


def _threads(state: AppState) -> int:
    """``AMOCRM_WORKER_THREADS``, or 1 where the events database is one connection
    (an in-memory SQLite database, as in a site's own tests) that threads cannot
    share."""
    if isinstance(state.engine.pool, StaticPool | SingletonThreadPool):
        return 1
    return state.settings.worker_threads


def _stalled(outcomes: dict[int, str]) -> bool:
    """Whether amoCRM took nothing of a batch: every event is to be retried."""
    return bool(outcomes) and all(o == RETRYING for o in outcomes.values())


__all__ = ["DRAIN_SECONDS", "drain"]
