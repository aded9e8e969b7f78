"""The agent: delivering due events in batches in this process (``flask amocrm
process``, cron, the ``deferred`` mode's periodic run, tests)."""

from __future__ import annotations

import math

from flask import current_app

from ..inbox import due_inbound
from ..outbox import load_spool
from ..state import AppState
from .backlog import drain
from .inbound import handle_changes
from .rules_file import reload_rules


def process(state: AppState, limit: int | None = None) -> dict[str, int]:
    """Store what was spooled, then deliver up to ``limit`` due events (all of them
    with ``None``) in batches of ``AMOCRM_BATCH_SIZE``, several at once
    (:func:`~.backlog.drain`), and send the signals of
    the due changes from amoCRM; return how many ended in each status, how many
    were ``spooled`` and how many changes were handled (``changes_<status>``)."""
    counts: dict[str, int] = {"spooled": load_spool(state, current_app.instance_path)}
    reload_rules(state)  # a rule switched on again makes its held events due
    for outcome in drain(state, limit=limit, seconds=math.inf, give_up=False).values():
        counts[outcome] = counts.get(outcome, 0) + 1
    for outcome in handle_changes(state, due_inbound(state, limit)).values():
        counts[f"changes_{outcome}"] = counts.get(f"changes_{outcome}", 0) + 1
    return counts
