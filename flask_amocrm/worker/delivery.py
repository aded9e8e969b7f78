"""One event of a batch on its way to amoCRM: its plan, its progress, its fate."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ..errors import AmoCRMError
from ..models import Event
from ..outbox import append_log
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
    #: What the ``before_push`` hooks changed in this attempt (:mod:`.push`), to be
    #: put on the plan again if it is rendered again.
    edits: Any = None

    @property
    def request_id(self) -> str:
        """The event's id, as the ``request_id`` of its items."""
        return str(self.event.id)

    def note(self, *lines: str) -> None:
        """Add ``lines`` to the event's log, within its caps, each line once."""
        self.event.log = append_log(self.event.log, lines)

    #: ``event.remote`` and its parse, read again when ``event.remote`` changes.
    _parsed: tuple[Any, Progress] | None = field(default=None, repr=False)

    @property
    def progress(self) -> Progress:
        """How far this event got: what ``event.remote`` holds, read once per change
        of it (steps ask many times per event). To be read: :meth:`record` changes
        it."""
        remote = self.event.remote
        parsed = self._parsed
        if parsed is None or parsed[0] is not remote:
            parsed = self._parsed = (remote, Progress.from_json(remote))
        return parsed[1]

    def ids(self) -> dict[str, int | None]:
        """The lead, contact and company of this event known so far."""
        progress = self.progress
        existing = self.plan.existing(progress)
        known = progress.ids()
        return {key: known[key] or existing.get(key) for key in known}

    def pending(self, step: str) -> bool:
        """Whether ``step`` is one of this plan's and not done yet."""
        progress = self.progress
        return (
            self.error is None
            and step in self.plan.steps(progress)
            and not progress.is_done(step)
        )

    def record(self, step: str | None = None, /, **values: Any) -> None:
        """Set these :class:`~flask_amocrm.progress.Progress` fields (and ``step``
        as done) and save now (inside :func:`~.execute.execute`: with the rest of
        the answer it came in).

        ``event.remote`` is reassigned, never changed in place, so SQLAlchemy sees
        it."""
        progress = Progress.from_json(self.event.remote)
        for name, value in values.items():
            if name == "extra" or not hasattr(progress, name):
                raise TypeError(f"{name!r} is not a field of Progress")
            setattr(progress, name, value)
        if step is not None:
            progress = progress.mark_done(step)
        self.event.remote = progress.to_json()
        if self.autosave:
            self.save()
