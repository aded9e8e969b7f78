"""A client that sends nothing: it records the calls and makes up amoCRM's answers.

:class:`RecordingClient` is an :class:`~flask_amocrm.amo.client.AmoClient` whose one
low-level method, :meth:`~RecordingClient.request`, records ``(method, path, body)``
instead of sending; every verb (``create_complex``, ``add_notes``, ``search`` ...) is
the client's own, so the two cannot drift apart. It never touches the network, the
rate limiter or the API log. ``flask amocrm preview`` runs the real delivery code
against it.

Its answers have the shapes amoCRM gives, with ids counted up from ``first_id``:

* creates: HAL ``_embedded`` lists with ``id`` and ``request_id``; ``leads/complex`` a
  bare list with ``id``, ``contact_id``, ``company_id`` and ``merged``;
  ``leads/unsorted/forms`` a ``uid`` with the ``_embedded`` leads, contacts and
  companies made;
* updates: the items' own ids; links: the links sent;
* reads by id (``filter[id][]`` on an entity): one bare item per id asked for, as if
  the entities the rules name exist;
* every other read and every search: nothing, as amoCRM's 204 for an empty list.
"""

from __future__ import annotations

import copy
import uuid
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

from .client import API, AmoClient

#: The entities whose items can be read by id.
_ENTITIES = frozenset({"leads", "contacts", "companies"})


@dataclass(frozen=True)
class Call:
    """One call a :class:`RecordingClient` was asked to make."""

    method: str
    #: The API path, without the query string.
    path: str
    #: The JSON body sent (a copy), or ``None``.
    body: Any = None
    #: The query parameters, or ``None``.
    params: dict[str, Any] | None = None

    @property
    def target(self) -> str:
        """The path with its query string, as the API log shows it."""
        if not self.params:
            return self.path
        return f"{self.path}?{urlencode(self.params, doseq=True)}"


class RecordingClient(AmoClient):
    """An :class:`AmoClient` that records its calls in :attr:`calls` and answers
    them itself (see the module docstring)."""

    def __init__(
        self, base_url: str = "https://example.amocrm.ru", *, first_id: int = 1
    ) -> None:
        super().__init__(base_url, None)
        #: Every call made, in order.
        self.calls: list[Call] = []
        self._next_id = first_id

    def request(
        self,
        method: str,
        path: str,
        *,
        params: dict[str, Any] | None = None,
        json_body: Any = None,
        auth: bool = True,
        oauth: bool = False,
        host: str | None = None,
        headers: dict[str, str] | None = None,
        data: bytes | None = None,
    ) -> Any:
        """Record the call and return the made-up answer (``None`` for "204")."""
        method = method.upper()
        body = copy.deepcopy(json_body)
        self.calls.append(Call(method, path, body, dict(params) if params else None))
        parts = path.removeprefix(f"{API}/").split("/")
        if method == "GET":
            return self._read(parts, params or {})
        if method == "PATCH":
            return self._updated(parts, body)
        if method == "POST" and isinstance(body, list):
            return self._created(parts, body)
        return None

    def _new_id(self) -> int:
        self._next_id += 1
        return self._next_id - 1

    def _read(self, parts: list[str], params: dict[str, Any]) -> Any:
        ids = params.get("filter[id][]")
        if len(parts) != 1 or parts[0] not in _ENTITIES or not ids or "query" in params:
            return None
        wanted = ids if isinstance(ids, list) else [ids]
        items = [{"id": int(i), "_embedded": {}} for i in wanted]
        return {"_page": 1, "_embedded": {parts[0]: items}}

    def _updated(self, parts: list[str], body: Any) -> Any:
        items = body if isinstance(body, list) else []
        answers = [
            {"id": item.get("id"), "request_id": item.get("request_id")}
            for item in items
        ]
        return {"_embedded": {parts[0]: answers}}

    def _created(self, parts: list[str], items: list[Any]) -> Any:
        if parts == ["leads", "complex"]:
            return [self._complex(item) for item in items]
        if parts == ["leads", "unsorted", "forms"]:
            made = [self._unsorted(item) for item in items]
            return {"_total_items": len(made), "_embedded": {"unsorted": made}}
        if parts[-1] == "link":
            return {"_total_items": len(items), "_embedded": {"links": items}}
        made = [
            {"id": self._new_id(), "request_id": item.get("request_id")}
            for item in items
        ]
        return {"_total_items": len(made), "_embedded": {parts[-1]: made}}

    def _complex(self, item: dict[str, Any]) -> dict[str, Any]:
        embedded = item.get("_embedded") or {}
        lead_id = self._new_id()
        sub_ids: dict[str, int | None] = {}
        for key in ("contacts", "companies"):
            subs = embedded.get(key) or []
            sub_ids[key] = (subs[0].get("id") or self._new_id()) if subs else None
        return {
            "id": lead_id,
            "contact_id": sub_ids["contacts"],
            "company_id": sub_ids["companies"],
            "request_id": [item.get("request_id")],
            "merged": False,
        }

    def _unsorted(self, item: dict[str, Any]) -> dict[str, Any]:
        embedded = item.get("_embedded") or {}
        made: dict[str, list[dict[str, Any]]] = {}
        for key in ("leads", "contacts", "companies"):
            subs = embedded.get(key) or ([{}] if key == "leads" else [])
            made[key] = [{"id": self._new_id()} for _ in subs]
        return {
            "uid": str(uuid.UUID(int=self._new_id())),
            "request_id": item.get("request_id"),
            "_embedded": made,
        }
