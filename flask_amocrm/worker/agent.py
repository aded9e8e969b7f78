"""The agent: delivering due events in batches in this process (``flask amocrm
process``, cron, the ``deferred`` mode's periodic run, tests)."""

from __future__ import annotations

from flask import current_app

from ..inbox import due_inbound
from ..outbox import due_ids, load_spool
from ..state import AppState
from .deliver import deliver_events
from .inbound import handle_changes
from .rules_file import reload_rules


def process(state: AppState, limit: int | None = None) -> dict[str, int]:
    """Store what was spooled, then deliver up to ``limit`` due events (all of them
    with ``None``) in batches of ``AMOCRM_BATCH_SIZE``, and send the signals of
    the due changes from amoCRM; return how many ended in each status, how many
    were ``spooled`` and how many changes were handled (``changes_<status>``)."""
    counts: dict[str, int] = {"spooled": load_spool(state, current_app.instance_path)}
    reload_rules(state)  # a rule switched on again makes its held events due
    ids = due_ids(state, limit)
    size = state.settings.batch_size
    for start in range(0, len(ids), size):
        for outcome in deliver_events(ids[start : start + size]).values():
            counts[outcome] = counts.get(outcome, 0) + 1
    for outcome in handle_changes(state, due_inbound(state, limit)).values():
        counts[f"changes_{outcome}"] = counts.get(f"changes_{outcome}", 0) + 1
    return counts
