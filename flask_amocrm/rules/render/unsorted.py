"""Unsorted mode: the incoming-lead item (``leads/unsorted/forms``) of an event.

An incoming lead waits in amoCRM's "Incoming" column until someone accepts it. Its
metadata says which form on which page sent it, and when; its lead, contact and
company are the sections rendered as usual.
"""

from __future__ import annotations

from typing import Any

from ..clean import LONG_LIMIT, clean_text
from .builder import PlanBuilder


def unsorted_item(b: PlanBuilder) -> None:
    """Set the plan's incoming-lead item (without its ``_embedded``)."""
    setting = b.rule.get("unsorted")
    setting = setting if isinstance(setting, dict) else {}
    context = b.event.context or {}
    page = b.vars["page"] or {}
    site = b.vars["site"] or {}
    client = b.vars["client"] or {}
    sent_at = int(context.get("captured_at") or b.env.timestamp())
    where = f"{b.where}.unsorted"
    form_name = b.text(
        setting.get("form_name", b.event.source), f"{where}.form_name", None
    ) or str(b.event.source)
    source_name = (
        b.text(
            setting.get(
                "source_name", site.get("name") or site.get("domain") or "Site"
            ),
            f"{where}.source_name",
            None,
        )
        or "Site"
    )
    metadata: dict[str, Any] = {
        "form_id": clean_text(b.event.source, limit=100),
        "form_name": form_name,
        "form_page": clean_text(
            page.get("url")
            or (
                f"https://{site['domain']}"
                if site.get("domain")
                else f"{b.event.kind}:{b.event.source}"
            ),
            limit=LONG_LIMIT,
        ),
        "form_sent_at": sent_at,
    }
    if client.get("ip"):
        metadata["ip"] = str(client["ip"])
    if page.get("referrer"):
        metadata["referer"] = clean_text(page["referrer"], limit=LONG_LIMIT)
    if client.get("visitor_uid"):
        metadata["visitor_uid"] = str(client["visitor_uid"])
    item: dict[str, Any] = {
        "source_name": source_name,
        "source_uid": str(getattr(b.event, "uid", None) or b.event.id),
        "created_at": sent_at,
        "metadata": metadata,
    }
    lead = b.plan.lead
    pipeline_id = lead.payload.get("pipeline_id") if lead else None
    if pipeline_id:
        item["pipeline_id"] = pipeline_id
    b.plan.unsorted = item


__all__ = ["unsorted_item"]
