"""What the metrics count, as it happens, in whichever process it happens in.

RQ forks a work horse per job and workers run on other machines, so a counter kept in
the memory of one process would tell the web process that serves ``/metrics``
nothing. The counts go to the store every process of the site shares instead
(:func:`flask_amocrm.shared.add_counts`: one hash in Redis, one ``HINCRBY`` pipeline
per write; the ``amocrm_counters`` table where there is no Redis), and the metrics
endpoint reads them back (:func:`read`).

The cost on a worker's path is one pipelined Redis call per request to amoCRM
(:class:`Meter`) and one per delivered batch (:func:`count_outcomes`), and nothing at
all when ``AMOCRM_METRICS_PATH`` is not set. Counting never raises: a count that
cannot be written is lost, the delivery is not.

Nothing counted here is personal or secret: outcomes, the endpoints of the API with
every id taken out of the path (``/api/v4/leads/{id}/notes``), HTTP statuses,
seconds.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from . import shared
from .models import DELIVERED, Event
from .state import AppState

log = logging.getLogger("flask_amocrm")

#: The group of counters in the shared store (:func:`flask_amocrm.shared.add_counts`).
GROUP = "metrics"
#: The upper bounds, in seconds, of the delivery delay histogram's buckets.
DELAY_BUCKETS: tuple[float, ...] = (
    1,
    5,
    15,
    30,
    60,
    300,
    900,
    1800,
    3600,
    3 * 3600,
    6 * 3600,
    86400,
)
#: The ``status`` label of a request that got no answer (network, timeout).
NO_ANSWER = "none"
#: The most path segments an endpoint label keeps.
MAX_SEGMENTS = 8

# A segment of a path kept as it is: a word of the API (``leads``, ``complex``,
# ``custom_fields``) or a version (``v4``, ``v1.0``); anything else (an id, a uuid, an
# upload session) becomes ``{id}``.
_WORD = re.compile(r"(?:[a-z_]+|v\d+(?:\.\d+)?)\Z")
_SEP = "|"


def enabled(state: AppState) -> bool:
    """Whether this site keeps metrics (``AMOCRM_METRICS_PATH`` is set)."""
    return state.settings.metrics_path is not None


def endpoint(path: str) -> str:
    """A path as a bounded label: ids, uuids and tokens in it become ``{id}``, the
    query is left out (``/api/v4/leads/123/notes?x=1`` -> ``/api/v4/leads/{id}/notes``).
    """
    segments = path.split("?", 1)[0].strip("/").split("/")[:MAX_SEGMENTS]
    return "/" + "/".join(s if _WORD.match(s) else "{id}" for s in segments if s)


def _add(state: AppState, counts: Mapping[str, int]) -> None:
    try:
        shared.add_counts(state, GROUP, counts)
    except Exception:  # noqa: BLE001 - a lost count must never stop a delivery
        log.warning("Could not write the metrics' counts", exc_info=True)


class Meter:
    """Counts the requests one process sends to amoCRM (the client's ``meter``)."""

    def __init__(self, state: AppState) -> None:
        self.state = state

    def api_call(
        self, method: str, path: str, status: int | None, waited: float
    ) -> None:
        """One request sent: its endpoint and answer, and the seconds it waited for
        its slot in the rate limit. One pipelined Redis call."""
        answer = NO_ANSWER if status is None else str(status)
        counts = {_SEP.join(("api", method, endpoint(path), answer)): 1}
        if waited > 0:
            counts["rate_limit_waits"] = 1
            counts["rate_limit_wait_ms"] = max(1, round(waited * 1000))
        _add(self.state, counts)


def count_outcomes(state: AppState, events: Iterable[Event]) -> None:
    """The outcome of each event of a delivered batch (its status now), and how long
    each delivered one took from capture to delivery: one write for the batch."""
    if not enabled(state):
        return
    counts: dict[str, int] = {}
    for event in events:
        name = _SEP.join(("events", event.status))
        counts[name] = counts.get(name, 0) + 1
        if event.status != DELIVERED or not event.delivered_at or not event.created_at:
            continue
        seconds = max(0.0, (event.delivered_at - event.created_at).total_seconds())
        bucket = next((str(b) for b in DELAY_BUCKETS if seconds <= b), "+Inf")
        for name, n in (
            (_SEP.join(("delay", bucket)), 1),
            ("delay_count", 1),
            ("delay_ms", round(seconds * 1000)),
        ):
            counts[name] = counts.get(name, 0) + n
    _add(state, counts)


def count_outage(state: AppState) -> None:
    """An outage began (the edge :mod:`flask_amocrm.worker.outage` mails about)."""
    if enabled(state):
        _add(state, {"outages": 1})


@dataclass
class Counts:
    """The counters as the metrics endpoint shows them."""

    #: outcome -> events that ended a delivery attempt so.
    events: dict[str, int] = field(default_factory=dict)
    #: (method, endpoint, status) -> requests.
    api_calls: dict[tuple[str, str, str], int] = field(default_factory=dict)
    rate_limit_waits: int = 0
    rate_limit_wait_seconds: float = 0.0
    outages: int = 0
    #: (upper bound, delivered events that took at most that long), cumulative, the
    #: last bound ``+Inf``.
    delay_buckets: list[tuple[str, int]] = field(default_factory=list)
    delay_count: int = 0
    delay_seconds: float = 0.0


def read(state: AppState) -> Counts:
    """Every counter of the site, summed over Redis and the database."""
    raw = shared.read_counts(state, GROUP)
    out = Counts(
        rate_limit_waits=raw.get("rate_limit_waits", 0),
        rate_limit_wait_seconds=raw.get("rate_limit_wait_ms", 0) / 1000,
        outages=raw.get("outages", 0),
        delay_count=raw.get("delay_count", 0),
        delay_seconds=raw.get("delay_ms", 0) / 1000,
    )
    for name, value in raw.items():
        parts = name.split(_SEP)
        if parts[0] == "events" and len(parts) == 2:
            out.events[parts[1]] = value
        elif parts[0] == "api" and len(parts) == 4:
            out.api_calls[(parts[1], parts[2], parts[3])] = value
    running = 0
    for bound in [*(str(b) for b in DELAY_BUCKETS), "+Inf"]:
        running += raw.get(_SEP.join(("delay", bound)), 0)
        out.delay_buckets.append((bound, running))
    return out
