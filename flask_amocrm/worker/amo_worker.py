"""The RQ worker of Flask-AmoCRM (``flask amocrm worker``, or ``rq worker -w
flask_amocrm.worker.AmoWorker``)."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from flask import Flask
from rq.worker import Worker

from ..outbox import load_spool
from ..state import get_state
from .job_class import flask_app, make_job_class
from .rules_file import reload_rules
from .schedule import ensure_tick
from .sweeper import sweep

log = logging.getLogger("flask_amocrm.worker")


class AmoWorker(Worker):
    """An RQ worker whose jobs run in their app's context.

    ``apps``: the apps whose queues it serves (default: the app ``FLASK_APP`` names,
    loaded now, before work horses fork). On every maintenance pass it also makes
    sure each app's periodic tick is scheduled (it runs when a worker with
    ``--with-scheduler`` is up), so events due for a retry, or lost by Redis, are
    queued again even after Redis restarted empty.
    """

    def __init__(
        self, *args: Any, apps: Sequence[Flask] | None = None, **kwargs: Any
    ) -> None:
        self.apps = list(apps) if apps else [flask_app()]
        kwargs.setdefault("job_class", make_job_class(*self.apps))
        kwargs.setdefault("log_job_description", False)  # never log ids' payloads
        super().__init__(*args, **kwargs)

    def work(self, burst: bool = False, *args: Any, **kwargs: Any) -> bool:
        """Sweep once, then work. The sweep stores what capture spooled on this
        machine and queues the events that are due and have no job (Redis was down
        at capture, or the response that would have queued one was never closed);
        in ``burst`` mode every pending event is queued, however young, so the
        burst delivers everything due before it stops."""
        for app in self.apps:
            with app.app_context():
                try:
                    spooled = load_spool(get_state(app), app.instance_path)
                    sweep(get_state(app), include_fresh=burst or bool(spooled))
                except Exception:  # a worker that cannot sweep still works
                    log.exception("The start-up sweep of %s failed", app.name)
        return bool(super().work(burst, *args, **kwargs))

    def execute_job(self, job: Any, queue: Any) -> Any:
        # Before the work horse forks: a changed rules file is read once here,
        # not again in every horse.
        for app in self.apps:
            with app.app_context():
                reload_rules(get_state(app))
        return super().execute_job(job, queue)

    def run_maintenance_tasks(self) -> None:
        super().run_maintenance_tasks()  # type: ignore[no-untyped-call]
        for app in self.apps:
            with app.app_context():
                ensure_tick(get_state(app))
