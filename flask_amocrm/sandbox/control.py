"""Control endpoints outside ``/api/v4``: ``/_sandbox/...`` for tests and demos.

They are never rate limited, never faulted and never logged. A web page must not
drive them: they answer only a loopback ``Host`` (``localhost``, ``127.0.0.1``,
``[::1]``; another name is what DNS rebinding sends, 403), and a ``POST`` or
``DELETE`` must carry ``Content-Type: application/json``, which a cross-origin form
cannot send without CORS allowing it (415).
"""

from __future__ import annotations

import ipaddress
import json
import threading
from collections import deque
from typing import Any

from flask import Blueprint, Response, current_app, request

from .bulk import delete_entity, seed_bulk
from .records import ENTITIES, apply_item, render, resolve_status
from .views.common import link
from .views.notes import render_note
from .views.tasks import render_task
from .views.unsorted import render_unsorted

bp = Blueprint("sandbox_control", __name__, url_prefix="/_sandbox")

# Enough for long benchmark runs without unbounded memory.
LOG_SIZE = 100_000
# The most contacts (or companies) one seed call adds.
MAX_SEED = 200_000
CONFIG_KEYS = {
    "moved_to",
    "rate_limit",
    "latency_ms",
    "access_token_ttl",
    "block_after",
    "block_seconds",
    "duplicate_control",
    "drop_webhooks",
    "webhook_delay_ms",
    "drive_max_file_size",
    "drive_max_part_size",
}


class RequestLog:
    """Every API request received: method, path, query, status, time, token, body."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._items: deque[dict[str, Any]] = deque(maxlen=LOG_SIZE)

    def add(self, entry: dict[str, Any]) -> None:
        with self._lock:
            self._items.append(entry)

    def clear(self) -> None:
        with self._lock:
            self._items.clear()

    def list(self) -> list[dict[str, Any]]:
        with self._lock:
            return list(self._items)


def _loopback_host(host: str) -> bool:
    name = host.rsplit(":", 1)[0] if not host.endswith("]") else host
    name = name.strip("[]").rstrip(".").lower()
    if name == "localhost" or name.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


@bp.before_request
def _only_local_json() -> Response | None:
    if not _loopback_host(request.host):
        return _json(
            {"error": "the control endpoints answer a loopback Host only"}, 403
        )
    if request.method not in ("GET", "HEAD", "OPTIONS") and (
        request.mimetype != "application/json"
    ):
        return _json({"error": "send Content-Type: application/json"}, 415)
    return None


def _json(body: Any, status: int = 200) -> Response:
    return Response(
        json.dumps(body, ensure_ascii=False), status=status, mimetype="application/json"
    )


def _sandbox() -> Any:
    return current_app.extensions["amocrm_sandbox"]


@bp.post("/reset")
def reset() -> Response:
    """Restore the seed; clear the log, faults, rate-limit state and blocks."""
    _sandbox().reset()
    return _json({"ok": True})


@bp.post("/faults")
def faults() -> Response:
    """Add a fault, e.g. ``{"status": 503, "count": 3}``; ``{"clear": true}`` clears."""
    spec = request.get_json(silent=True)
    if not isinstance(spec, dict):
        return _json({"error": "send a JSON object"}, 400)
    sbx = _sandbox()
    if spec.get("clear"):
        sbx.faults.clear()
        rest = {k: v for k, v in spec.items() if k != "clear"}
        if not rest:
            return _json({"faults": []})
        spec = rest
    try:
        sbx.faults.add(spec)
    except (TypeError, ValueError) as exc:
        return _json({"error": str(exc)}, 400)
    return _json({"faults": sbx.faults.list()})


@bp.post("/seed")
def seed() -> Response:
    """Add made-up contacts and companies: ``{"contacts": 20000, "companies":
    2000, "seed": 1}`` (:mod:`.bulk`); answers what was added."""
    spec = request.get_json(silent=True)
    if not isinstance(spec, dict):
        return _json({"error": "send a JSON object"}, 400)
    counts = {}
    for name in ("contacts", "companies", "seed"):
        value = spec.get(name, 1 if name == "seed" else 0)
        if (
            not isinstance(value, int)
            or isinstance(value, bool)
            or not (0 <= value <= MAX_SEED)
        ):
            return _json(
                {"error": f"{name} must be a whole number from 0 to {MAX_SEED}"}, 400
            )
        counts[name] = value
    added = seed_bulk(
        _sandbox().store,
        counts["contacts"],
        counts["companies"],
        seed=counts["seed"],
    )
    return _json(added)


@bp.post("/delete")
def delete() -> Response:
    """Delete an entity as a person does in amoCRM: ``{"entity": "contacts", "id":
    20000001}``; 404 when there is none."""
    spec = request.get_json(silent=True)
    if (
        not isinstance(spec, dict)
        or spec.get("entity") not in ENTITIES
        or not isinstance(spec.get("id"), int)
    ):
        return _json({"error": "send {entity: leads|contacts|companies, id}"}, 400)
    if not delete_entity(_sandbox().store, spec["entity"], spec["id"]):
        return _json({"error": "no such entity"}, 404)
    return _json({"ok": True})


@bp.get("/faults")
def list_faults() -> Response:
    """The active faults."""
    return _json({"faults": _sandbox().faults.list()})


@bp.get("/requests")
def requests_log() -> Response:
    """Every API request received since the last reset."""
    return _json(_sandbox().log.list())


@bp.delete("/requests")
def clear_requests() -> Response:
    """Forget the logged requests."""
    _sandbox().log.clear()
    return _json({"ok": True})


@bp.route("/config", methods=["GET", "POST"])
def config() -> Response:
    """Read or change run-time settings: rate_limit, latency_ms, access_token_ttl,
    block_after, block_seconds, duplicate_control."""
    sbx = _sandbox()
    if request.method == "POST":
        spec = request.get_json(silent=True)
        if not isinstance(spec, dict):
            return _json({"error": "send a JSON object"}, 400)
        unknown = set(spec) - CONFIG_KEYS
        if unknown:
            return _json({"error": f"unknown settings: {sorted(unknown)}"}, 400)
        sbx.configure(**spec)
    return _json(sbx.config_dict())


@bp.get("/webhooks")
def webhook_deliveries() -> Response:
    """Every webhook the sandbox sent (or dropped) since the last reset."""
    return _json(_sandbox().webhooks.list())


@bp.post("/leads/<int:lead_id>/status")
def move_lead(lead_id: int) -> Response:
    """Move a lead to another stage as a manager does in amoCRM's interface:
    ``{"status_id": 142}`` (optional ``pipeline_id``, and ``user_id``: who moved
    it, by default the first active manager). No API request is made or logged;
    the events log and the webhooks see the move as they see one by the API."""
    spec = request.get_json(silent=True)
    if not isinstance(spec, dict):
        return _json({"error": "send a JSON object"}, 400)
    s = _sandbox().store
    with s.lock:
        lead = s.entities("leads").get(lead_id)
        if lead is None or lead.get("is_deleted"):
            return _json({"error": f"there is no lead {lead_id}"}, 404)
        item: dict[str, Any] = {
            k: spec[k] for k in ("status_id", "pipeline_id") if spec.get(k) is not None
        }
        if not item or not all(
            isinstance(v, int) and not isinstance(v, bool) for v in item.values()
        ):
            return _json({"error": "give status_id (and pipeline_id) as numbers"}, 400)
        if None in resolve_status(s, item, lead):
            return _json({"error": "no such pipeline or status"}, 400)
        managers = [
            u["id"]
            for u in s.data["users"]
            if u["rights"].get("is_active") and not u["rights"].get("is_admin")
        ]
        user = spec.get("user_id") or (managers[0] if managers else None)
        if not any(u["id"] == user for u in s.data["users"]):
            return _json({"error": f"there is no user {user}"}, 400)
        item["updated_by"] = user
        apply_item(s, "leads", item, lead)
        moved = render(s, "leads", lead, set(), link)
    s.save_if_dirty()
    return _json(moved)


@bp.post("/oauth/code")
def oauth_code() -> Response:
    """Issue an authorization code without the consent page (for tests)."""
    sbx = _sandbox()
    if sbx.auth.client_id is None:
        return _json({"error": "OAuth is not configured"}, 400)
    code = sbx.auth.issue_code(sbx.auth.client_id, sbx.auth.redirect_uri)
    return _json(
        {
            "code": code,
            "client_id": sbx.auth.client_id,
            "redirect_uri": sbx.auth.redirect_uri,
        }
    )


@bp.post("/long_lived_token")
def long_lived_token() -> Response:
    """Issue a long-lived token (a JWT with ``exp`` and ``api_domain``), valid for
    ``days`` (default 365), accepted like the one given at start-up."""
    spec = request.get_json(silent=True)
    if not isinstance(spec, dict):
        return _json({"error": "send a JSON object"}, 400)
    days = spec.get("days", 365)
    if not isinstance(days, int) or isinstance(days, bool) or not 1 <= days <= 1830:
        return _json({"error": "days must be a whole number from 1 to 1830"}, 400)
    token, exp = _sandbox().auth.make_long_lived_token(request.host, days)
    return _json({"token": token, "expires_at": exp})


@bp.get("/state")
def state() -> Response:
    """Everything the account holds, including deleted and hidden entities."""
    s = _sandbox().store
    with s.lock:
        full = {"contacts", "leads", "companies", "loss_reason", "source_id"}
        out: dict[str, Any] = {}
        for entity in ENTITIES:
            out[entity] = [
                render(s, entity, obj, full, link)
                for obj in sorted(s.entities(entity).values(), key=lambda o: o["id"])
            ]
        out["notes"] = {
            entity: [
                render_note(entity, n)
                for n in sorted(s.data["notes"][entity].values(), key=lambda n: n["id"])
            ]
            for entity in ENTITIES
        }
        out["tasks"] = [
            render_task(t)
            for t in sorted(s.data["tasks"].values(), key=lambda t: t["id"])
        ]
        out["tags"] = {
            e: sorted(s.data["tags"][e].values(), key=lambda t: t["id"])
            for e in ENTITIES
        }
        out["unsorted"] = []
        for item in s.data["unsorted"].values():
            rendered = render_unsorted(s, item)
            rendered["status"] = item["_state"]
            out["unsorted"].append(rendered)
        out["sources"] = sorted(s.data["sources"].values(), key=lambda o: o["id"])
        out["links"] = s.data["links"]
        out["settings"] = dict(s.data["settings"])
        out["custom_fields"] = s.data["custom_fields"]
        out["pipelines"] = s.data["pipelines"]
        out["users"] = s.data["users"]
        return _json(out)
