"""A running worker notices a changed rules file (``AMOCRM_RULES`` naming a TOML or
JSON file) and delivers with the new rules from its next batch on.

Each batch (and, in ``flask amocrm worker``, each job before the work horse forks)
looks at the file's modification time; when it changed, the file is read and
checked as at ``init_app``. A file that does not read or check keeps the rules the
process had, and says why in the log once per change.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time

from ..config import load_rules
from ..i18n import _
from ..rules.schema import validate_rules
from ..state import AppState

log = logging.getLogger("flask_amocrm.worker")


def reload_rules(state: AppState) -> bool:
    """Read the rules file again if it changed since it was read; whether the
    rules now in use are new."""
    settings = state.settings
    path = settings.rules_file
    if not path:
        return False
    try:
        mtime = os.stat(path).st_mtime
    except OSError:
        return False
    if mtime == settings.rules_mtime:
        return False
    refused = state.local("rules-refused", dict[str, float])
    if refused.get(path) == mtime:
        return False
    try:
        rules = load_rules(path)
        validate_rules(rules, marks=[m.name for m in settings.ad_marks])
    except Exception as exc:  # noqa: BLE001 - any problem keeps the old rules
        refused[path] = mtime
        log.error(
            "The changed rules file %s was not loaded, the rules read before stay "
            "in use: %s",
            path,
            exc,
        )
        return False
    state.settings = dataclasses.replace(settings, rules=rules, rules_mtime=mtime)
    log.warning("Rules reloaded from %s (changed %s)", path, _when(mtime))
    return True


def rules_age(state: AppState) -> str | None:
    """For ``flask amocrm status``: the rules file and when it last changed."""
    path = state.settings.rules_file
    if not path:
        return None
    try:
        mtime = os.stat(path).st_mtime
    except OSError as exc:
        return _(
            "rules file %(path)s: cannot be read (%(error)s)",
            path=path,
            error=exc.strerror,
        )
    minutes = (time.time() - mtime) / 60
    return _(
        "rules file %(path)s: changed %(when)s (%(minutes)s min ago); running "
        "workers reload it before their next batch",
        path=path,
        when=_when(mtime),
        minutes=format(minutes, ".0f"),
    )


def _when(stamp: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(stamp))
