"""Executing plans against amoCRM, batch first.

:func:`execute` takes the deliveries of one batch (each an event with its plan) and
makes the API calls for all of them together: the leads with their contacts and
companies go to ``leads/complex`` 50 at a time. After each call the ids amoCRM returned
are written to each event's ``remote`` and saved at once, so a retry resumes where this
one stopped. A validation error on one item fails that event only; the rest of its batch
is sent again without it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..amo.client import AmoClient
from ..errors import AmoCRMError, ValidationError
from ..models import Event
from .plan import Plan

#: amoCRM takes at most 50 leads per ``leads/complex`` call.
COMPLEX_BATCH = 50


@dataclass
class Delivery:
    """One event of a batch, its plan and what became of it."""

    event: Event
    plan: Plan
    #: Commits the event's progress (``event.remote``) right away.
    save: Callable[[], None]
    #: Set when this event failed on its own (the rest of the batch goes on).
    error: AmoCRMError | None = None

    @property
    def request_id(self) -> str:
        return str(self.event.id)


def execute(client: AmoClient, deliveries: list[Delivery]) -> None:
    """Make the calls for every delivery. Errors of one item land on its
    :attr:`Delivery.error`; an error of the whole call (network, 5xx, 429) is raised
    after the progress made so far has been saved."""
    todo = [d for d in deliveries if not d.event.remote.get("lead_id")]
    for start in range(0, len(todo), COMPLEX_BATCH):
        _create_complex(client, todo[start : start + COMPLEX_BATCH])


def _create_complex(client: AmoClient, batch: list[Delivery]) -> None:
    while batch:
        items = [dict(d.plan.lead, request_id=d.request_id) for d in batch]
        try:
            answer = client.post("/api/v4/leads/complex", items)
        except ValidationError as exc:
            rejected = _split_errors(exc, batch)
            if not rejected:
                raise  # not tied to an item: the whole batch fails alike
            batch = [d for d in batch if d.request_id not in rejected]
            continue
        results = _results_by_request_id(answer)
        for delivery in batch:
            result = results.get(delivery.request_id)
            if result is None:
                delivery.error = AmoCRMError(
                    f"leads/complex answered without item {delivery.request_id}")
                continue
            delivery.event.remote = {
                **delivery.event.remote,
                "lead_id": result.get("id"),
                "contact_id": result.get("contact_id"),
                "company_id": result.get("company_id"),
                "merged": bool(result.get("merged")),
            }
            delivery.save()
        return


def _split_errors(exc: ValidationError, batch: list[Delivery]) -> set[str]:
    """Give each rejected item its own ValidationError; return their request ids."""
    by_id = {d.request_id: d for d in batch}
    rejected: set[str] = set()
    for item in exc.errors:
        request_id = str(item.get("request_id"))
        delivery = by_id.get(request_id)
        if delivery is None:
            return set()
        details = "; ".join(
            f"{e.get('path')}: {e.get('code')}"
            + (f" ({e.get('detail')})" if e.get("detail") else "")
            for e in item.get("errors", [])
        )
        delivery.error = ValidationError(
            f"amoCRM rejected the data: {details}", body=exc.body, errors=[item])
        rejected.add(request_id)
    return rejected


def _results_by_request_id(answer: Any) -> dict[str, dict[str, Any]]:
    """``leads/complex`` answers a bare array whose ``request_id`` is a list (the
    docs); the HAL ``_embedded.leads`` shape with a string is accepted too."""
    items = answer
    if isinstance(answer, dict):
        items = answer.get("_embedded", {}).get("leads", [])
    results: dict[str, dict[str, Any]] = {}
    for item in items or []:
        ids = item.get("request_id")
        for request_id in ids if isinstance(ids, list) else [ids]:
            results[str(request_id)] = item
    return results
