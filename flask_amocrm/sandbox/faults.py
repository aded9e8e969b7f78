"""Injected faults for tests and benchmarks (``POST /_sandbox/faults``).

A fault answers matching requests with a status, drops their connection, or delays
them. It applies to ``/api/v4``, ``/drive`` and ``/oauth2`` paths only, for ``count``
requests, for ``seconds``, or until cleared.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Any


@dataclass
class Fault:
    """One fault spec."""

    status: int | None = None
    drop: bool = False
    #: Carry the request out, then drop the connection: the client never hears that
    #: it worked (a worker killed, or a network cut, after amoCRM did the work).
    lose_answer: bool = False
    latency_ms: float = 0
    count: int | None = None
    until: float | None = None
    path: str | None = None
    method: str | None = None

    def as_dict(self) -> dict[str, Any]:
        """The spec as JSON."""
        return {
            "status": self.status,
            "drop": self.drop,
            "lose_answer": self.lose_answer,
            "latency_ms": self.latency_ms,
            "count": self.count,
            "until": self.until,
            "path": self.path,
            "method": self.method,
        }


@dataclass
class Decision:
    """What to do with one request."""

    status: int | None = None
    drop: bool = False
    lose_answer: bool = False
    latency_ms: float = 0


class Faults:
    """The active faults, consumed as requests arrive."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._faults: list[Fault] = []

    def clear(self) -> None:
        """Remove every fault."""
        with self._lock:
            self._faults.clear()

    def add(self, spec: dict[str, Any]) -> Fault:
        """Add a fault from its JSON spec; raises ValueError on a bad spec."""
        status = spec.get("status")
        drop = bool(spec.get("drop", False))
        lose_answer = bool(spec.get("lose_answer", False))
        latency = float(spec.get("latency_ms", 0) or 0)
        if status is not None and not (
            isinstance(status, int) and 100 <= status <= 599
        ):
            raise ValueError("status must be an HTTP status code")
        if status is None and not drop and not lose_answer and not latency:
            raise ValueError("give status, drop, lose_answer or latency_ms")
        count = spec.get("count")
        if count is not None and (not isinstance(count, int) or count < 1):
            raise ValueError("count must be a positive integer")
        seconds = spec.get("seconds")
        until = None
        if seconds is not None:
            until = time.monotonic() + float(seconds)
        fault = Fault(
            status=status,
            drop=drop,
            lose_answer=lose_answer,
            latency_ms=latency,
            count=count,
            until=until,
            path=spec.get("path"),
            method=(spec.get("method") or "").upper() or None,
        )
        with self._lock:
            self._faults.append(fault)
        return fault

    def list(self) -> list[dict[str, Any]]:
        """The active faults as JSON."""
        with self._lock:
            self._expire()
            return [f.as_dict() for f in self._faults]

    def _expire(self) -> None:
        now = time.monotonic()
        self._faults = [
            f
            for f in self._faults
            if (f.count is None or f.count > 0) and (f.until is None or f.until > now)
        ]

    def decide(self, method: str, path: str) -> Decision:
        """Consume the faults that match this request and say what to do."""
        decision = Decision()
        with self._lock:
            self._expire()
            for fault in self._faults:
                if fault.path and not path.startswith(fault.path):
                    continue
                if fault.method and fault.method != method:
                    continue
                decided = (
                    decision.drop or decision.lose_answer or decision.status is not None
                )
                terminal = fault.drop or fault.lose_answer or fault.status is not None
                if terminal and decided and not fault.latency_ms:
                    continue  # an earlier fault already answers this request
                if fault.count is not None:
                    fault.count -= 1
                decision.latency_ms += fault.latency_ms
                if terminal and not decided:
                    if fault.drop:
                        decision.drop = True
                    elif fault.lose_answer:
                        decision.lose_answer = True
                    else:
                        decision.status = fault.status
            self._expire()
        return decision
