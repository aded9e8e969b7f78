"""Running RQ jobs inside the Flask app (after pallets-eco/flask-rq's job class).

:func:`make_job_class` builds a job class bound to one or more apps (held weakly):
each job runs in a fresh app context of the app whose queue it came from, so teardown
handlers run after each job, and one worker process can serve several sites, each on
its own ``AMOCRM_QUEUE``. ``flask amocrm worker`` uses it with the app it was started
with; ``rq worker -w flask_amocrm.worker.AmoWorker amocrm`` (:mod:`.amo_worker`)
loads the app that ``FLASK_APP`` names, once, before work horses fork. A plain
``rq worker amocrm`` works too: then each job loads that app itself
(:func:`flask_app`).
"""

from __future__ import annotations

import os
import weakref
from collections.abc import Callable
from typing import Any

from flask import Flask
from redis.exceptions import RedisError
from rq import get_current_job
from rq.job import Job
from rq.worker import Worker

from ..state import get_state

_loaded: dict[str, Flask] = {}


def flask_app() -> Flask:
    """The app ``FLASK_APP`` names, loaded once per process (for workers started
    without an app of their own)."""
    path = os.environ.get("FLASK_APP") or ""
    if path not in _loaded:
        from flask.cli import ScriptInfo

        # The ``flask`` command reads FLASK_APP through click; outside it we must.
        app = ScriptInfo(app_import_path=path or None).load_app()
        if "amocrm" not in app.extensions:
            raise RuntimeError(
                "The app FLASK_APP names does not use Flask-AmoCRM; RQ jobs of "
                "flask_amocrm need it."
            )
        _loaded[path] = app
    return _loaded[path]


class AppJob(Job):
    """A job that runs in a fresh app context of the app its queue belongs to."""

    #: Queue name -> weak reference to its app; set by :func:`make_job_class`.
    apps: dict[str, weakref.ReferenceType[Flask]] = {}

    def app(self) -> Flask:
        """The app this job runs in."""
        ref = self.apps.get(self.origin)
        if ref is None and len(self.apps) == 1:
            ref = next(iter(self.apps.values()))
        app = ref() if ref is not None else None
        return app if app is not None else flask_app()

    def perform(self) -> Any:
        with self.app().app_context():
            return super().perform()


def make_job_class(*apps: Flask) -> type[AppJob]:
    """A job class bound to ``apps``: each job runs in the app of its queue."""
    bound = {get_state(app).settings.queue: weakref.ref(app) for app in apps}
    return type("AppJob", (AppJob,), {"apps": bound})


def shutdown_requested() -> Callable[[], bool]:
    """Whether the worker running the current job was asked to stop (SIGTERM: RQ's
    warm shutdown waits for the job in hand): a job that takes batch after batch
    asks before each. Outside a worker, never."""
    job = get_current_job()
    if job is None or not job.worker_name:
        return lambda: False
    key = Worker.redis_worker_namespace_prefix + job.worker_name
    connection = job.connection

    def asked() -> bool:
        try:
            return bool(connection.hexists(key, "shutdown_requested_date"))
        except RedisError:
            return False  # the batch's own calls will find Redis down

    return asked
