"""What a test's child process (a worker, one side of a race) needs to import the
same code as the test: this checkout first on ``PYTHONPATH``."""

from __future__ import annotations

import os

#: The project's root: ``tests.helpers`` and this checkout's ``flask_amocrm``.
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def child_env(*paths: str, **variables: str) -> dict[str, str]:
    """This process's environment, with ``paths`` then :data:`ROOT` first on
    ``PYTHONPATH``, and ``variables`` set."""
    kept = filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))
    pythonpath = os.pathsep.join(dict.fromkeys([*paths, ROOT, *kept]))
    return dict(os.environ, **variables, PYTHONPATH=pythonpath)
