"""The site as an amoCRM source: registered once, named by every lead we create.

amoCRM's sources (``/api/v4/sources``) say where a lead came from: its statistics,
Unsorted routing and duplicate control use them. The site's source has the
``external_id`` of ``AMOCRM_SOURCE`` (by default the host of ``SERVER_NAME``; no
source without either: a visitor's ``Host`` header never names one). On first use it
is looked up by that ``external_id`` and created only if amoCRM has none, under a
shared lock, and its id is kept as a shared flag per account, so a lost answer or two
workers starting together never make two sources. Every lead this site creates, in
``leads/complex`` or inside an incoming lead, carries
``_embedded.source = {"external_id": ..., "type": "widget"}``.

An account that refuses sources (an integration without the widget location amoCRM
asks for answers 403 or 404) gets leads without one: that is remarked on the events
and asked again after :data:`REFUSED_SECONDS`.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from .. import shared
from ..amo.client import AmoClient
from ..errors import AmoCRMError, CallVetoed
from ..i18n import N_
from ..state import AppState

if TYPE_CHECKING:
    from .delivery import Delivery

log = logging.getLogger("flask_amocrm.worker")

#: Seconds a worker waits for another one that is registering the source.
SOURCE_LOCK_WAIT = 60.0
#: After amoCRM refused to register the source, leads go without one this long.
REFUSED_SECONDS = 3600


def source_id(state: AppState, client: AmoClient, external_id: str) -> int | None:
    """The id of the site's source in the account, registered on first use;
    ``None`` when amoCRM refuses sources (a retryable error is raised)."""
    flag = f"source:{external_id}"
    known = shared.get(state, flag, account=True)
    if known:
        return int(known)
    if shared.get(state, f"source-refused:{external_id}", account=True):
        return None
    with shared.lock(state, "source", ttl=60, wait=SOURCE_LOCK_WAIT, account=True):
        known = shared.get(state, flag, account=True)  # set by the holder before us
        if known:
            return int(known)
        try:
            found = client.find_sources(external_id)
            match = [s for s in found if str(s.get("external_id")) == external_id]
            if match:
                number = int(match[0]["id"])
            else:
                created = client.create_source(
                    {
                        "name": state.settings.site_name or external_id,
                        "external_id": external_id,
                    }
                )
                number = int(created["id"])
                log.info("Registered the site as amoCRM source %s", number)
        except CallVetoed:
            raise  # a before_api_call hook said no: that cancels the events
        except AmoCRMError as exc:
            if exc.retryable:
                raise
            log.warning(
                "amoCRM refused the site's source %r (%s); leads go without it",
                external_id,
                exc,
            )
            shared.put(
                state,
                f"source-refused:{external_id}",
                str(exc)[:200],
                REFUSED_SECONDS,
                account=True,
            )
            return None
        shared.put(state, flag, str(number), account=True)
        return number


def forget_source(state: AppState) -> None:
    """Forget the cached source id (``flask amocrm sync``): the next lead looks it
    up again."""
    external_id = state.settings.source
    if external_id:
        shared.clear(state, f"source:{external_id}", account=True)
        shared.clear(state, f"source-refused:{external_id}", account=True)


def tag_source(
    state: AppState,
    client: AmoClient,
    deliveries: list[Delivery],
    *,
    register: bool = True,
) -> None:
    """Name the site's source on every lead this batch creates. ``register=False``
    (a preview) names it without asking amoCRM for it."""
    external_id = state.settings.source
    if not external_id:
        return
    new = [
        d
        for d in deliveries
        if d.error is None
        and d.plan.lead is not None
        and d.plan.lead.id is None
        and not d.plan.done(d.progress)
    ]
    if not new:
        return
    if register and source_id(state, client, external_id) is None:
        for delivery in new:
            delivery.note(
                N_(
                    "amoCRM refused the source %(source)s: sent without it",
                    source=repr(external_id),
                )
            )
        return
    for delivery in new:
        lead = delivery.plan.lead
        assert lead is not None
        embedded = lead.payload.setdefault("_embedded", {})
        embedded["source"] = {"external_id": external_id, "type": "widget"}
