"""The API log: every request to amoCRM, newest first, and one request's bodies.

The list is paged by keyset (``?before=<id>``: the rows older than the last one
shown), so the thousandth page costs what the first does. Bodies were masked when they
were written (:class:`~flask_amocrm.amo.apilog.Redactor`) and are masked again here
(:meth:`~flask_amocrm.amo.apilog.Redactor.stored`), with the secrets of today's
settings.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qsl

from flask import abort, current_app, render_template, request
from sqlalchemy import or_, select

from ..amo.apilog import SECRET_KEYS, Redactor
from ..i18n import N_, gettext
from ..models import ApiLog
from ..state import AppState, get_state
from .blueprint import bp

#: Rows on one page of the log.
PAGE = 50
#: The status filter's choices besides an exact status: value → label.
STATUS_CHOICES = {
    "": N_("any"),
    "2xx": N_("2xx: success"),
    "4xx": N_("4xx: refused"),
    "5xx": N_("5xx: amoCRM failed"),
    "errors": N_("errors: 4xx, 5xx, no answer"),
}
#: amoCRM's OAuth endpoints: their bodies' ``code`` is a secret (elsewhere a
#: ``code`` is a field's code, ``PHONE``).
OAUTH_PREFIX = "/oauth2/"


def _status_clause(value: str) -> Any:
    """The condition of the status filter ``value``; ``None`` for none, ``False``
    for a value that is not a filter."""
    if not value:
        return None
    if value == "errors":
        return or_(ApiLog.status.is_(None), ApiLog.status >= 400)
    if len(value) == 3 and value[0] in "12345" and value[1:] == "xx":
        low = int(value[0]) * 100
        return (ApiLog.status >= low) & (ApiLog.status < low + 100)
    if value.isdigit() and len(value) == 3:
        return ApiLog.status == int(value)
    return False


def _redactor(state: AppState) -> Redactor:
    return Redactor([state.settings.client_secret, state.settings.token])


def shown_path(redactor: Redactor, path: str) -> str:
    """A logged path with its query's secret parameters masked again; the rest of
    it is left as it was logged, to be read."""
    base, sep, query = path.partition("?")
    if not sep:
        return redactor.text(path)
    pairs = parse_qsl(query, keep_blank_values=True)
    if any(key.lower() in SECRET_KEYS for key, _value in pairs):
        return f"{base}?{redactor.url_query(query)}"
    return f"{base}?{redactor.text(query)}"


def event_link(event_id: int | None) -> str | None:
    """The address of the event's page, when the admin has one."""
    if event_id is None or "amocrm_admin.event" not in current_app.view_functions:
        return None
    from flask import url_for

    return url_for("amocrm_admin.event", event_id=event_id)


@bp.get("/log")
def api_log() -> str:
    """The requests, newest first, filtered by status and path prefix."""
    state = get_state()
    status = request.args.get("status", "").strip().lower()
    path = request.args.get("path", "").strip()
    before = request.args.get("before", type=int)
    query = select(ApiLog)
    problem = None
    clause = _status_clause(status)
    if clause is False:
        problem = gettext(
            "%(value)s is not a status filter: give 2xx, 4xx, 5xx, errors or a "
            "status such as 404.",
            value=status,
        )
    elif clause is not None:
        query = query.where(clause)
    if path:
        query = query.where(ApiLog.path.startswith(path, autoescape=True))
    if before is not None:
        query = query.where(ApiLog.id < before)
    with state.session() as session:
        rows = list(session.scalars(query.order_by(ApiLog.id.desc()).limit(PAGE + 1)))
    more = len(rows) > PAGE
    rows = rows[:PAGE]
    redactor = _redactor(state)
    return render_template(
        "amocrm_admin/api_log.html",
        rows=[
            (row, shown_path(redactor, row.path), event_link(row.event_id))
            for row in rows
        ],
        status=status,
        path=path,
        before=before,
        older=rows[-1].id if more and rows else None,
        problem=problem,
        choices=STATUS_CHOICES,
        log_requests=state.settings.log_requests,
    )


@bp.get("/log/<int:entry_id>")
def api_log_entry(entry_id: int) -> str:
    """One request with its bodies, masked."""
    state = get_state()
    with state.session() as session:
        row = session.get(ApiLog, entry_id)
    if row is None:
        abort(404)
    redactor = _redactor(state)
    oauth = row.path.startswith(OAUTH_PREFIX)
    return render_template(
        "amocrm_admin/api_log_entry.html",
        row=row,
        path=shown_path(redactor, row.path),
        request_body=redactor.stored(row.request_body, oauth=oauth),
        response_body=redactor.stored(row.response_body, oauth=oauth),
        error=redactor.stored(row.error, oauth=oauth),
        event_url=event_link(row.event_id),
    )
