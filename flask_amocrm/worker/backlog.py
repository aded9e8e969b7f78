"""Working through a backlog: one job delivers batch after batch, several at once.

amoCRM answers each call after a round trip, and the calls of one batch follow one
another (the leads before their notes and tasks), so a worker that sends one batch
at a time leaves the request budget unused while it waits for an answer and while it
claims and plans the next batch. :func:`drain` keeps ``AMOCRM_WORKER_THREADS``
batches on the way in threads of this process: while one waits for amoCRM, the next
is claimed and planned, and the shared rate limiter
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
from .deliver import claim_events, deliver_claimed, deliver_due

log = logging.getLogger("flask_amocrm.worker")

#: How long one job keeps taking new batches (RQ stops a job after ten minutes).
DRAIN_SECONDS = 60.0


def drain(
    state: AppState,
    *,
    first: list[int] | None = None,
    limit: int | None = None,
    seconds: float = DRAIN_SECONDS,
    after_batch: Callable[[list[int]], None] | None = None,
    give_up: bool = True,
) -> dict[int, str]:
    """Deliver due events batch after batch, ``AMOCRM_WORKER_THREADS`` batches at
    once, until none is due, ``limit`` events were taken or ``seconds`` passed;
    the status each event ended in. ``first`` is a batch to deliver first (a
    job's own event and the events due with it): one thread starts with it while
    the others claim theirs. ``after_batch`` is given the ids of each batch
    once it is done (the worker drops their queued jobs).

    With ``give_up`` a thread stops early when amoCRM took nothing of its batch
    (every event is to be retried: amoCRM is down or pausing us), leaving the rest
    to their jobs and the sweeper. The first
    unexpected error of a thread is raised once every thread has stopped."""
    app: Flask = current_app._get_current_object()  # type: ignore[attr-defined]
    deadline = time.monotonic() + seconds
    size = state.settings.batch_size
    lock = threading.Lock()
    outcomes: dict[int, str] = {}
    errors: list[BaseException] = []
    left = [limit]  # events still to take, None: no limit

    def take() -> int:
        with lock:
            if errors or left[0] is None:
                return 0 if errors else size
            count = min(size, left[0])
            left[0] -= count
            return count

    def lane(batch: list[int] | None = None) -> None:
        with app.app_context():
            try:
                while time.monotonic() < deadline:
                    if batch:
                        done, batch = deliver_claimed(batch), None
                    else:
                        count = take()
                        if not count:
                            return
                        done = deliver_due(count)
                        if not done:
                            return  # nothing is due
                    with lock:
                        outcomes.update(done)
                    if after_batch is not None:
                        after_batch(list(done))
                    if give_up and _stalled(done):
                        return
            except BaseException as exc:  # noqa: BLE001 - raised in the caller
                log.exception("Delivering a batch failed")
                with lock:
                    errors.append(exc)

    # Claimed before the other threads claim theirs, so they do not split it.
    claimed = claim_events(first) if first else None
    threads = [
        threading.Thread(target=lane, name=f"amocrm-batch-{n}", daemon=True)
        for n in range(1, _threads(state))
    ]
    for thread in threads:
        thread.start()
    lane(claimed)  # this thread is one of them
    for thread in threads:
        thread.join()
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
