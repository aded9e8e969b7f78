"""The account's state in memory: one lock, optional JSON persistence.

Views take ``store.lock`` for the whole of a request's work, so a batch is applied
atomically and concurrent clients see a consistent account, as a real account does.
"""

from __future__ import annotations

import copy
import json
import os
import tempfile
import threading
import time
from collections.abc import Callable
from typing import Any

from .seed import make_seed

# Parts of the state that are dicts keyed by integer id.
_ID_MAPS = ("leads", "contacts", "companies", "tasks", "sources")
_NESTED_ID_MAPS = ("notes", "tags")


class Store:
    """Everything the account holds, plus OAuth grants and counters."""

    def __init__(self, subdomain: str = "sandbox", state_file: str | None = None):
        self.lock = threading.RLock()
        self.subdomain = subdomain
        self.state_file = state_file
        self.data: dict[str, Any] = make_seed(subdomain)
        self.dirty = False
        # Called with (destination, event code, form body) for each webhook due.
        self.webhook_sink: Callable[[str, str, str], None] | None = None
        if state_file and os.path.exists(state_file):
            self.load(state_file)

    # -- lifecycle -------------------------------------------------------------

    def reset(self) -> None:
        """Restore the seeded account (OAuth grants are kept: they are not data)."""
        with self.lock:
            oauth = self.data.get("oauth")
            self.data = make_seed(self.subdomain)
            if oauth is not None:
                self.data["oauth"] = oauth
            self.dirty = True

    def next_id(self, kind: str) -> int:
        """Allocate the next id of ``kind`` (``leads``, ``notes``, ``field`` ...)."""
        with self.lock:
            value = int(self.data["counters"][kind])
            self.data["counters"][kind] = value + 1
            return value

    # -- persistence -----------------------------------------------------------

    def to_json(self) -> dict[str, Any]:
        """The state as JSON-able data (integer keys become strings)."""
        with self.lock:
            return copy.deepcopy(self.data)

    def load(self, path: str) -> None:
        """Load a state saved by :meth:`save`."""
        with open(path, encoding="utf-8") as fh:
            raw = json.load(fh)
        for name in _ID_MAPS:
            raw[name] = {int(k): v for k, v in raw.get(name, {}).items()}
        for name in _NESTED_ID_MAPS:
            raw[name] = {
                entity: {int(k): v for k, v in items.items()}
                for entity, items in raw.get(name, {}).items()
            }
        fresh = make_seed(self.subdomain)
        fresh.update(raw)
        with self.lock:
            self.data = fresh
            self.dirty = False

    def save(self, path: str | None = None) -> None:
        """Write the state atomically to ``path`` (default: the state file)."""
        path = path or self.state_file
        if not path:
            return
        with self.lock:
            text = json.dumps(self.data, ensure_ascii=False)
            self.dirty = False
        directory = os.path.dirname(os.path.abspath(path))
        fd, tmp = tempfile.mkstemp(prefix=".sandbox-", dir=directory)
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
        os.replace(tmp, path)

    def save_if_dirty(self) -> None:
        """Persist after a change, when a state file is configured."""
        if self.state_file and self.dirty:
            self.save()

    # -- small accessors used by many views ------------------------------------

    @property
    def account_id(self) -> int:
        return int(self.data["account"]["id"])

    def entities(self, entity: str) -> dict[int, dict[str, Any]]:
        """The id → object map of leads, contacts, companies or tasks."""
        return self.data[entity]

    def user(self, user_id: Any) -> dict[str, Any] | None:
        """The user with ``user_id``, or None."""
        for user in self.data["users"]:
            if user["id"] == user_id:
                return user
        return None

    def pipeline(self, pipeline_id: Any) -> dict[str, Any] | None:
        """The pipeline with ``pipeline_id``, or None."""
        for pipeline in self.data["pipelines"]:
            if pipeline["id"] == pipeline_id:
                return pipeline
        return None

    def main_pipeline(self) -> dict[str, Any]:
        """The pipeline marked ``is_main``."""
        for pipeline in self.data["pipelines"]:
            if pipeline["is_main"]:
                return pipeline
        return self.data["pipelines"][0]

    def fields(self, entity: str) -> list[dict[str, Any]]:
        """The custom fields defined for ``entity``."""
        return self.data["custom_fields"][entity]

    def touch(self) -> None:
        """Mark the state changed (persisted after the request)."""
        self.dirty = True


def now() -> int:
    """Unix seconds, as every amoCRM timestamp."""
    return int(time.time())
