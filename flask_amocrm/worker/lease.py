"""Holding on to claimed events while they are delivered.

A claim holds its events for :data:`~flask_amocrm.outbox.LEASE`: a worker killed
mid-batch leaves them ``processing``, and they are claimed again when the lease runs
out. A batch that takes longer than the lease (a 429 storm slows every request down
for minutes, duplicate control searches person after person) must not lose its
events to another worker while it is still sending them: both would create the same
leads. :class:`LeaseKeeper` renews the lease of a batch in hand every quarter of
:data:`~flask_amocrm.outbox.LEASE` from a thread of its own, and says which events
were lost anyway (the process was stopped longer than the lease): their outcome is
the other worker's to write.
"""

from __future__ import annotations

import logging
import threading
from datetime import datetime
from types import TracebackType

from .. import outbox
from ..state import AppState

log = logging.getLogger("flask_amocrm.worker")


class LeaseKeeper:
    """``with LeaseKeeper(state, {event_id: locked_until}) as keeper:`` renews
    the leases while the block runs; :meth:`renew` once more and :attr:`lost` (the
    events another worker holds now) before writing the outcomes."""

    def __init__(self, state: AppState, leases: dict[int, datetime | None]) -> None:
        self.state = state
        self._leases = dict(leases)
        self._lock = threading.Lock()
        self._done = threading.Event()
        self._thread: threading.Thread | None = None
        #: Events whose lease another worker took over.
        self.lost: set[int] = set()

    def renew(self) -> set[int]:
        """Renew every lease still held, now; the events lost so far. A database
        error leaves the leases as they were (the next renewal tries again)."""
        with self._lock:
            leases = {i: t for i, t in self._leases.items() if i not in self.lost}
            try:
                held = outbox.renew_leases(self.state, leases)
            except Exception:  # noqa: BLE001 - the database is down: next time
                log.warning("Could not renew the lease of events %s", sorted(leases))
                return set(self.lost)
            gone = set(leases) - set(held)
            if gone:
                log.warning(
                    "Events %s were claimed by another worker while this one held"
                    " them (their lease ran out); their outcome is left to it",
                    sorted(gone),
                )
            self.lost |= gone
            self._leases.update(held)
            return set(self.lost)

    def _beat(self) -> None:
        interval = max(1.0, outbox.LEASE.total_seconds() / 4)
        while not self._done.wait(interval):
            self.renew()

    def __enter__(self) -> LeaseKeeper:
        self._thread = threading.Thread(
            target=self._beat, name="amocrm-lease", daemon=True
        )
        self._thread.start()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._done.set()
        if self._thread is not None:
            self._thread.join()


__all__ = ["LeaseKeeper"]
