"""The landing page: is amoCRM reachable, is the token good, is delivery keeping up.

The verdict and its figures are :func:`flask_amocrm.worker.health.check_health`'s,
as ``flask amocrm health`` and the health endpoint give them; the others come from
the function ``flask amocrm status`` uses for the same question
(:mod:`flask_amocrm.worker.health`); the charts' figures are counted by the
database (:mod:`.stats`) and drawn as SVG on the server (:mod:`.charts`).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from flask import render_template, request
from markupsafe import Markup
from sqlalchemy import func, select

from ..amo.connect import token_state
from ..i18n import gettext, localize
from ..models import (
    CANCELLED,
    DELIVERED,
    FAILED,
    IGNORED,
    PENDING,
    PROCESSING,
    RETRYING,
    SPAM,
    ApiLog,
    utcnow,
)
from ..models import STATUS_LABELS as STATUS_NAMES
from ..outbox import switched_off
from ..state import AppState, get_state
from ..worker.health import (
    Health,
    budget_per_minute,
    check_health,
    requests_last_minute,
)
from . import stats
from .blueprint import bp
from .charts import Series, bar_chart, line_chart

#: The colours of the statuses in the charts (the badges' colours in admin.css).
STATUS_COLORS = {
    DELIVERED: "#1c7c3a",
    FAILED: "#b3261e",
    RETRYING: "#a86400",
    PROCESSING: "#e0a030",
    PENDING: "#1f5fbf",
    IGNORED: "#8a93a0",
    CANCELLED: "#c4c9d1",
    SPAM: "#6b5b95",
}
#: The statuses as the charts' legend says them (in its order; the names are the
#: models' own, as ``flask amocrm status`` says them).
STATUS_LABELS = {
    status: STATUS_NAMES[status]
    for status in (
        DELIVERED,
        FAILED,
        RETRYING,
        PROCESSING,
        PENDING,
        IGNORED,
        CANCELLED,
        SPAM,
    )
}


def age(since: datetime | None, now: datetime | None = None) -> str:
    """How long ago ``since`` (naive or aware UTC) was, as a person says it."""
    if since is None:
        return "—"
    now = now or utcnow()
    if since.tzinfo is not None:
        since = since.astimezone(UTC).replace(tzinfo=None)
    seconds = max(0, int((now - since).total_seconds()))
    if seconds < 60:
        return gettext("%(n)s s", n=seconds)
    if seconds < 3600:
        return gettext("%(n)s min", n=seconds // 60)
    if seconds < 86400 * 2:
        return gettext("%(h)s h %(m)s min", h=seconds // 3600, m=seconds % 3600 // 60)
    return gettext("%(n)s days", n=seconds // 86400)


def _last_request(state: AppState) -> Any:
    with state.session() as session:
        last_id = session.scalar(select(func.max(ApiLog.id)))
        return session.get(ApiLog, last_id) if last_id is not None else None


def _queue(report: Health) -> dict[str, Any]:
    """The RQ side: jobs waiting and workers alive, or why they cannot be told."""
    if report.delivery != "rq":
        return {"mode": report.delivery}
    if report.redis_error is not None:
        return {"mode": "rq", "redis_error": report.redis_error}
    return {"mode": "rq", "depth": report.queue_depth, "workers": report.workers}


def _labels(b: stats.Buckets) -> list[str]:
    if b.unit == "hour":
        return [key[11:13] for key in b.keys]
    return [f"{key[8:10]}.{key[5:7]}" for key in b.keys]


def _charts(state: AppState, span: str) -> dict[str, Markup] | None:
    """The three charts of ``span``; ``None`` on a database other than SQLite and
    PostgreSQL."""
    b = stats.buckets(span, state.settings.timezone)
    try:
        with state.session() as session:
            by_status = stats.events_by_status(session, b)
            delays = stats.delivery_delays(session, b)
            calls = stats.calls_per_event(session, b)
    except stats.UnsupportedDatabase:
        return None
    labels = _labels(b)
    nothing = gettext("No data in this period.")
    per = gettext("Events per hour") if b.unit == "hour" else gettext("Events per day")
    events = bar_chart(
        per,
        labels,
        [
            Series(
                gettext(STATUS_LABELS[status]),
                color,
                [by_status.get(status, {}).get(k) for k in b.keys],
            )
            for status, color in STATUS_COLORS.items()
        ],
        empty=nothing,
    )
    delay = line_chart(
        gettext("Delivery delay, seconds"),
        labels,
        [
            Series("p50", "#1f5fbf", [delays[50].get(k) for k in b.keys]),
            Series("p95", "#b3261e", [delays[95].get(k) for k in b.keys]),
        ],
        empty=nothing,
    )
    per_event = bar_chart(
        gettext("API calls per delivered event"),
        labels,
        [Series(gettext("calls"), "#5d6878", [calls.get(k) for k in b.keys])],
        empty=nothing,
    )
    return {"events": events, "delay": delay, "calls": per_event}


@bp.get("/")
def health() -> str:
    """The landing page."""
    state = get_state()
    settings = state.settings
    span = request.args.get("span", "24h")
    if span not in stats.SPANS:
        span = "24h"
    report = check_health(state)
    due_since = report.due_since
    used = requests_last_minute(state)
    return render_template(
        "amocrm_admin/health.html",
        settings=settings,
        healthy=report.healthy,
        problems=[localize(problem.message) for problem in report.problems],
        outage=report.outage,
        pause=report.pause,
        token=report.token or token_state(state),
        last=_last_request(state),
        used=used,
        budget=budget_per_minute(state),
        queue=_queue(report),
        due_since=due_since,
        due_age=age(due_since) if due_since is not None else None,
        age=age,
        switches=switched_off(state),
        span=span,
        spans=list(stats.SPANS),
        charts=_charts(state, span),
    )
