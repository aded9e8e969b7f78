"""Running RQ jobs inside the Flask app (after pallets-eco/flask-rq).

``flask amocrm worker`` binds the app it was started with; every job then runs in a
fresh app context of it, so teardown handlers run after each job. ``rq worker -w
flask_amocrm.worker.AmoWorker amocrm`` does the same with the app named by
``FLASK_APP``, loaded once in the worker process (work horses fork from it). A plain
``rq worker amocrm`` works too: then each job's work horse loads the app itself.
"""

from __future__ import annotations

import os
import weakref
from typing import Any

from flask import Flask
from rq.job import Job
from rq.worker import Worker

_bound: weakref.ReferenceType[Flask] | None = None
_loaded: Flask | None = None


def bind_app(app: Flask) -> None:
    """Make ``app`` the one jobs in this process run in."""
    global _bound
    _bound = weakref.ref(app)


def job_app() -> Flask:
    """The app jobs run in: the bound one, else the one ``FLASK_APP`` names."""
    global _loaded
    app = _bound() if _bound is not None else None
    if app is not None:
        return app
    if _loaded is None:
        from flask.cli import ScriptInfo

        # The ``flask`` command reads FLASK_APP through click; outside it we must.
        _loaded = ScriptInfo(app_import_path=os.environ.get("FLASK_APP")).load_app()
        if "amocrm" not in _loaded.extensions:
            raise RuntimeError(
                "The app FLASK_APP names does not use Flask-AmoCRM; RQ jobs of "
                "flask_amocrm need it."
            )
    return _loaded


class AppJob(Job):
    """A job that runs in a fresh app context of the bound app."""

    def perform(self) -> Any:
        with job_app().app_context():
            return super().perform()


class AmoWorker(Worker):
    """An RQ worker that loads the Flask app once and runs jobs in its context.

    On every maintenance pass it also makes sure the periodic tick is scheduled (it
    runs when a worker with ``--with-scheduler`` is up), so events due for a retry, or
    lost by Redis, are queued again even after Redis restarted empty.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("job_class", AppJob)
        kwargs.setdefault("log_job_description", False)  # never log ids' payloads
        super().__init__(*args, **kwargs)
        job_app()  # load it now, before work horses fork

    def run_maintenance_tasks(self) -> None:
        super().run_maintenance_tasks()
        from .schedule import ensure_tick

        with job_app().app_context():
            ensure_tick()
