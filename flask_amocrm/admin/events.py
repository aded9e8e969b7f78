"""The events pages: the list (``/events``), one event (``/events/<id>``) and the
actions a person takes on them (retry, retry every failed one, cancel, deliver the
due ones now).

The list is paged on the database by id (keyset, newest first): a page costs the
same on the first page and the five-hundredth. Search looks in ``Event.search``,
the terms written when the event was stored (:func:`flask_amocrm.outbox.search_text`).
Every action is a ``POST`` from a form with the page's CSRF token (checked by the
blueprint) and answers with a redirect and a flashed message: nothing needs
JavaScript.
"""

from __future__ import annotations

import importlib
import json
from datetime import UTC, date, datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from flask import (
    abort,
    current_app,
    flash,
    redirect,
    render_template,
    request,
    url_for,
)
from sqlalchemy import ColumnElement, func, or_, select
from sqlalchemy.orm import Session
from werkzeug.wrappers import Response as BaseResponse

from ..dedup import CARD_PATHS, card_url
from ..errors import AmoCRMError
from ..i18n import N_, gettext, ngettext
from ..models import (
    FAILED,
    SPAM,
    STATUS_LABELS,
    STATUSES,
    ApiLog,
    Event,
    EventAttempt,
)
from ..outbox import (
    CANCELLABLE,
    LEASE,
    RETRYABLE,
    cancel,
    contact_values,
    search_filter,
)
from ..progress import Progress
from ..rules.render.notes import journey_text
from ..rules.schema import find_rule
from ..state import AppState, get_state
from ..visit import display_domain
from ..vocabulary import LOCALES
from ..worker.agent import process
from ..worker.deliver import next_batch_size
from ..worker.dispatch import release, retry
from ..worker.outage import current as current_outage
from ..worker.outage import paused
from ..worker.preview import Preview, preview_stored
from .apilog import display_redactor, shown_call
from .blueprint import bp, int_arg

#: Events on one page of the list.
PAGE_SIZE = 50
#: The most API log rows one event's page shows.
API_CALLS_SHOWN = 200
#: The longest cancel reason and name kept, in characters.
REASON_MAX = 500
#: How each kind of event is written on the pages.
KIND_LABELS = {"form": N_("form"), "mail": N_("mail")}
#: Names for the context's other parts a person reads on the page (the rest show
#: their stored key).
CONTEXT_LABELS = {
    "spam": N_("Spam check"),
    "cookies": N_("Cookies"),
}


# -- the list --------------------------------------------------------------------------


def _date_arg(name: str) -> date | None:
    try:
        return date.fromisoformat(request.args.get(name, "").strip())
    except ValueError:
        return None


def _utc(day: date, timezone: str) -> datetime:
    """Midnight of ``day`` in the site's time zone, as a stored (naive UTC) time."""
    local = datetime.combine(day, time(), tzinfo=ZoneInfo(timezone))
    return local.astimezone(UTC).replace(tzinfo=None)


def _filters(state: AppState) -> tuple[list[ColumnElement[bool]], dict[str, Any]]:
    """The conditions the query string asks for, and the values to show in the
    form (only the ones that were understood)."""
    args = request.args
    conditions: list[ColumnElement[bool]] = []
    shown: dict[str, Any] = {}
    status = args.get("status", "")
    if status and len(status) <= 12:
        conditions.append(Event.status == status)
        shown["status"] = status
    kind = args.get("kind", "")
    if kind in KIND_LABELS:
        conditions.append(Event.kind == kind)
        shown["kind"] = kind
    source = args.get("source", "").strip()
    if source:
        conditions.append(Event.source == source[:200])
        shown["source"] = source[:200]
    timezone = state.settings.timezone
    since, until = _date_arg("since"), _date_arg("until")
    if since is not None:
        conditions.append(Event.created_at >= _utc(since, timezone))
        shown["since"] = since.isoformat()
    if until is not None:
        conditions.append(Event.created_at < _utc(until + timedelta(days=1), timezone))
        shown["until"] = until.isoformat()
    query = args.get("q", "").strip()[:200]
    if query:
        found = search_filter(
            query,
            state.settings.phone_region,
            postgresql=state.engine.dialect.name == "postgresql",
        )
        if found is not None:
            conditions.append(found)
            shown["q"] = query
    return conditions, shown


def _who(event: Event) -> dict[str, str]:
    """The first name, phone and e-mail in the event's data, as written."""
    who: dict[str, str] = {}
    for what, text in contact_values(event.data):
        who.setdefault(what, text)
    return who


@bp.get("/events")
def events() -> str:
    """The events, newest first, filtered and searched, a page at a time."""
    state = get_state()
    conditions, shown = _filters(state)
    before, after = int_arg("before"), int_arg("after")
    query = select(Event).where(*conditions)
    if after is not None:  # "newer": the page just above ``after``
        query = query.where(Event.id > after).order_by(Event.id.asc())
    else:
        if before is not None:
            query = query.where(Event.id < before)
        query = query.order_by(Event.id.desc())
    with state.session() as session:
        rows = list(session.scalars(query.limit(PAGE_SIZE + 1)))
        more = len(rows) > PAGE_SIZE
        rows = rows[:PAGE_SIZE]
        if after is not None:
            rows.reverse()
        counts = dict(
            session.execute(
                select(Event.status, func.count()).group_by(Event.status)
            ).all()
        )
        newer = older = False
        if rows:
            if after is not None:
                newer, older = more, True
            else:
                older = more
                newer = before is not None and (
                    session.scalar(
                        select(Event.id)
                        .where(*conditions, Event.id > rows[0].id)
                        .limit(1)
                    )
                    is not None
                )
    statuses = [*STATUSES, *sorted(set(counts) - set(STATUSES))]
    sources = _rule_sources(state)
    return render_template(
        "amocrm_admin/events.html",
        rows=[(e, _who(e)) for e in rows],
        counts=counts,
        total=sum(counts.values()),
        statuses=statuses,
        status_labels=STATUS_LABELS,
        kind_labels=KIND_LABELS,
        sources=sources,
        shown=shown,
        newer=rows[0].id if rows and newer else None,
        older=rows[-1].id if rows and older else None,
        failed=counts.get(FAILED, 0),
        mode=state.settings.delivery,
    )


def _rule_sources(state: AppState) -> list[str]:
    """The form ids and mail events the rules name (suggestions for the filter)."""
    rules = state.settings.rules or {}
    names: list[str] = []
    for section in ("forms", "mails"):
        value = rules.get(section)
        if isinstance(value, dict):
            names.extend(str(k) for k in value)
    return sorted(set(names))


# -- one event -------------------------------------------------------------------------


def _pretty(value: Any) -> str:
    if isinstance(value, str):
        return value
    return json.dumps(value, ensure_ascii=False, indent=2, default=str)


def _api_calls(
    session: Session, event_id: int, attempts: list[EventAttempt]
) -> list[tuple[ApiLog, str]]:
    """The API log rows of an event, oldest first, each with whose it is:
    ``"event"`` (made for this event alone, logged with its id) or, for an event
    delivered in a batch, the batch's calls made during its attempts: ``"mentions"``
    (the call carries the event's ``request_id``) or ``"batch"`` (shared: metadata,
    the marker field, other events' lookups). At most :data:`API_CALLS_SHOWN` + 1."""
    own = list(
        session.scalars(
            select(ApiLog)
            .where(ApiLog.event_id == event_id)
            .order_by(ApiLog.id)
            .limit(API_CALLS_SHOWN + 1)
        )
    )
    windows = [
        # a row is written when its answer came: within the attempt
        ApiLog.created_at.between(a.started_at, a.finished_at or a.started_at + LEASE)
        for a in attempts
        if a.started_at is not None
    ]
    shared: list[ApiLog] = []
    if windows:
        shared = list(
            session.scalars(
                select(ApiLog)
                .where(ApiLog.event_id.is_(None), or_(*windows))
                .order_by(ApiLog.id)
                .limit(API_CALLS_SHOWN + 1)
            )
        )
    mark = f'"request_id": "{event_id}"'
    rows = [(call, "event") for call in own] + [
        (
            call,
            "mentions"
            if mark in (call.request_body or "") or mark in (call.response_body or "")
            else "batch",
        )
        for call in shared
    ]
    rows.sort(key=lambda row: row[0].id)
    return rows


#: The context's parts the page shows in their own places, when they are objects.
_CONTEXT_PARTS = ("utm", "utm_first", "page", "client", "site", "consent")


def _data(value: Any) -> list[tuple[str, str]]:
    """The captured data as (field, text) pairs; data that is not an object (a
    row written by hand or by an older version) as one pair."""
    if isinstance(value, dict):
        return [(str(k), _pretty(v)) for k, v in value.items()]
    if value in (None, "", [], {}):
        return []
    return [("data", _pretty(value))]


def _context(value: Any) -> tuple[dict[str, dict[str, Any]], dict[str, Any]]:
    """The visit context's parts the page shows in their own places (the objects
    among them) and every other value, as it was stored (a part of another shape,
    from a row written by hand or by an older version, is shown there)."""
    if not isinstance(value, dict):
        return {}, ({"context": value} if value not in (None, "", [], {}) else {})
    parts = {p: value[p] for p in _CONTEXT_PARTS if isinstance(value.get(p), dict)}
    other = {k: v for k, v in value.items() if k not in parts and v not in (None, {})}
    return parts, other


def _site(site: Any) -> dict[str, Any]:
    """The event's site as a person reads it: an IDN domain in Unicode (events
    stored before the domain was kept so are shown so too)."""
    shown: dict[str, Any] = dict(site) if isinstance(site, dict) else {}
    if isinstance(shown.get("domain"), str):
        shown["domain"] = display_domain(shown["domain"])
    return shown


def _captured_at(value: Any) -> datetime | None:
    """The context's ``captured_at`` (seconds since the epoch) as a stored time."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    try:
        return datetime.fromtimestamp(value, UTC).replace(tzinfo=None)
    except (OverflowError, OSError, ValueError):
        return None


def _iso_time(value: Any) -> datetime | None:
    """A stored ``2026-12-02T08:40:11Z`` as a naive-UTC time (``None`` if it is not
    one)."""
    try:
        return datetime.fromisoformat(str(value).removesuffix("Z"))
    except ValueError:
        return None


def _safe_link(url: Any) -> str | None:
    """``url`` when it is a web address a link may point at (never ``javascript:``),
    or a path on this site. A browser drops tabs and line breaks from an address
    and reads ``\\`` as ``/``, so ``/\\host`` (or ``/<tab>/host``) is another site:
    such a path is not a link."""
    text = str(url or "")
    if text.startswith(("https://", "http://")):
        return text
    if text.startswith("/") and not any(c in text for c in "\\\t\n\r"):
        return None if text.startswith("//") else text
    return None


def _cards(state: AppState, progress: Progress) -> list[tuple[str, int, str]]:
    """Links to the event's lead, contact and company cards in amoCRM."""
    labels = {
        "leads": N_("Lead"),
        "contacts": N_("Contact"),
        "companies": N_("Company"),
    }
    found = {
        "leads": progress.lead_id,
        "contacts": progress.contact_id,
        "companies": progress.company_id,
    }
    base = state.settings.base_url
    return [
        (labels[entity], entity_id, card_url(base, entity, entity_id))
        for entity, entity_id in found.items()
        if entity_id and entity in CARD_PATHS
    ]


def _preview(state: AppState, event: Event) -> tuple[Preview | None, str | None]:
    """What the event's rule makes of it now, or why that cannot be shown."""
    rule = find_rule(state.settings.rules, event.kind, event.source)
    if rule is None:
        return None, gettext("There is no rule for this form or mail event.")
    if current_outage(state) or paused(state):
        # the preview may need the account's fields: never wait on a dead amoCRM here
        return None, gettext(
            "Not shown while amoCRM does not answer: the preview may need to read "
            "the account's fields."
        )
    try:
        return preview_stored(state, rule, event), None
    except AmoCRMError as exc:
        return None, str(exc)
    except Exception as exc:  # noqa: BLE001 - a page never fails on a preview
        current_app.logger.exception(
            "Flask-AmoCRM could not preview event %s", event.id
        )
        return None, type(exc).__name__


def _who_may_cancel() -> str | None:
    """The signed-in user's name where the site uses Flask-Login, else ``None``."""
    if getattr(current_app, "login_manager", None) is None:
        return None
    try:
        # imported by name: Flask-Login is the site's choice, not a dependency
        current_user = importlib.import_module("flask_login").current_user
    except ImportError:
        return None
    if not getattr(current_user, "is_authenticated", False):
        return None
    for attribute in ("name", "username", "email"):
        value = getattr(current_user, attribute, None)
        if value:
            return str(value)[:200]
    try:
        return str(current_user.get_id())[:200]
    except Exception:  # noqa: BLE001 - a user class without get_id
        return None


@bp.get("/events/<int:event_id>")
def event(event_id: int) -> str:
    """Everything about one event: its data, visit, files, the calls its rule
    makes, its progress, its amoCRM requests and answers, attempts and log."""
    state = get_state()
    with state.session() as session:
        found = session.get(Event, event_id)
        if found is None:
            abort(404)
        attempts = list(
            session.scalars(
                select(EventAttempt)
                .where(EventAttempt.event_id == event_id)
                .order_by(EventAttempt.id)
            )
        )
        calls = _api_calls(session, event_id, attempts)
    redactor = display_redactor(state)
    progress = Progress.from_json(found.remote)
    preview, preview_error = _preview(state, found)
    parts, context = _context(found.context)
    captured_at = _captured_at(context.get("captured_at"))
    if captured_at is not None:
        del context["captured_at"]
    return render_template(
        "amocrm_admin/event.html",
        event=found,
        who=_who(found),
        status_labels=STATUS_LABELS,
        kind_labels=KIND_LABELS,
        data=_data(found.data),
        utm_last=parts.get("utm", {}),
        utm_first=parts.get("utm_first", {}),
        visit_page=parts.get("page", {}),
        client=parts.get("client", {}),
        site=_site(parts.get("site")),
        journey=journey_text(context.get("journey")),
        captured_at=captured_at,
        other_context={
            (gettext(CONTEXT_LABELS[k]) if k in CONTEXT_LABELS else k): _pretty(v)
            for k, v in context.items()
            if k not in ("journey", "consent", "consent_text")
        },
        consent=[
            (str(name), item, _iso_time(item.get("at")))
            for name, item in (parts.get("consent") or {}).items()
            if isinstance(item, dict)
        ],
        files=[
            (f.get("name") or f.get("field") or "?", _safe_link(f.get("url")), f)
            for f in (found.files if isinstance(found.files, list) else [])
            if isinstance(f, dict)
        ],
        safe_link=_safe_link,
        preview=preview,
        preview_error=preview_error,
        pretty=_pretty,
        progress=progress,
        cards=_cards(state, progress),
        attempts=attempts,
        calls=[
            (call, whose, shown_call(redactor, call))
            for call, whose in calls[:API_CALLS_SHOWN]
        ],
        more_calls=len(calls) > API_CALLS_SHOWN,
        cancellable=found.status in CANCELLABLE,
        retryable=found.status in RETRYABLE,
        releasable=found.status == SPAM,
        signed_in=_who_may_cancel(),
        mode=state.settings.delivery,
    )


# -- actions ---------------------------------------------------------------------------


def _back(default: str) -> BaseResponse:
    """A redirect to the admin page the form was on, else ``default``."""
    target = request.form.get("next", "")
    prefix = url_for("amocrm_admin.events")
    if target.startswith(prefix) and "//" not in target and "\\" not in target:
        return redirect(target)
    return redirect(default)


def _handed_on(count: int) -> str:
    mode = get_state().settings.delivery
    if mode == "rq":
        return (
            gettext("A worker will deliver it.")
            if count == 1
            else gettext("Workers will deliver them.")
        )
    if mode == "inline":
        return gettext("Delivery starts right after this page.")
    return gettext("The next agent run delivers them (or “Deliver due events now”).")


@bp.post("/events/<int:event_id>/retry")
def event_retry(event_id: int) -> BaseResponse:
    """Make one event due again and hand it on as ``flask amocrm retry ID`` does."""
    state = get_state()
    page = url_for("amocrm_admin.event", event_id=event_id)
    with state.session() as session:
        status = session.scalar(select(Event.status).where(Event.id == event_id))
    if status is None:
        abort(404)
    # retry() takes only a retryable event, in the same statement that makes it due
    if status not in RETRYABLE or not retry(state, ids=[event_id]):
        with state.session() as session:
            status = session.scalar(select(Event.status).where(Event.id == event_id))
        flash(
            gettext(
                "Event %(id)s is %(status)s: it is not retried.",
                id=event_id,
                status=gettext(STATUS_LABELS.get(status or "", status or "")),
            ),
            "amocrm-error",
        )
        return _back(page)
    flash(
        gettext("Event %(id)s will be retried.", id=event_id) + " " + _handed_on(1),
        "amocrm-ok",
    )
    return _back(page)


@bp.post("/events/retry-failed")
def events_retry_failed() -> BaseResponse:
    """Make every failed event due again (``flask amocrm retry --failed``)."""
    state = get_state()
    ids = retry(state, status=FAILED)
    if not ids:
        flash(gettext("There are no failed events."), "amocrm-ok")
    else:
        flash(
            ngettext(
                "%(count)s failed event will be retried.",
                "%(count)s failed events will be retried.",
                len(ids),
            )
            + " "
            + _handed_on(len(ids)),
            "amocrm-ok",
        )
    return _back(url_for("amocrm_admin.events"))


@bp.post("/events/<int:event_id>/cancel")
def event_cancel(event_id: int) -> BaseResponse:
    """End a waiting event as ``ignored``, saying who cancelled it and why."""
    state = get_state()
    page = url_for("amocrm_admin.event", event_id=event_id)
    why = " ".join(request.form.get("reason", "").split())[:REASON_MAX]
    who = _who_may_cancel() or " ".join(request.form.get("who", "").split())[:200]
    if not why or not who:
        flash(
            gettext("Say who you are and why the event is cancelled."),
            "amocrm-error",
        )
        return _back(page)
    # stored: in the site's language (AMOCRM_LOCALE), as the worker's reasons are
    reason = gettext(
        "Cancelled by %(who)s: %(why)s",
        locale=current_app.config.get("AMOCRM_LOCALE") or LOCALES[0],
        who=who,
        why=why,
    )
    if not cancel(state, event_id, reason):
        flash(
            gettext(
                "Event %(id)s was not cancelled: only a pending, retrying or "
                "failed event can be.",
                id=event_id,
            ),
            "amocrm-error",
        )
        return _back(page)
    flash(gettext("Event %(id)s is cancelled.", id=event_id), "amocrm-ok")
    return _back(page)


@bp.post("/events/<int:event_id>/release")
def event_release(event_id: int) -> BaseResponse:
    """Deliver an event held as spam, as ``flask amocrm release ID`` does: it is
    not judged spam again."""
    state = get_state()
    page = url_for("amocrm_admin.event", event_id=event_id)
    who = _who_may_cancel() or " ".join(request.form.get("who", "").split())[:200]
    if not who:
        flash(gettext("Say who you are to release the event."), "amocrm-error")
        return _back(page)
    with state.session() as session:
        if session.scalar(select(Event.id).where(Event.id == event_id)) is None:
            abort(404)
    if not release(state, event_id, who):
        flash(
            gettext(
                "Event %(id)s was not released: only an event held as spam can be.",
                id=event_id,
            ),
            "amocrm-error",
        )
        return _back(page)
    flash(
        gettext("Event %(id)s is released.", id=event_id) + " " + _handed_on(1),
        "amocrm-ok",
    )
    return _back(page)


@bp.post("/events/process")
def events_process() -> BaseResponse:
    """Deliver one batch of due events in this request, as the agent run
    (``flask amocrm process``) does, and say how they ended."""
    state = get_state()
    counts = process(state, next_batch_size(state))
    done = {k: v for k, v in counts.items() if k in STATUS_LABELS and v}
    if not done and not counts.get("spooled"):
        flash(gettext("No event was due."), "amocrm-ok")
    else:
        parts = [f"{gettext(STATUS_LABELS[k])}: {v}" for k, v in sorted(done.items())]
        if counts.get("spooled"):
            parts.append(gettext("stored from the spool: %(n)s", n=counts["spooled"]))
        flash(gettext("Due events processed.") + " " + ", ".join(parts), "amocrm-ok")
    return _back(url_for("amocrm_admin.events"))
