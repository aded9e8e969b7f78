"""The contact index: duplicate control without a search per event.

amoCRM's search takes one value per call, so looking a new visitor up by phone and
e-mail costs two GETs. The index keeps, in the events database
(:class:`~flask_amocrm.models.EntityKey`), every contact's and company's names,
phones and e-mails, normalised as duplicate control compares them
(:func:`flask_amocrm.dedup.entity_keys`), with the entity's id. A lookup then reads
its candidates locally.

- **Filled** once by paging through the contacts and companies, 250 a call, a few
  pages per tick (:data:`FILL_PAGES`), so the fill never takes the rate limit from
  delivery for long. When the last page is read the index is *complete as of T*
  (a shared flag, :func:`complete_since`).
- **Kept fresh** by a poll every ``AMOCRM_INDEX_INTERVAL`` seconds from the tick:
  what changed since the last poll's high-water mark (less :data:`OVERLAP`
  seconds), by ``filter[updated_at][from]``; by every contact and company a worker
  creates or updates (:meth:`ContactIndex.remember`, right after amoCRM's answer,
  before the per-person locks are released); and by what a lookup reads anyway.
  The webhooks from amoCRM can feed it too: :func:`entity_changed`,
  :func:`entity_deleted`.
- **Verified**: a candidate is never reused as the index has it. The candidates of
  a whole batch are read in one ``GET /contacts?filter[id][]=...`` (250 ids a
  call; companies likewise) and judged again with the rule on what amoCRM holds
  now: a deleted or merged contact is not returned, so never reused, and a contact
  changed a moment ago is judged on its current values.
- **Falls back** to today's search when the index cannot answer: while it is not
  complete (a miss may be a contact not read yet), when a rule compares a field the
  index does not keep, or when a candidate turned out stale (the index was behind
  for it, so it may be behind for others too).

``AMOCRM_INDEX_INTERVAL = 0`` turns the index off: every lookup searches.

Where the webhooks plug in: the webhook endpoint (:mod:`flask_amocrm.webhook`),
once it has stored a body's changes, gives the parsed body to
:func:`webhook_entities`, which keeps every ``contacts``/``companies`` item of it
(:func:`entity_changed`, :func:`entity_deleted` for one entity at a time). They do
nothing while the index is off.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from sqlalchemy import and_, delete, insert, or_, select

from .. import shared
from ..amo.client import AmoClient
from ..amo.clients import client_for
from ..dedup import entity_keys, pick
from ..errors import AmoCRMError
from ..models import EntityKey
from ..state import AppState
from ..vocabulary import ENTITY

if TYPE_CHECKING:
    from ..rules.plan import EntityPlan
    from .delivery import Delivery

log = logging.getLogger("flask_amocrm.worker")

#: The entities the index keeps.
ENTITIES = ("contacts", "companies")
#: Pages (of 250) the fill reads per tick: four calls every thirty seconds are
#: 2 % of the account's seven requests a second; delivery keeps the rest.
FILL_PAGES = 4
#: Pages a poll reads per entity at most; a longer backlog goes on next tick.
POLL_PAGES = 20
#: Seconds a poll reaches back before the last high-water mark: amoCRM's clock and
#: ours differ, and an entity saved in the same second may come later.
OVERLAP = 60
#: Ids read per verification call (amoCRM's largest page).
VERIFY_IDS = 250
#: At most this many candidates of one entity are verified (the earliest ids),
#: as a search reads at most one page.
CANDIDATE_LIMIT = 250
#: Longest key stored; longer ones are cut the same way when looked up.
KEY_LENGTH = 255

_COMPLETE = "index:complete"
_FILL = "index:fill"
_SINCE = "index:since:"
#: The row that says, in the database itself, which fill completed the index.
_MARK = ("index", "complete")


def enabled(state: AppState) -> bool:
    """Whether this app keeps the contact index (``AMOCRM_INDEX_INTERVAL`` > 0)."""
    return state.settings.index_interval > 0


def _account(state: AppState) -> str:
    return shared.key(state, "index", account=True)


def complete_since(state: AppState) -> int | None:
    """The moment (Unix seconds) the fill began that read the whole account, or
    ``None`` while the index is not complete (a miss then says nothing).

    The flag lives in Redis when there is one, the index in the database: a
    database that is not the one the fill wrote (restored, replaced) has no mark
    row, and the flag is then dropped and the fill starts again, instead of taking
    an empty index for a complete one."""
    value = shared.get(state, _COMPLETE, account=True)
    if not value or not value.isdigit():
        return None
    with state.session() as session:
        marked = session.scalar(
            select(EntityKey.key).where(
                EntityKey.account == _account(state),
                EntityKey.entity == _MARK[0],
                EntityKey.kind == _MARK[1],
            )
        )
    if marked != value:
        log.warning("The contact index is not in this database: filling it again")
        shared.clear(state, _COMPLETE, account=True)
        shared.clear(state, _FILL, account=True)
        return None
    return int(value)


def _mark_complete(state: AppState, started: int) -> None:
    account = _account(state)
    with state.session() as session:
        session.execute(
            delete(EntityKey).where(
                EntityKey.account == account, EntityKey.entity == _MARK[0]
            )
        )
        session.execute(
            insert(EntityKey),
            [
                {
                    "account": account,
                    "entity": _MARK[0],
                    "entity_id": 0,
                    "kind": _MARK[1],
                    "key": str(started),
                    "updated_at": started,
                }
            ],
        )
        session.commit()
    shared.put(state, _COMPLETE, str(started), account=True)


# -- writing ---------------------------------------------------------------------------


def _rows(
    state: AppState, entity: str, items: Iterable[dict[str, Any]]
) -> list[dict[str, Any]]:
    account = _account(state)
    region = state.settings.phone_region
    rows = []
    for item in items:
        if item.get("id") is None or item.get("is_deleted"):
            continue
        for kind, key in sorted(entity_keys(item, region)):
            rows.append(
                {
                    "account": account,
                    "entity": entity,
                    "entity_id": int(item["id"]),
                    "kind": kind,
                    "key": key[:KEY_LENGTH],
                    "updated_at": int(item.get("updated_at") or 0),
                }
            )
    return rows


def store(state: AppState, entity: str, items: Sequence[dict[str, Any]]) -> None:
    """Put these entities, as amoCRM returned them, in the index: their keys
    replace the ones kept for them (a deleted one keeps none)."""
    ids = [int(item["id"]) for item in items if item.get("id") is not None]
    if not ids:
        return
    account = _account(state)
    rows = _rows(state, entity, items)
    with state.session() as session:
        session.execute(
            delete(EntityKey).where(
                EntityKey.account == account,
                EntityKey.entity == entity,
                EntityKey.entity_id.in_(ids),
            )
        )
        if rows:
            session.execute(insert(EntityKey), rows)
        session.commit()


def forget(state: AppState, entity: str, ids: Sequence[int]) -> None:
    """Drop these entities from the index (deleted or merged in amoCRM)."""
    if not ids:
        return
    with state.session() as session:
        session.execute(
            delete(EntityKey).where(
                EntityKey.account == _account(state),
                EntityKey.entity == entity,
                EntityKey.entity_id.in_(list(ids)),
            )
        )
        session.commit()


def add_keys(
    state: AppState, entity: str, keys: dict[int, set[tuple[str, str]]]
) -> None:
    """Add keys to entities, keeping the ones they have: what a worker wrote
    (an update may send part of an entity, so nothing is taken away)."""
    keys = {i: {(k, v[:KEY_LENGTH]) for k, v in pairs} for i, pairs in keys.items()}
    keys = {i: pairs for i, pairs in keys.items() if pairs}
    if not keys:
        return
    account = _account(state)
    now = int(time.time())
    with state.session() as session:
        have = set(
            session.execute(
                select(EntityKey.entity_id, EntityKey.kind, EntityKey.key).where(
                    EntityKey.account == account,
                    EntityKey.entity == entity,
                    EntityKey.entity_id.in_(list(keys)),
                )
            ).all()
        )
        rows = [
            {
                "account": account,
                "entity": entity,
                "entity_id": entity_id,
                "kind": kind,
                "key": key,
                "updated_at": now,
            }
            for entity_id, pairs in sorted(keys.items())
            for kind, key in sorted(pairs)
            if (entity_id, kind, key) not in have
        ]
        if rows:
            session.execute(insert(EntityKey), rows)
        session.commit()


def entity_changed(state: AppState, entity: str, item: dict[str, Any]) -> None:
    """A contact or company was added or changed in amoCRM: the index keeps its
    keys now. For the webhooks from amoCRM (``contact_added``, ``contact_updated``
    and the companies' ones): ``item`` is shaped as API v4 returns it, or as the
    webhook's ``contacts[update][N]`` item (its ``custom_fields`` in the old shape,
    lists given as lists or as dicts keyed by position)."""
    if enabled(state) and entity in ENTITIES:
        store(state, entity, [webhook_item(item)])


def webhook_entities(state: AppState, tree: Mapping[str, Any]) -> int:
    """Keep the contacts and companies of one parsed webhook body (``contacts[add]``,
    ``[update]``, ``[restore]``, ``[responsible]``; ``[delete]`` forgets them;
    ``companies[...]`` likewise, and a ``contacts`` item of ``type`` ``company``
    is a company); how many items it read."""
    if not enabled(state):
        return 0
    count = 0
    for name in ENTITIES:
        block = tree.get(name)
        if not isinstance(block, dict):
            continue
        for action, items in block.items():
            for item in _seq(items):
                if not isinstance(item, dict) or not str(item.get("id", "")).isdigit():
                    continue
                entity = "companies" if item.get("type") == "company" else name
                if action == "delete":
                    forget(state, entity, [int(item["id"])])
                elif action in ("add", "update", "restore", "responsible"):
                    store(state, entity, [webhook_item(item)])
                else:
                    continue
                count += 1
    return count


def _seq(value: Any) -> list[Any]:
    if isinstance(value, dict):
        return list(value.values())
    return list(value) if isinstance(value, list | tuple) else []


def webhook_item(item: dict[str, Any]) -> dict[str, Any]:
    """A webhook's contact or company item in the API v4 shape the index reads:
    ``custom_fields[K][code|values][J][value]`` become ``custom_fields_values``,
    ``last_modified`` becomes ``updated_at``. An item in the v4 shape is returned
    as it is."""
    if "custom_fields_values" in item or "custom_fields" not in item:
        return item
    fields = []
    for raw in _seq(item.get("custom_fields")):
        if not isinstance(raw, dict):
            continue
        values = [
            {"value": v.get("value")} if isinstance(v, dict) else {"value": v}
            for v in _seq(raw.get("values"))
        ]
        fields.append({"field_code": raw.get("code"), "values": values})
    out = {k: v for k, v in item.items() if k != "custom_fields"}
    out["custom_fields_values"] = fields
    out.setdefault("updated_at", item.get("last_modified") or 0)
    return out


def entity_deleted(state: AppState, entity: str, entity_id: int) -> None:
    """A contact or company was deleted (or merged away) in amoCRM."""
    if enabled(state) and entity in ENTITIES:
        forget(state, entity, [entity_id])


def clear(state: AppState) -> None:
    """Forget the whole index of this account and start the fill again."""
    with state.session() as session:
        session.execute(delete(EntityKey).where(EntityKey.account == _account(state)))
        session.commit()
    for name in (_COMPLETE, _FILL, *(_SINCE + e for e in ENTITIES)):
        shared.clear(state, name, account=True)


# -- the fill and the poll -------------------------------------------------------------


def fill_step(state: AppState, client: AmoClient, pages: int = FILL_PAGES) -> int:
    """Read up to ``pages`` more pages of the fill; how many were read. When the
    last page is read the index is complete as of the fill's start, and the poll
    goes on from there. Two processes never fill at once."""
    held = shared.acquire(state, "index-fill", ttl=300, wait=0.01, account=True)
    if held is None:
        return 0
    read = 0
    try:
        if complete_since(state) is not None:
            return 0
        cursor = (shared.get(state, _FILL, account=True) or "").split(":")
        if len(cursor) == 3 and cursor[0].isdigit() and cursor[2].isdigit():
            started, entity, page = int(cursor[0]), cursor[1], int(cursor[2])
        else:
            started, entity, page = int(time.time()), ENTITIES[0], 1
        while read < pages:
            items, more = client.list_page(entity, page, order="id")
            read += 1
            store(state, entity, items)
            if more:
                page += 1
            elif entity != ENTITIES[-1]:
                entity, page = ENTITIES[ENTITIES.index(entity) + 1], 1
            else:
                for name in ENTITIES:
                    shared.put(state, _SINCE + name, str(started), account=True)
                _mark_complete(state, started)
                shared.clear(state, _FILL, account=True)
                log.info("The contact index is complete (%d pages read)", read)
                return read
        shared.put(state, _FILL, f"{started}:{entity}:{page}", account=True)
        return read
    finally:
        shared.release(state, held)


def poll(state: AppState, client: AmoClient, pages: int = POLL_PAGES) -> int:
    """Read what changed in amoCRM since the last poll (less :data:`OVERLAP`);
    how many pages were read."""
    read = 0
    for entity in ENTITIES:
        raw = shared.get(state, _SINCE + entity, account=True)
        if not raw or not raw.isdigit():
            continue
        mark = int(raw)
        for page in range(1, pages + 1):
            items, more = client.list_page(
                entity, page, order="updated_at", since=mark - OVERLAP
            )
            read += 1
            store(state, entity, items)
            mark = max([mark, *(int(i.get("updated_at") or 0) for i in items)])
            if not more:
                break
        shared.put(state, _SINCE + entity, str(mark), account=True)
    return read


def refresh(state: AppState, client: AmoClient | None = None) -> dict[str, int]:
    """The index's share of a tick: a few pages of the fill while it is not
    complete, else the poll once every ``AMOCRM_INDEX_INTERVAL`` seconds. A site
    switched off (``AMOCRM_ENABLED = False``) reads nothing."""
    if not enabled(state) or not state.settings.enabled:
        return {}
    try:
        client = client or client_for(state)
        if complete_since(state) is None:
            return {"index_fill_pages": fill_step(state, client)}
        if shared.set_once(
            state, "index-poll", seconds=state.settings.index_interval, account=True
        ):
            return {"index_poll_pages": poll(state, client)}
    except AmoCRMError as exc:  # the next tick goes on where this one stopped
        log.warning("The contact index could not be refreshed: %s", exc)
    except Exception:  # a database hiccup: the rest of the tick still runs
        log.exception("The contact index could not be refreshed")
    return {}


# -- lookups ---------------------------------------------------------------------------


@dataclass
class Wanted:
    """One entity of one delivery whose duplicates are looked for."""

    request_id: str
    entity: EntityPlan
    #: The contact's leads are needed too (``with=leads``).
    with_leads: bool = False


class ContactIndex:
    """The index as the lookup step uses it (:func:`contact_index`)."""

    def __init__(self, state: AppState) -> None:
        self.state = state

    def find(
        self, client: AmoClient, wanted: list[Wanted]
    ) -> dict[tuple[str, str], list[dict[str, Any]]]:
        """The duplicates of each wanted entity the index can answer for, earliest
        first, keyed by ``(request_id, key)``; the ones left out are searched."""
        complete = complete_since(self.state) is not None
        answers: dict[tuple[str, str], list[dict[str, Any]]] = {}
        for entity in ENTITIES:
            mine = [w for w in wanted if w.entity.entity == entity]
            if not mine:
                continue
            candidates = self._candidates(entity, mine)
            ids = sorted(
                {i for groups in candidates.values() for g in groups for i in g}
            )
            fresh: dict[int, dict[str, Any]] = {}
            if ids:
                with_leads = any(w.with_leads for w in mine)
                items = client.read(
                    entity,
                    ids,
                    with_="leads" if with_leads else None,
                    per_call=VERIFY_IDS,
                )
                fresh = {int(item["id"]): item for item in items}
                store(self.state, entity, items)
                forget(self.state, entity, [i for i in ids if i not in fresh])
            for w in mine:
                groups = candidates.get(w.request_id)
                if groups is None:
                    continue  # a criterion the index does not keep: search
                dups = self._judge(w, groups, fresh, complete)
                if dups is not None:
                    answers[(w.request_id, w.entity.key)] = dups
        return answers

    @staticmethod
    def _judge(
        w: Wanted,
        groups: list[list[int]],
        fresh: dict[int, dict[str, Any]],
        complete: bool,
    ) -> list[dict[str, Any]] | None:
        """The duplicates among the candidates as amoCRM holds them now, group by
        group in the order the searches would go (the first group with a duplicate
        answers, as the first search with one does); ``None``: search instead."""
        rule = w.entity.duplicates
        assert rule is not None
        stale = False
        for group in groups:
            now = [fresh[i] for i in group if i in fresh]
            dups = pick(rule, now)
            if dups:
                return dups
            stale = stale or len(now) < len(group) or bool(now)
        return [] if complete and not stale else None

    def saw(self, entity: str, items: Sequence[dict[str, Any]]) -> None:
        """Keep what a search found (read from amoCRM just now)."""
        if entity in ENTITIES:
            store(self.state, entity, items)

    def _candidates(
        self, entity: str, wanted: list[Wanted]
    ) -> dict[str, list[list[int]]]:
        """The ids the index holds under each wanted entity's keys, earliest first,
        in groups as the searches go (:meth:`~flask_amocrm.dedup.DuplicateRule.
        searches`): with ``any`` one group per value, with ``all`` one group of
        those holding a value of every criterion. Entities whose rule the index
        cannot answer are left out."""
        per_rule: dict[str, list[list[tuple[str, str]]]] = {}
        for w in wanted:
            rule = w.entity.duplicates
            keys = rule.index_keys() if rule is not None else None
            if keys:
                per_rule[w.request_id] = [
                    [(kind, key[:KEY_LENGTH]) for kind, key in group] for group in keys
                ]
        pairs = {p for groups in per_rule.values() for g in groups for p in g}
        holders: dict[tuple[str, str], set[int]] = {}
        if pairs:
            by_kind: dict[str, set[str]] = {}
            for kind, key in pairs:
                by_kind.setdefault(kind, set()).add(key)
            with self.state.session() as session:
                rows = session.execute(
                    select(EntityKey.entity_id, EntityKey.kind, EntityKey.key).where(
                        EntityKey.account == _account(self.state),
                        EntityKey.entity == entity,
                        or_(
                            *(
                                and_(EntityKey.kind == kind, EntityKey.key.in_(keys))
                                for kind, keys in sorted(by_kind.items())
                            )
                        ),
                    )
                ).all()
                for entity_id, kind, key in rows:
                    holders.setdefault((kind, key), set()).add(int(entity_id))
        out: dict[str, list[list[int]]] = {}
        for w in wanted:
            groups = per_rule.get(w.request_id)
            rule = w.entity.duplicates
            if groups is None or rule is None:
                continue
            if rule.require == "all":
                sets = [
                    set().union(*(holders.get(p, set()) for p in g)) for g in groups
                ]
                found = [set.intersection(*sets)]
            else:
                found = [holders.get(p, set()) for g in groups for p in g]
            out[w.request_id] = [sorted(f)[:CANDIDATE_LIMIT] for f in found]
        return out

    def remember(self, deliveries: Sequence[Delivery]) -> None:
        """Put in the index what these deliveries created or updated: called right
        after amoCRM answered, while the per-person locks are still held, so the
        next worker deciding about the same person finds it."""
        region = self.state.settings.phone_region
        for key in ("contact", "company"):
            keys: dict[int, set[tuple[str, str]]] = {}
            for d in deliveries:
                plan = d.plan.entity(key)
                entity_id = d.ids()[key]
                if plan is None or not entity_id or d.error is not None:
                    continue
                progress = d.progress
                reused = progress.found.get(key)
                rule = plan.duplicates
                if plan.id is not None or reused is not None:
                    if not progress.is_done("update"):
                        continue
                    if reused is not None and (
                        rule is None or rule.strategy != "update"
                    ):
                        continue  # used as it is: nothing was written
                    payload = plan.update_payload(entity_id, d.current.get(key))
                    pairs = entity_keys(payload, region)
                elif progress.is_done("create"):
                    pairs = entity_keys(plan.create_payload(), region)
                    if rule is not None:
                        pairs |= {
                            (kind, value)
                            for group in (rule.index_keys() or [])
                            for kind, value in group
                        }
                else:
                    continue
                keys.setdefault(int(entity_id), set()).update(pairs)
            add_keys(self.state, ENTITY[key], keys)


def contact_index(state: AppState) -> ContactIndex | None:
    """The contact index of an app, or ``None`` when it is off."""
    return ContactIndex(state) if enabled(state) else None
