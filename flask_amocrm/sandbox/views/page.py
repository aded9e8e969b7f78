"""The page at ``/``: the account's leads with their contacts, companies, notes,
tasks and tags, for a person to look at."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, render_template

from ..records import linked_ids
from .common import sandbox

bp = Blueprint("sandbox_page", __name__)


def _name_of(s: Any, entity: str, entity_id: int) -> dict[str, Any] | None:
    return s.entities(entity).get(entity_id)


@bp.get("/")
def index() -> str:
    """Leads, newest first, with what is linked to them."""
    sbx = sandbox()
    s = sbx.store
    with s.lock:
        statuses = {
            st["id"] if st["id"] not in (142, 143) else (p["id"], st["id"]): st["name"]
            for p in s.data["pipelines"]
            for st in p["statuses"]
        }
        pipelines = {p["id"]: p["name"] for p in s.data["pipelines"]}
        users = {u["id"]: u["name"] for u in s.data["users"]}
        leads = []
        for lead in sorted(s.entities("leads").values(), key=lambda o: -o["id"])[:200]:
            key = lead["status_id"]
            if key in (142, 143):
                key = (lead["pipeline_id"], key)
            tags = s.data["tags"]["leads"]
            contacts = [
                s.entities("contacts")[c]
                for c in linked_ids(s, "leads", lead["id"], "contacts")
                if c in s.entities("contacts")
            ]
            companies = [
                s.entities("companies")[c]
                for c in linked_ids(s, "leads", lead["id"], "companies")
                if c in s.entities("companies")
            ]
            notes = [
                n
                for n in s.data["notes"]["leads"].values()
                if n["entity_id"] == lead["id"]
            ]
            for c in contacts:
                notes += [
                    n
                    for n in s.data["notes"]["contacts"].values()
                    if n["entity_id"] == c["id"]
                ]
            tasks = [
                t
                for t in s.data["tasks"].values()
                if t["entity_type"] == "leads" and t["entity_id"] == lead["id"]
            ]
            leads.append(
                {
                    "lead": lead,
                    "status": statuses.get(key, "?"),
                    "pipeline": pipelines.get(lead["pipeline_id"], "?"),
                    "responsible": users.get(lead["responsible_user_id"], "?"),
                    "tags": [tags[t]["name"] for t in lead["_tags"] if t in tags],
                    "contacts": contacts,
                    "companies": companies,
                    "notes": sorted(notes, key=lambda n: n["id"]),
                    "tasks": tasks,
                }
            )
        return render_template(
            "sandbox/index.html",
            account=s.data["account"],
            leads=leads,
            total=len(s.entities("leads")),
            unsorted=sum(
                1 for u in s.data["unsorted"].values() if u["_state"] == "pending"
            ),
            token=sbx.auth_hint,
        )
