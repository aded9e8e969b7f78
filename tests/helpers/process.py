"""What a test's child process (a worker, one side of a race) needs to import the
same code as the test: this checkout first on ``PYTHONPATH``."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from typing import Any

#: The project's root: ``tests.helpers`` and this checkout's ``flask_amocrm``.
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
#: The ``flask`` command of this interpreter's environment.
FLASK = os.path.join(os.path.dirname(sys.executable), "flask")


def child_env(*paths: str, **variables: str) -> dict[str, str]:
    """This process's environment, with ``paths`` then :data:`ROOT` first on
    ``PYTHONPATH``, and ``variables`` set."""
    kept = filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))
    pythonpath = os.pathsep.join(dict.fromkeys([*paths, ROOT, *kept]))
    return dict(os.environ, **variables, PYTHONPATH=pythonpath)


def site_module(folder: Any, config: dict[str, Any]) -> str:
    """Write ``site_app.py`` into ``folder``: a Flask app with ``config`` (its
    values as Python literals) and Flask-AmoCRM, for a child process to load with
    ``FLASK_APP=site_app``; the folder, for :func:`child_env`."""
    (folder / "site_app.py").write_text(
        textwrap.dedent(f"""
        from flask import Flask
        from flask_amocrm import AmoCRM

        app = Flask("site_app", instance_path={str(folder / "instance0")!r})
        app.config.update({config!r})
        AmoCRM(app)
    """)
    )
    return str(folder)


def flask_command(
    folder: Any, config: dict[str, Any], *args: str
) -> subprocess.CompletedProcess[str]:
    """``flask amocrm ARGS`` in a child process, on the site ``config`` describes
    (:func:`site_module`); what it printed and its exit code."""
    path = site_module(folder, config)
    return subprocess.run(
        [FLASK, "amocrm", *args],
        env=child_env(path, FLASK_APP="site_app"),
        cwd=path,
        capture_output=True,
        text=True,
        timeout=120,
    )


def start_worker(folder: Any, config: dict[str, Any]) -> subprocess.Popen[str]:
    """``flask amocrm worker`` running in a child process on that site; the caller
    stops it (:func:`stop`)."""
    path = site_module(folder, config)
    return subprocess.Popen(
        [FLASK, "amocrm", "worker"],
        env=child_env(path, FLASK_APP="site_app"),
        cwd=path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def stop(process: subprocess.Popen[str]) -> tuple[str, str]:
    """Stop a child process this test started (SIGTERM: RQ's warm shutdown, then
    SIGKILL after 20 s); what it printed on stdout and stderr."""
    process.terminate()
    try:
        return process.communicate(timeout=20)
    except subprocess.TimeoutExpired:
        process.kill()
        return process.communicate()
