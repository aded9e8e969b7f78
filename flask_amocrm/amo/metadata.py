"""The account's metadata: pipelines, statuses, users, custom fields, task types,
and the host of its file service (``drive_url``).

Rules name these things the way people see them ("Sales", "New", "Anna", "Delivery
type" = "Courier"); the API wants ids. :class:`AccountMetadata` holds one snapshot of
the account and answers lookups by id, code or name, case-insensitively. The snapshot
is fetched once and cached as JSON in the shared cache of :mod:`flask_amocrm.shared`
(Redis, or the ``amocrm_flags`` table when there is no Redis) for
``AMOCRM_METADATA_TTL`` seconds, so the forked RQ work horses share it instead of each
fetching it again; ``flask amocrm sync`` refreshes it.

Lookups return ``None`` when nothing matches, so the caller decides whether that is a
rule error or a warning (an unknown enum label goes into a note, with a warning).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from .. import shared
from ..vocabulary import fold
from .clients import client_for

if TYPE_CHECKING:
    from ..state import AppState
    from .client import AmoClient

log = logging.getLogger("flask_amocrm.amo")

#: The entities whose custom fields are read.
ENTITIES = ("leads", "contacts", "companies")
_ENTITY_ALIASES = {
    "lead": "leads",
    "leads": "leads",
    "contact": "contacts",
    "contacts": "contacts",
    "company": "companies",
    "companies": "companies",
}
#: How long a process keeps a snapshot before it looks at the shared cache again, so
#: that ``flask amocrm sync`` reaches long-running processes quickly.
LOCAL_SECONDS = 30.0
#: Bumped when the cached JSON's shape changes; older snapshots are fetched again.
#: 2: the account's ``drive_url`` (the host of amoCRM's file service).
FORMAT = 2


def _as_id(key: Any) -> int | None:
    if isinstance(key, bool):
        return None
    if isinstance(key, int):
        return key
    if isinstance(key, str) and key.strip().isdigit():
        return int(key.strip())
    return None


def _find(
    items: Iterable[dict[str, Any]], key: Any, names: tuple[str, ...]
) -> dict[str, Any] | None:
    """The item whose id equals ``key``, else whose first matching ``names`` attribute
    equals it case-insensitively (attributes tried in order: code before name)."""
    items = list(items)
    if key is None:
        return None
    wanted_id = _as_id(key)
    if wanted_id is not None:
        for item in items:
            if item.get("id") == wanted_id:
                return item
    wanted = fold(key)
    if not wanted:
        return None
    for attr in names:
        for item in items:
            value = item.get(attr)
            if value is not None and fold(value) == wanted:
                return item
    return None


class AccountMetadata:
    """One snapshot of an account's pipelines, users, custom fields and task types.

    Build it with :meth:`fetch` (from the API), :meth:`from_api` (from API-shaped
    lists, handy in tests) or :meth:`from_json` (from the cache).
    """

    def __init__(self, data: dict[str, Any]) -> None:
        #: The normalised snapshot; :meth:`to_json` writes exactly this.
        self.data = data
        self.fetched_at: float = float(data.get("fetched_at") or 0)

    # -- building ------------------------------------------------------------------

    @classmethod
    def from_api(
        cls,
        *,
        pipelines: list[dict[str, Any]],
        users: list[dict[str, Any]],
        fields: dict[str, list[dict[str, Any]]],
        task_types: list[dict[str, Any]],
        account: dict[str, Any] | None = None,
        fetched_at: float | None = None,
    ) -> AccountMetadata:
        """Normalise what the API returned into a snapshot."""
        norm_pipelines = []
        for p in pipelines:
            statuses = p.get("statuses")
            if statuses is None:
                statuses = (p.get("_embedded") or {}).get("statuses") or []
            norm_pipelines.append(
                {
                    "id": p["id"],
                    "name": p.get("name") or "",
                    "sort": p.get("sort"),
                    "is_main": bool(p.get("is_main")),
                    "is_archive": bool(p.get("is_archive")),
                    "statuses": [
                        {
                            "id": s["id"],
                            "name": s.get("name") or "",
                            "sort": s.get("sort"),
                            "type": s.get("type"),
                            "pipeline_id": p["id"],
                        }
                        for s in statuses
                    ],
                }
            )
        norm_users = []
        for u in users:
            rights = u.get("rights") or {}
            active = rights.get("is_active", u.get("is_active", True))
            norm_users.append(
                {
                    "id": u["id"],
                    "name": u.get("name") or "",
                    "email": u.get("email"),
                    "is_active": bool(active),
                    "is_admin": bool(rights.get("is_admin")),
                }
            )
        norm_fields: dict[str, list[dict[str, Any]]] = {}
        for entity in ENTITIES:
            norm_fields[entity] = [
                {
                    "id": f["id"],
                    "code": f.get("code"),
                    "name": f.get("name") or "",
                    "type": f.get("type"),
                    "is_api_only": bool(f.get("is_api_only")),
                    "enums": [
                        {
                            "id": e["id"],
                            "value": e.get("value"),
                            "code": e.get("code"),
                            "sort": e.get("sort"),
                        }
                        for e in (f.get("enums") or [])
                    ]
                    or None,
                }
                for f in fields.get(entity, [])
            ]
        norm_types = [
            {"id": t["id"], "name": t.get("name") or "", "code": t.get("code")}
            for t in task_types
        ]
        account = account or {}
        return cls(
            {
                "format": FORMAT,
                "fetched_at": fetched_at if fetched_at is not None else time.time(),
                "account": {
                    k: account.get(k)
                    for k in (
                        "id",
                        "name",
                        "subdomain",
                        "currency",
                        "current_user_id",
                        "drive_url",
                    )
                },
                "pipelines": norm_pipelines,
                "users": norm_users,
                "fields": norm_fields,
                "task_types": norm_types,
            }
        )

    @classmethod
    def fetch(cls, client: AmoClient) -> AccountMetadata:
        """Read the account through ``client``: about eight requests."""
        account = (
            client.get("/api/v4/account", **{"with": "task_types,drive_url"}) or {}
        )
        client.remember_drive_url(account.get("drive_url"))
        task_types = (account.get("_embedded") or {}).get("task_types") or []
        pipelines = client.get_all("/api/v4/leads/pipelines", "pipelines")
        users = client.get_all("/api/v4/users", "users", limit=250)
        fields = {
            entity: client.get_all(
                f"/api/v4/{entity}/custom_fields", "custom_fields", limit=50
            )
            for entity in ENTITIES
        }
        return cls.from_api(
            pipelines=pipelines,
            users=users,
            fields=fields,
            task_types=task_types,
            account=account,
        )

    def to_json(self) -> str:
        """The snapshot as JSON, for the cache."""
        return json.dumps(self.data, ensure_ascii=False, separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str | bytes) -> AccountMetadata:
        """A snapshot read back from the cache."""
        return cls(json.loads(text))

    # -- lookups -------------------------------------------------------------------

    @property
    def account(self) -> dict[str, Any]:
        """``{id, name, subdomain, currency, current_user_id}`` of the account."""
        return self.data.get("account") or {}

    @property
    def drive_url(self) -> str | None:
        """The host of the account's file service (``https://drive-b.amocrm.ru``)."""
        url = self.account.get("drive_url")
        return str(url) if url else None

    @property
    def pipelines(self) -> list[dict[str, Any]]:
        """Every pipeline, each with its ``statuses``."""
        return self.data.get("pipelines") or []

    @property
    def users(self) -> list[dict[str, Any]]:
        """Every user: ``{id, name, email, is_active, is_admin}``."""
        return self.data.get("users") or []

    @property
    def task_types(self) -> list[dict[str, Any]]:
        """Every task type: ``{id, name, code}``."""
        return self.data.get("task_types") or []

    def fields(self, entity: str) -> list[dict[str, Any]]:
        """The custom fields of ``entity`` (``leads``/``lead``, ``contacts``,
        ``companies``): ``{id, code, name, type, is_api_only, enums}``."""
        return (self.data.get("fields") or {}).get(_entity(entity)) or []

    def main_pipeline(self) -> dict[str, Any] | None:
        """The pipeline marked ``is_main`` (else the first one)."""
        for pipeline in self.pipelines:
            if pipeline.get("is_main"):
                return pipeline
        return self.pipelines[0] if self.pipelines else None

    def pipeline(self, key: Any) -> dict[str, Any] | None:
        """A pipeline by id or name; ``None`` for the main pipeline."""
        if key is None or key == "":
            return self.main_pipeline()
        return _find(self.pipelines, key, ("name",))

    def status(self, pipeline_id: Any, key: Any) -> dict[str, Any] | None:
        """A status of a pipeline (given by id or name; ``None``: the main one), by
        status id or name. 142 and 143 exist in every pipeline."""
        pipeline = self.pipeline(pipeline_id)
        if pipeline is None:
            return None
        return _find(pipeline.get("statuses") or [], key, ("name",))

    def user(self, key: Any) -> dict[str, Any] | None:
        """A user by id, name or e-mail. Check ``is_active`` before assigning."""
        return _find(self.users, key, ("name", "email"))

    def field(self, entity: str, key: Any) -> dict[str, Any] | None:
        """A custom field of ``entity`` by id, code (``PHONE``) or name."""
        return _find(self.fields(entity), key, ("code", "name"))

    def enum_id(self, field: dict[str, Any] | None, label_or_id: Any) -> int | None:
        """The enum id of ``field`` (as :meth:`field` returns it) for an enum id, a
        label (case-insensitive) or an enum code (``WORK``); ``None`` if unknown."""
        if field is None:
            return None
        found = _find(field.get("enums") or [], label_or_id, ("value", "code"))
        return int(found["id"]) if found else None

    def task_type(self, key: Any) -> dict[str, Any] | None:
        """A task type by id, code (``FOLLOW_UP``) or name."""
        return _find(self.task_types, key, ("code", "name"))

    def __repr__(self) -> str:
        return (
            f"<AccountMetadata {self.account.get('subdomain')} "
            f"{len(self.pipelines)} pipelines, {len(self.users)} users>"
        )


def _entity(entity: str) -> str:
    try:
        return _ENTITY_ALIASES[entity.lower()]
    except (KeyError, AttributeError):
        raise ValueError(
            f"unknown entity {entity!r}: use leads, contacts or companies"
        ) from None


# -- the shared cache ------------------------------------------------------------------

#: The shared cache's name for the account's metadata.
_CACHE = "metadata"


def _host(state: AppState) -> str:
    return urlsplit(state.settings.base_url).netloc


def _read_cache(state: AppState) -> AccountMetadata | None:
    text = shared.cache_get(state, _CACHE, account=True)
    if not text:
        return None
    meta = AccountMetadata.from_json(text)
    if (
        meta.data.get("format") != FORMAT
        or time.time() - meta.fetched_at > state.settings.metadata_ttl
    ):
        return None
    return meta


def _held(state: AppState) -> dict[str, tuple[float, AccountMetadata]]:
    """This process's copy of the metadata, on the app's state."""
    return state.local("metadata", dict[str, tuple[float, AccountMetadata]])


def _keep(state: AppState, meta: AccountMetadata) -> AccountMetadata:
    """Keep ``meta`` in this process for :data:`LOCAL_SECONDS` (and tell the
    process's client the drive host it names)."""
    _held(state)["held"] = (time.monotonic(), meta)
    if meta.drive_url:
        client_for(state).remember_drive_url(meta.drive_url)
    return meta


def sync_metadata(state: AppState, client: AmoClient | None = None) -> AccountMetadata:
    """Fetch the metadata from amoCRM now and replace the cached copy
    (``flask amocrm sync``)."""
    meta = AccountMetadata.fetch(client or client_for(state))
    shared.cache_set(
        state, _CACHE, meta.to_json(), state.settings.metadata_ttl, account=True
    )
    log.info("amoCRM metadata of %s synced: %s", _host(state), meta)
    return _keep(state, meta)


def metadata_for(state: AppState, *, refresh: bool = False) -> AccountMetadata:
    """The account's metadata, from this process, the shared cache, or amoCRM.

    Only one process fetches when the cache is empty (a shared lock); the others
    wait for it and read its result.
    """
    if not refresh:
        held = _held(state).get("held")
        if held is not None and time.monotonic() - held[0] < LOCAL_SECONDS:
            return held[1]
        meta = _read_cache(state)
        if meta is not None:
            return _keep(state, meta)
    with shared.lock(state, "metadata-fetch", ttl=60, wait=60, account=True):
        if not refresh:
            meta = _read_cache(state)  # fetched by whoever held the lock before us
            if meta is not None:
                return _keep(state, meta)
        return sync_metadata(state)


def forget_metadata(state: AppState) -> None:
    """Drop this process's copy (the next use reads the shared cache)."""
    state.forget_local("metadata")


def clear_metadata(state: AppState) -> None:
    """Drop the shared copy and this process's (``flask amocrm sync``): the next use
    reads the account again."""
    shared.cache_clear(state, _CACHE, account=True)
    forget_metadata(state)
