"""One event of a batch on its way to amoCRM: its plan, its progress, its fate."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ..errors import AmoCRMError
from ..models import Event
from ..progress import Progress
from ..rules.plan import Plan


@dataclass
class Delivery:
    """One event of a batch, its plan and what became of it."""

    event: Event
    plan: Plan
    #: Commits the event's progress (``event.remote``) right away.
    save: Callable[[], None]
    #: Set when this event failed on its own (the rest of the batch goes on).
    error: AmoCRMError | None = None
    #: The lead field that carries the event's uid (:mod:`.markers`), if any.
    marker: int | None = None
    #: Entities the lookup read and reuses, as amoCRM returned them (this attempt
    #: only: saves the update step reading them again).
    current: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: Whether :meth:`record` commits at once. :func:`execute` turns it off and
    #: commits once per API answer instead (the deliveries of a batch share one
    #: session): one commit per event and step cost more than the calls themselves.
    autosave: bool = True

    @property
    def request_id(self) -> str:
        """The event's id, as the ``request_id`` of its items."""
        return str(self.event.id)

    def ids(self) -> dict[str, int | None]:
        """The lead, contact and company of this event known so far."""
        remote = self.event.remote or {}
        existing = self.plan.existing(Progress.from_json(remote))
        out: dict[str, int | None] = {}
        for key in ("lead", "contact", "company"):
            out[key] = remote.get(f"{key}_id") or existing.get(key)
        return out

    def pending(self, step: str) -> bool:
        """Whether ``step`` is one of this plan's and not done yet."""
        remote = self.event.remote or {}
        return (
            self.error is None
            and step in self.plan.steps(Progress.from_json(remote))
            and step not in remote.get("done", [])
        )

    def record(self, step: str | None = None, /, **values: Any) -> None:
        """Write ``values`` (and ``step`` as done) into ``remote`` and save now
        (inside :func:`execute`: with the rest of the answer it came in).

        ``remote`` is reassigned, never changed in place, so SQLAlchemy sees it."""
        remote = dict(self.event.remote or {})
        remote.update(values)
        if step is not None:
            remote["done"] = [*remote.get("done", []), step]
        self.event.remote = remote
        if self.autosave:
            self.save()
