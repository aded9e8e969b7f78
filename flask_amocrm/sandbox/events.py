"""The return path: the events log (``/api/v4/events``) and account webhooks.

Shapes from the two-way reference (§1 webhooks, §2 events). Views call
:func:`entity_saved`, :func:`note_added` and :func:`task_saved` under the store's
lock; each appends events to the log and queues one form-encoded webhook POST per
(subscribed destination, entity, action). A daemon thread sends the queue, so an
API request never waits for a receiver.

What is imitated: lead/contact/company added, updated, stage changed (leads),
responsible changed; notes added; tasks added, updated, completed. The v4 API has
no way to delete or restore these entities, so ``delete_*``/``restore_*`` hooks are
accepted as subscriptions but never fire. One attempt per hook, 2 s timeout, no
retries and no auto-disable (the reference's retry ladder spans hours).
"""

from __future__ import annotations

import queue
import threading
import time
import urllib.error
import urllib.request
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlencode

from .store import Store

SINGULAR = {"leads": "lead", "contacts": "contact", "companies": "company"}
# Companies arrive under the ``contacts`` key, with type=company (reference §1.2).
HOOK_KEY = {"leads": "leads", "contacts": "contacts", "companies": "contacts"}
WEBHOOK_CODES = frozenset(
    [
        f"{action}_{entity}"
        for entity in ("lead", "contact", "company", "customer")
        for action in ("add", "update", "delete", "responsible", "note")
    ]
    + [f"restore_{e}" for e in ("lead", "contact", "company")]
    + ["status_lead", "add_task", "update_task", "delete_task", "responsible_task"]
    + ["add_talk", "update_talk", "add_chat_template_review"]
    + ["add_message", "add_outgoing_message"]
    + ["add_unsorted", "update_unsorted", "delete_unsorted"]
)
MAX_WEBHOOKS = 100
# v4 note types → the events log's type and the webhook's numeric note_type.
NOTE_EVENTS = {
    "common": "common_note_added",
    "attachment": "attachment_note_added",
    "service_message": "service_note_added",
    "geolocation": "geo_note_added",
}
NOTE_TYPE_NUMBERS = {"common": 4, "call_in": 10, "call_out": 11}
ELEMENT_TYPES = {"contacts": 1, "leads": 2, "companies": 3}
DATE_FIELD_TYPES = {"date", "date_time", "birthday"}
_CROCKFORD = "0123456789abcdefghjkmnpqrstvwxyz"
TIMEOUT = 2.0
USER_AGENT = "amoCRM-WebHook-client/1.0"


def _b32(number: int, width: int) -> str:
    out = []
    for _ in range(width):
        out.append(_CROCKFORD[number & 31])
        number >>= 5
    return "".join(reversed(out))


def _event_id(store: Store) -> str:
    """ULID-like: 26 lowercase base-32 characters, rising with time."""
    counters = store.data["counters"]
    seq = int(counters.get("events", 0)) + 1
    counters["events"] = seq
    return _b32(int(time.time() * 1000), 10) + _b32(seq, 16)


def log(store: Store) -> list[dict[str, Any]]:
    """The events log, oldest first."""
    return store.data.setdefault("events", [])


def webhooks(store: Store) -> list[dict[str, Any]]:
    """The account's webhooks, in ``sort`` order."""
    return store.data.setdefault("webhooks", [])


def _event(
    store: Store,
    type_: str,
    entity_type: str,
    entity_id: int,
    created_by: Any,
    after: list[dict[str, Any]] | None = None,
    before: list[dict[str, Any]] | None = None,
) -> None:
    log(store).append(
        {
            "id": _event_id(store),
            "type": type_,
            "entity_id": entity_id,
            "entity_type": entity_type,
            "created_by": created_by if isinstance(created_by, int) else 0,
            "created_at": int(time.time()),
            "value_after": after or [],
            "value_before": before or [],
            "account_id": store.account_id,
        }
    )


# -- webhook bodies --------------------------------------------------------------


def _s(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "1" if value else "0"
    return str(value)


def _custom_fields(store: Store, entity: str, obj: dict[str, Any]) -> dict[str, Any]:
    """The legacy v2 ``custom_fields`` shape webhooks still use (reference §1.2)."""
    out: dict[str, Any] = {}
    types = {f["id"]: f.get("type") for f in store.fields(entity)}
    for k, cf in enumerate(obj.get("custom_fields_values") or []):
        item: dict[str, Any] = {"id": cf.get("field_id"), "name": cf.get("field_name")}
        if cf.get("field_code"):
            item["code"] = cf["field_code"]
        values: dict[str, Any] = {}
        for j, v in enumerate(cf.get("values") or []):
            if types.get(cf.get("field_id")) in DATE_FIELD_TYPES:
                values[str(j)] = v.get("value")  # dates: a scalar, no [value] key
                continue
            one: dict[str, Any] = {"value": v.get("value")}
            if v.get("enum_id") is not None:
                one["enum"] = v["enum_id"]
            values[str(j)] = one
        item["values"] = values
        out[str(k)] = item
    return out


def _entity_item(
    store: Store, entity: str, obj: dict[str, Any], extra: dict[str, Any]
) -> dict[str, Any]:
    item: dict[str, Any] = {"id": obj["id"], "name": obj.get("name", "")}
    if entity == "leads":
        item.update(
            {
                "status_id": obj.get("status_id"),
                "pipeline_id": obj.get("pipeline_id"),
                "price": obj.get("price") or "",
            }
        )
    else:
        item["group_id"] = obj.get("group_id", 0)
    item.update(
        {
            "responsible_user_id": obj.get("responsible_user_id"),
            "last_modified": obj.get("updated_at"),
            "modified_user_id": obj.get("updated_by"),
            "created_user_id": obj.get("created_by"),
            "date_create": obj.get("created_at"),
            "created_at": obj.get("created_at"),
            "updated_at": obj.get("updated_at"),
            "account_id": store.account_id,
        }
    )
    if entity != "leads":
        item["type"] = SINGULAR[entity]
    item.update(extra)
    tags = store.data["tags"][entity]
    if obj.get("_tags"):
        item["tags"] = {
            str(k): {"id": t, "name": tags.get(t, {}).get("name", "")}
            for k, t in enumerate(obj["_tags"])
        }
    if obj.get("custom_fields_values"):
        item["custom_fields"] = _custom_fields(store, entity, obj)
    return item


def _flatten(prefix: str, value: Any, out: list[tuple[str, str]]) -> None:
    if isinstance(value, dict):
        for key, inner in value.items():
            _flatten(f"{prefix}[{key}]", inner, out)
    else:
        out.append((prefix, _s(value)))


def form_body(store: Store, key: str, action: str, item: dict[str, Any]) -> str:
    """``leads[status][0][id]=…&account[subdomain]=…``, every value a string."""
    pairs: list[tuple[str, str]] = []
    _flatten(f"{key}[{action}][0]", item, pairs)
    account = store.data["account"]
    pairs += [
        ("account[subdomain]", _s(account.get("subdomain"))),
        ("account[id]", _s(account.get("id"))),
        ("account[_links][self]", f"https://{account.get('subdomain')}.amocrm.ru"),
    ]
    return urlencode(pairs)


def _hook(store: Store, code: str, key: str, action: str, item: dict[str, Any]) -> None:
    sink = getattr(store, "webhook_sink", None)
    if sink is None:
        return
    body = None
    for hook in webhooks(store):
        if hook["disabled"] or code not in hook["settings"]:
            continue
        if body is None:
            body = form_body(store, key, action, item)
        sink(hook["destination"], code, body)


# -- what the views call ---------------------------------------------------------


def snapshot(obj: dict[str, Any] | None) -> dict[str, Any] | None:
    """What :func:`entity_saved` compares: taken before an update."""
    if obj is None:
        return None
    return {
        "status_id": obj.get("status_id"),
        "pipeline_id": obj.get("pipeline_id"),
        "responsible_user_id": obj.get("responsible_user_id"),
    }


def entity_saved(
    store: Store, entity: str, obj: dict[str, Any], before: dict[str, Any] | None
) -> None:
    """A lead, contact or company was created (``before`` None) or updated."""
    one = SINGULAR[entity]
    key = HOOK_KEY[entity]
    if before is None:
        _event(store, f"{one}_added", one, obj["id"], obj.get("created_by"))
        _hook(store, f"add_{one}", key, "add", _entity_item(store, entity, obj, {}))
        return
    actor = obj.get("updated_by")
    extra: dict[str, Any] = {}
    status_moved = entity == "leads" and (
        before["status_id"],
        before["pipeline_id"],
    ) != (obj.get("status_id"), obj.get("pipeline_id"))
    if status_moved:
        extra["old_status_id"] = before["status_id"]
        _event(
            store,
            "lead_status_changed",
            one,
            obj["id"],
            actor,
            [
                {
                    "lead_status": {
                        "id": obj.get("status_id"),
                        "pipeline_id": obj.get("pipeline_id"),
                    }
                }
            ],
            [
                {
                    "lead_status": {
                        "id": before["status_id"],
                        "pipeline_id": before["pipeline_id"],
                    }
                }
            ],
        )
    responsible_moved = before["responsible_user_id"] != obj.get("responsible_user_id")
    if responsible_moved:
        _event(
            store,
            "entity_responsible_changed",
            one,
            obj["id"],
            actor,
            [{"responsible_user": {"id": obj.get("responsible_user_id")}}],
            [{"responsible_user": {"id": before["responsible_user_id"]}}],
        )
    _hook(
        store, f"update_{one}", key, "update", _entity_item(store, entity, obj, extra)
    )
    if status_moved:
        _hook(
            store, "status_lead", key, "status", _entity_item(store, entity, obj, extra)
        )
    if responsible_moved:
        item = _entity_item(
            store,
            entity,
            obj,
            {"old_responsible_user_id": before["responsible_user_id"]},
        )
        _hook(store, f"responsible_{one}", key, "responsible", item)


def _stamp(ts: Any) -> str:
    try:
        return datetime.fromtimestamp(int(ts), UTC).strftime("%Y-%m-%d %H:%M:%S")
    except (TypeError, ValueError):
        return ""


def note_added(store: Store, entity: str, note: dict[str, Any]) -> None:
    """A note was added to a lead, contact or company."""
    one = SINGULAR.get(entity)
    if one is None:
        return
    event_type = NOTE_EVENTS.get(note.get("note_type", ""))
    if event_type:
        _event(
            store,
            event_type,
            one,
            note["entity_id"],
            note.get("created_by"),
            [{"note": {"id": note["id"]}}],
        )
    params = note.get("params") or {}
    item: dict[str, Any] = {
        "id": note["id"],
        "element_id": note["entity_id"],
        "element_type": ELEMENT_TYPES[entity],
        "note_type": NOTE_TYPE_NUMBERS.get(note.get("note_type", ""), ""),
        "text": params.get("text", ""),
        "account_id": store.account_id,
        "created_by": note.get("created_by"),
        "modified_by": note.get("updated_by"),
        "main_user_id": note.get("responsible_user_id"),
        "group_id": note.get("group_id", 0),
        "created_at": note.get("created_at"),
        "updated_at": note.get("updated_at"),
        "date_create": _stamp(note.get("created_at")),
        "timestamp_x": _stamp(note.get("updated_at")),
    }
    _hook(store, f"note_{one}", HOOK_KEY[entity], "note", {"note": item})


def task_saved(
    store: Store, task: dict[str, Any], created: bool, was_completed: bool
) -> None:
    """A task was created or updated (completing it is an update)."""
    entity_type = task.get("entity_type")
    completed_now = bool(task.get("is_completed")) and not was_completed
    if created:
        _event(store, "task_added", "task", task["id"], task.get("created_by"))
    if completed_now:
        _event(store, "task_completed", "task", task["id"], task.get("updated_by"))
    item: dict[str, Any] = {
        "id": task["id"],
        "element_id": task.get("entity_id") or "",
        "element_type": ELEMENT_TYPES.get(entity_type or "", ""),
        "task_type": task.get("task_type_id"),
        "text": task.get("text", ""),
        "status": 1 if task.get("is_completed") else 0,
        "complete_till": task.get("complete_till"),
        "responsible_user_id": task.get("responsible_user_id"),
        "date_create": task.get("created_at"),
        "account_id": store.account_id,
    }
    if completed_now:
        item["action_close"] = 1
        result = task.get("result") or {}
        if isinstance(result, dict) and result.get("text"):
            item["result"] = {"text": result["text"]}
    if created:
        _hook(store, "add_task", "task", "add", item)
    else:
        _hook(store, "update_task", "task", "update", item)


# -- the sender -------------------------------------------------------------------


class WebhookSender:
    """Sends queued webhooks from a daemon thread; records every attempt.

    ``drop`` (a count, or -1 for all) makes the next deliveries vanish: nothing is
    sent, the attempt is recorded with ``"dropped": true``, as a hook amoCRM lost.
    ``delay_ms`` holds each webhook back that long before it is sent (a slow
    amoCRM: the change is in the events log before its webhook arrives).
    """

    def __init__(self) -> None:
        self._queue: queue.Queue[tuple[int, str, str, str]] = queue.Queue()
        self._generation = 0  # a reset forgets what was queued or in flight before
        self._lock = threading.Lock()
        self.deliveries: list[dict[str, Any]] = []
        self.drop = 0
        self.delay_ms = 0.0
        self._thread: threading.Thread | None = None

    def __call__(self, destination: str, code: str, body: str) -> None:
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(
                    target=self._run, name="sandbox-webhooks", daemon=True
                )
                self._thread.start()
        with self._lock:
            generation = self._generation
        self._queue.put((generation, destination, code, body))

    def clear(self) -> None:
        with self._lock:
            self._generation += 1
            self.deliveries = []
            self.drop = 0
            self.delay_ms = 0.0

    def list(self) -> list[dict[str, Any]]:
        with self._lock:
            return list(self.deliveries)

    def _current(self, generation: int) -> bool:
        with self._lock:
            return generation == self._generation

    def _take_drop(self) -> bool:
        with self._lock:
            if self.drop == 0:
                return False
            if self.drop > 0:
                self.drop -= 1
            return True

    def _run(self) -> None:
        while True:
            generation, destination, code, body = self._queue.get()
            if not self._current(generation):
                continue
            entry: dict[str, Any] = {
                "destination": destination,
                "event": code,
                "body": body,
                "time": time.time(),
                "status": None,
                "dropped": False,
            }
            if self._take_drop():
                entry["dropped"] = True
            else:
                delay = self.delay_ms / 1000
                if delay > 0:
                    time.sleep(delay)
                if not self._current(generation):
                    continue
                entry["status"] = self._post(destination, body)
            with self._lock:
                if generation == self._generation:
                    self.deliveries.append(entry)

    @staticmethod
    def _post(destination: str, body: str) -> int:
        request = urllib.request.Request(
            destination,
            data=body.encode("utf-8"),
            method="POST",
            headers={
                "Content-Type": "application/x-www-form-urlencoded",
                "User-Agent": USER_AGENT,
            },
        )
        try:
            with urllib.request.urlopen(request, timeout=TIMEOUT) as response:  # noqa: S310
                # Read the answer before closing, as an HTTP client does: a socket
                # closed with unread data is reset, and a server may then never
                # finish the request (werkzeug's skips its close callbacks).
                response.read(65536)
                return int(response.status)
        except urllib.error.HTTPError as exc:
            return int(exc.code)
        except (OSError, ValueError):
            return 0  # no answer within 2 s, or no connection
