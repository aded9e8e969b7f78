"""The outbox: the only code that creates events, finds the due ones, claims them and
makes them due again.

The ``amocrm_events`` table is the truth; Redis is only a work cache. An event is
*due* when it is ``pending`` (never tried: Redis was down at capture, or restarted
empty), ``retrying`` past its ``next_attempt_at``, or ``processing`` past its lease
(its worker was killed). A worker *claims* due events with a lease in one atomic
``UPDATE ... WHERE ... RETURNING``, so two workers never hold the same event.

When the database refuses an event at capture, its record goes to the *spool*, a
JSON-lines file in the instance folder, which :func:`load_spool` stores later. The
spool is a journal: a line that cannot be read is set aside with its reason
(``amocrm-spool.rejected.jsonl``) and never stops the lines after it; a file a
stopped run left behind is loaded by the next one; a record carries its event's
``uid``, so a line stored twice is stored once.

What one event stores is bounded (:func:`bounded`): text values are cut at
``AMOCRM_MAX_VALUE_LENGTH``, fields past ``AMOCRM_MAX_EVENT_SIZE`` are left out,
nesting deeper than :data:`MAX_DEPTH` is kept as text, numbers JSON cannot hold
(``NaN``, ``Infinity``) are kept as strings and lone surrogates become U+FFFD; each
cut is noted in the event's log. The log itself is bounded (:func:`append_log`).
"""

from __future__ import annotations

import glob
import json
import logging
import math
import os
import re
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from sqlalchemy import (
    JSON,
    ColumnElement,
    Table,
    and_,
    func,
    insert,
    literal_column,
    not_,
    or_,
    select,
    true,
    update,
)
from sqlalchemy.engine import Dialect, Engine
from sqlalchemy.exc import DBAPIError, IntegrityError, OperationalError
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.orm import Session, configure_mappers
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.types import NullType

from .dedup import normalize_email, normalize_phone
from .i18n import N_, localize, site_locale
from .models import (
    CANCELLED,
    FAILED,
    IGNORED,
    PENDING,
    PROCESSING,
    RETRYING,
    SPAM,
    WAITING,
    Event,
    InboundChange,
    utcnow,
)
from .rules.schema import disabled_rules
from .state import CAPTURE_BUSY_MS, SQLITE_BUSY_MS, OwnConnections
from .vocabulary import DEFAULT_PHONE_REGION, fold

if TYPE_CHECKING:
    from .state import AppState

log = logging.getLogger("flask_amocrm")

#: How long a worker holds an event before others may take it over (a killed
#: worker). Longer than the RQ job timeout, after which RQ stops a job itself, so a
#: slow job never shares its event with a second worker.
LEASE = timedelta(minutes=15)
#: A pending event younger than this still has its own job on the way.
GRACE = timedelta(seconds=10)
#: The columns a new event may be given; the rest start as every event does.
FIELDS = (
    "uid",
    "kind",
    "source",
    "data",
    "files",
    "context",
    "dedupe_key",
    "log",
    "created_at",
    "search",
)
_FIELD_NAMES = frozenset(FIELDS)
#: The columns a new event is inserted with (:func:`new_values`), in this order.
NEW_COLUMNS = (
    "uid",
    "kind",
    "source",
    "data",
    "files",
    "context",
    "dedupe_key",
    "status",
    "attempts",
    "remote",
    "log",
    "created_at",
    "updated_at",
    "search",
)
#: The fields of a spooled record that are stored.
SPOOLED = ("uid", "kind", "source", "data", "files", "context", "dedupe_key", "log")
#: The spool's file name, in the app's instance folder.
SPOOL_NAME = "amocrm-spool.jsonl"
#: Where spool lines that cannot be read are kept, with the reason.
REJECTED_NAME = "amocrm-spool.rejected.jsonl"
#: Nesting deeper than this is stored as text.
MAX_DEPTH = 20
#: The most entries an event's log keeps, and the longest entry, in characters.
LOG_MAX_ENTRIES = 50
LOG_MAX_LENGTH = 2000
#: Longest dict key an event keeps, in characters.
_MAX_KEY = 200
#: Integers JSON may hold (Python refuses to write ones over 4,300 digits).
_MAX_INT_BITS = 13_000
_SURROGATE = re.compile("[\ud800-\udfff]")


# -- bounds ----------------------------------------------------------------------------


def clean_text(text: str) -> str:
    """``text`` with lone surrogates (which no database or JSON encoder takes)
    replaced by U+FFFD."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return _SURROGATE.sub("\ufffd", text)
    return text


def finite(value: Any) -> Any:
    """``value`` with ``NaN`` and the infinities as the strings JSON writes for them
    (PostgreSQL's ``json`` refuses them as numbers), and lone surrogates cleaned."""
    if isinstance(value, float) and not math.isfinite(value):
        return (
            "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
        )
    if isinstance(value, str):
        return clean_text(value)
    if isinstance(value, dict):
        return {clean_text(str(k)): finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [finite(v) for v in value]
    return value


def as_text(value: Any) -> str:
    """Any value as text, never raising (a last resort for what cannot be kept as
    it is)."""
    try:
        return json.dumps(value, ensure_ascii=False, default=str)
    except Exception:  # noqa: BLE001 - too deep, or a repr that raises
        try:
            return repr(value)
        except Exception:  # noqa: BLE001
            return "(a value that cannot be read)"


def bounded(
    value: Any,
    *,
    max_value: int,
    max_size: int,
    notes: list[str],
    name: str = "data",
) -> Any:
    """A JSON-safe copy of ``value`` within the caps: texts at most ``max_value``
    characters, about ``max_size`` characters in all (the fields past it left out),
    at most :data:`MAX_DEPTH` levels deep (deeper parts kept as text). Each cut adds
    a line to ``notes``."""
    budget = [max_size]

    def cut(text: str, path: str) -> str:
        text = clean_text(text)
        if len(text) > max_value:
            notes.append(
                N_(
                    "%(path)s cut from %(length)s to %(max)s characters",
                    path=path[:100],
                    length=len(text),
                    max=max_value,
                )
            )
            text = text[:max_value]
        budget[0] -= len(text) + 4
        return text

    def walk(item: Any, path: str, depth: int) -> Any:
        if isinstance(item, str):  # most values
            return cut(item, path)
        if item is None or isinstance(item, bool):
            budget[0] -= 5
            return item
        if isinstance(item, int):
            budget[0] -= 20
            if item.bit_length() > _MAX_INT_BITS:  # str() of it would raise
                notes.append(
                    N_("%(path)s is a number too long to store", path=path[:100])
                )
                return None
            return item
        if isinstance(item, float):
            budget[0] -= 20
            return finite(item)
        if isinstance(item, dict | list | tuple) and depth >= MAX_DEPTH:
            notes.append(
                N_(
                    "%(path)s nested deeper than %(depth)s levels: kept as text",
                    path=path[:100],
                    depth=MAX_DEPTH,
                )
            )
            return cut(as_text(item), path)
        if isinstance(item, dict):
            result: dict[str, Any] = {}
            items = list(item.items())
            for index, (key, sub) in enumerate(items):
                if budget[0] <= 0:
                    notes.append(
                        N_(
                            "%(path)s: %(count)s more field(s) left out, past "
                            "%(max)s characters",
                            path=path[:100],
                            count=len(items) - index,
                            max=max_size,
                        )
                    )
                    break
                text = clean_text(str(key))[:_MAX_KEY]
                budget[0] -= len(text) + 4
                result[text] = walk(sub, f"{path}.{text}", depth + 1)
            return result
        if isinstance(item, list | tuple):
            values: list[Any] = []
            for index, sub in enumerate(item):
                if budget[0] <= 0:
                    notes.append(
                        N_(
                            "%(path)s: %(count)s more value(s) left out, past "
                            "%(max)s characters",
                            path=path[:100],
                            count=len(item) - index,
                            max=max_size,
                        )
                    )
                    break
                values.append(walk(sub, f"{path}[{index}]", depth + 1))
            return values
        return cut(str(item), path)

    return walk(value, name, 0)


def cut_reason(text: str | None) -> str | None:
    """A failure reason as it is stored (``last_error``, an attempt's ``error``):
    one clean text of at most :data:`LOG_MAX_LENGTH` characters, in the site's
    language (:func:`~flask_amocrm.i18n.site_locale`)."""
    if text is None:
        return None
    text = clean_text(localize(text, site_locale()))
    return text if len(text) <= LOG_MAX_LENGTH else text[: LOG_MAX_LENGTH - 1] + "…"


def append_log(log: Iterable[str] | None, lines: Iterable[str]) -> list[str]:
    """``log`` with ``lines`` added: a line already there is not added again (a
    retry records its warnings once), each line is at most :data:`LOG_MAX_LENGTH`
    characters and the log at most :data:`LOG_MAX_ENTRIES` lines (the last one
    says how many were left out). Lines are written in the site's language
    (:func:`~flask_amocrm.i18n.site_locale`)."""
    result = list(log or [])
    full = len(result) >= LOG_MAX_ENTRIES
    seen = set(result)
    left_out = 0
    for line in lines:
        text = clean_text(localize(line, site_locale()))
        if len(text) > LOG_MAX_LENGTH:
            text = text[: LOG_MAX_LENGTH - 1] + "…"
        if text in seen:
            continue
        if full or len(result) >= LOG_MAX_ENTRIES - 1:
            left_out += 1
            continue
        seen.add(text)
        result.append(text)
    if left_out and not full:
        result.append(
            localize(
                N_("… %(count)s more log line(s) left out", count=left_out),
                site_locale(),
            )
        )
    return result


# -- creating --------------------------------------------------------------------------


def blank_context(site_name: str | None, **site: Any) -> dict[str, Any]:
    """The context of an event before anything is known of its visit: the keys rule
    templates read (``site``, ``utm``, ``utm_first``, ``page``, ``client``,
    ``cookies``), empty, and the time. ``site`` adds to the site's entry."""
    return {
        "site": {"name": site_name, "domain": None, "ip": None, **site},
        "utm": {},
        "utm_first": {},
        "page": {},
        "client": {},
        "cookies": {},
        "captured_at": int(time.time()),
    }


def new_values(**fields: Any) -> dict[str, Any]:
    """The column values of a new event: ``fields`` (see :data:`FIELDS`) over the
    values every new event starts with."""
    unknown = fields.keys() - _FIELD_NAMES
    if unknown:
        raise TypeError(f"not fields of a new event: {sorted(unknown)}")
    now = utcnow()
    values: dict[str, Any] = {
        "uid": fields.get("uid") or uuid.uuid4().hex,
        "kind": "form",
        "source": "(unnamed)",
        "data": {},
        "files": [],
        "context": {},
        "dedupe_key": None,
        "status": PENDING,
        "attempts": 0,
        "remote": {},
        "log": [],
        "created_at": now,
        "updated_at": now,
        "search": None,
    }
    values.update({k: v for k, v in fields.items() if v is not None})
    return values


def store(state: AppState, **fields: Any) -> Event:
    """Insert one event and commit; return it (detached, fully loaded).

    Capture's path, where the visitor waits: the insert compiled once per process
    (:class:`NewEventInsert`) runs on one of capture's own SQLite connections
    (:class:`~flask_amocrm.state.OwnConnections`), else on a pooled connection of
    :attr:`~flask_amocrm.state.AppState.capture_engine`. Building the statement, its
    cache key and an execution context per event cost more than the insert and the
    commit themselves.
    """
    state.ensure_tables()
    engine = state.capture_engine
    statement = state.local("new_event_insert", lambda: NewEventInsert(engine.dialect))
    values = new_values(**fields)
    if values["search"] is None:
        values["search"] = search_text(values["data"], state.settings.phone_region)
    own = state.own_connections()
    if own is not None:
        event_id = statement.run_own(own, values)
    else:
        event_id = statement.run(engine, values)
    return _stored_event(event_id, values)


#: The columns of an event that no new one has a value in.
_UNSET_COLUMNS = ("next_attempt_at", "locked_until", "last_error", "delivered_at")


def _stored_event(event_id: int, values: dict[str, Any]) -> Event:
    """The :class:`Event` just inserted, built as a query loads a row (its values
    put in place, not set one by one through the ORM's attribute events, which
    cost more than the insert's own Python): detached, every column loaded."""
    event: Event = Event.__mapper__.class_manager.new_instance()
    loaded = event.__dict__
    loaded.update(values)
    loaded["id"] = event_id
    for name in _UNSET_COLUMNS:
        loaded[name] = None
    return event


class NewEventInsert:
    """The ``INSERT ... RETURNING id`` of a new event, compiled once for a dialect:
    its SQL text, the order of its parameters and each column's bind processor (the
    JSON encoding, SQLite's date format), the ones SQLAlchemy would apply."""

    def __init__(self, dialect: Dialect) -> None:
        table = Event.__table__
        assert isinstance(table, Table)
        # The stored event is built without the ORM's constructor
        # (:func:`_stored_event`), which is what configures the mappers otherwise.
        configure_mappers()
        compiled = (
            insert(table)
            .returning(table.c.id)
            .compile(dialect=dialect, column_keys=list(NEW_COLUMNS))
        )
        self.dialect = dialect
        self.sql = compiled.string
        #: The same without ``RETURNING``, for SQLite's ``lastrowid``.
        self.sql_plain = (
            insert(table).compile(dialect=dialect, column_keys=list(NEW_COLUMNS)).string
        )
        #: Parameter names in their places (``?``), or ``None`` for named ones.
        self.order = tuple(compiled.positiontup or ()) if compiled.positional else None
        self.processors: list[tuple[str, Callable[[Any], Any]]] = []
        #: Each processed column's parameter for an empty ``{}`` or ``[]`` (most
        #: new events' ``files``, ``remote`` and ``log``), made once from values of
        #: its own (never an event's, which its owner may change later).
        self.empty: dict[tuple[str, type], Any] = {}
        for key in NEW_COLUMNS:
            process = table.c[key].type.dialect_impl(dialect).bind_processor(dialect)
            if process is not None:
                self.processors.append((key, process))
                if isinstance(table.c[key].type, JSON):
                    self.empty[key, dict] = process({})
                    self.empty[key, list] = process([])
        self.sqlite = dialect.name == "sqlite"

    def parameters(self, values: dict[str, Any]) -> Any:
        """The DBAPI parameters of ``values`` (see :func:`new_values`)."""
        params = {key: values[key] for key in NEW_COLUMNS}
        empty = self.empty
        last: Any = None
        last_processed: Any = None
        for key, process in self.processors:
            value = params[key]
            if not value and (key, value.__class__) in empty:
                params[key] = empty[key, value.__class__]
            elif value is last and value is not None:
                params[key] = last_processed  # updated_at is created_at
            else:
                last = value
                last_processed = params[key] = process(value)
        if self.order is None:
            return params
        return tuple(params[key] for key in self.order)

    def run(self, engine: Engine, values: dict[str, Any]) -> int:
        """Insert ``values`` and commit; return the new id. A pooled connection the
        server dropped (a restart) is thrown away and the insert made once more on a
        new one: a committed first try would make the second fail on the ``uid``, so
        an event is never stored twice."""
        params = self.parameters(values)
        for attempt in (1, 2):
            connection = engine.raw_connection()
            try:
                return self._execute(connection, params)
            except self.dialect.loaded_dbapi.Error as exc:
                dropped = self.dialect.is_disconnect(
                    exc, connection.dbapi_connection, None
                )
                if dropped:
                    connection.invalidate(exc)
                if not dropped or attempt == 2:
                    raise
            finally:
                connection.close()  # back to the pool, rolled back if unfinished
        raise AssertionError("unreachable")

    def run_own(self, own: OwnConnections, values: dict[str, Any]) -> int:
        """Insert ``values`` on one of capture's own connections and commit (on
        PostgreSQL it is in autocommit: the insert is its own transaction); return
        the new id. A connection the server dropped is closed and the insert made
        once more on a new one, as :meth:`run` does."""
        params = self.parameters(values)
        for attempt in (1, 2):
            connection = own.take()
            try:
                event_id = self._insert_own(connection, params)
            except self.dialect.loaded_dbapi.Error as exc:
                dropped = self.dialect.is_disconnect(exc, connection, None)
                own.discard(connection)
                if not dropped or attempt == 2:
                    raise
                continue
            except BaseException:
                own.discard(connection)
                raise
            own.give_back(connection)
            return event_id
        raise AssertionError("unreachable")

    def _insert_own(self, connection: Any, params: Any) -> int:
        cursor = connection.cursor()
        try:
            if self.sqlite:
                cursor.execute(self.sql_plain, params)
                event_id = cursor.lastrowid
                connection.commit()
            else:
                cursor.execute(self.sql, params)
                event_id = cursor.fetchone()[0]
        finally:
            cursor.close()
        return int(event_id)

    def _execute(self, connection: Any, params: Any) -> int:
        cursor = connection.cursor()
        try:
            if self.sqlite:
                # Wait at most CAPTURE_BUSY_MS for the write lock (then the insert
                # fails and capture spools the event); the pooled connection gets
                # its usual wait back afterwards.
                cursor.execute(f"PRAGMA busy_timeout={CAPTURE_BUSY_MS}")
            try:
                cursor.execute(self.sql, params)
                event_id = cursor.fetchone()[0]
                connection.commit()
            finally:
                if self.sqlite:
                    cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_MS}")
        finally:
            cursor.close()
        return int(event_id)


def add(session: Session, region: str = DEFAULT_PHONE_REGION, **fields: Any) -> Event:
    """Add a new event to ``session`` (the caller commits); ``region`` is the
    country of phones written without one (``AMOCRM_PHONE_REGION``)."""
    values = new_values(**fields)
    if values["search"] is None:
        values["search"] = search_text(values["data"], region)
    event = Event(**values)
    session.add(event)
    return event


def known_keys(session: Session, keys: Iterable[str]) -> set[str]:
    """Which of these ``dedupe_key`` values events already have."""
    wanted = list(keys)
    if not wanted:
        return set()
    return set(
        session.scalars(select(Event.dedupe_key).where(Event.dedupe_key.in_(wanted)))
    )


# -- searching -----------------------------------------------------------------------

#: Field names whose values are phones, names (besides values that look like them).
_PHONE_KEY = re.compile(r"phone|tel|mobile|whatsapp|телефон|моб", re.IGNORECASE)
_NAME_KEY = re.compile(r"name|fio|фио|имя|фамили|отчеств|contact|person", re.IGNORECASE)
_PHONE_LIKE = re.compile(r"\+?[\d\s().-]{7,24}")
_EMAIL = re.compile(r"[^\s<>\"',;:()\[\]]+@[^\s<>\"',;:()\[\]]+\.[^\s<>\"',;:()\[\]]+")
#: The longest value read for search terms, and the longest search text stored.
_SEARCH_VALUE = 200
_SEARCH_MAX = 1000


def contact_values(data: Any) -> list[tuple[str, str]]:
    """The names, phones and e-mails in an event's data, as written:
    ``[("name", "Ivan"), ("phone", "8 916 …"), ("email", "…")]``. Top-level fields
    and one level below (a mail's headers); a value is a phone by its field's name
    or its look, an e-mail by its look, a name by its field's name."""
    found: list[tuple[str, str]] = []
    if not isinstance(data, dict):
        return found
    pairs = list(data.items())
    for key, value in list(pairs):
        if isinstance(value, dict):
            pairs.extend((f"{key}.{k}", v) for k, v in value.items())
    for key, value in pairs:
        if isinstance(value, list) and value and not isinstance(value[0], dict):
            value = value[0]
        if value is None or isinstance(value, bool | dict | list):
            continue
        text = str(value).strip()
        if not text or len(text) > _SEARCH_VALUE:
            continue
        name = str(key)
        if "@" in text:
            found.extend(("email", m) for m in _EMAIL.findall(text))
        elif _PHONE_KEY.search(name) or _PHONE_LIKE.fullmatch(text):
            if any(c.isdigit() for c in text):
                found.append(("phone", text))
        elif _NAME_KEY.search(name):
            found.append(("name", text))
    return found


def search_text(data: Any, region: str = DEFAULT_PHONE_REGION) -> str | None:
    """What the admin's search finds an event by (``Event.search``): its phones
    normalised as duplicate control does (:func:`~flask_amocrm.dedup.normalize_phone`),
    its e-mails lower-cased and the words of its names case-folded, each term
    between spaces; ``None`` without any. Never raises: capture stores the event
    without it then. A NUL character is left out (no text column holds one:
    PostgreSQL refuses the insert)."""
    try:
        terms: list[str] = []
        for what, value in contact_values(data):
            text = value.replace("\x00", "")
            if what == "phone":
                phone = normalize_phone(text, region)
                terms.extend([phone] if phone else [])
            elif what == "email":
                email = normalize_email(text)
                terms.extend([email] if email else [])
            else:
                terms.extend(fold(text).split())
        unique = list(dict.fromkeys(terms))
    except Exception:  # noqa: BLE001 - search is a convenience; the event is not
        log.warning("Flask-AmoCRM could not index an event for search")
        return None
    if not unique:
        return None
    return f" {' '.join(unique)} "[:_SEARCH_MAX]


def search_filter(
    query: str, region: str = DEFAULT_PHONE_REGION, *, postgresql: bool = False
) -> ColumnElement[bool] | None:
    """The condition of events that :func:`search_text` makes findable by
    ``query``: a phone in any spelling (the whole number, or a part of its digits),
    an e-mail or a part of it (any case), or the beginnings of name words. ``None``
    for an empty query. Events stored without search terms are never found.

    The condition is a ``LIKE`` on ``Event.search``; on PostgreSQL (``postgresql``)
    a whole phone, a whole e-mail and name words are first looked up in the
    ``ix_amocrm_events_search`` index (the same terms as words of a text search),
    so 100,000 events are not read one by one. A part of a phone's digits or of an
    e-mail is found by the ``LIKE`` alone."""
    text = query.strip()
    if not text:
        return None
    column = Event.search
    if "@" in text:
        email = text.lower()
        like = column.contains(email, autoescape=True)
        return _indexed(like, email, postgresql=postgresql and _whole_email(email))
    digits = "".join(c for c in text if c.isdigit())
    if digits and not any(c.isalpha() for c in text):
        phone = normalize_phone(text, region)
        if phone and phone.startswith("+") and len(digits) >= 7:
            like = column.contains(f" {phone} ", autoescape=True)
            return _indexed(like, phone, postgresql=postgresql)
        return column.contains(digits, autoescape=True)
    words = fold(text).split()
    return and_(
        *(
            _indexed(
                column.contains(f" {word}", autoescape=True),
                word,
                postgresql=postgresql and any(c.isalnum() for c in word),
                prefix=True,
            )
            for word in words
        )
    )


def _whole_email(text: str) -> bool:
    return _EMAIL.fullmatch(text) is not None


def _indexed(
    like: ColumnElement[bool], term: str, *, postgresql: bool, prefix: bool = False
) -> ColumnElement[bool]:
    """``like``, after a lookup of ``term`` in ``ix_amocrm_events_search`` on
    PostgreSQL (the ``LIKE`` keeps the meaning exactly that of SQLite)."""
    if not postgresql:
        return like
    # to_tsvector('simple', search): the expression of the index, written the same
    vector = func.to_tsvector(literal_column("'simple'"), Event.search)
    quoted = func.quote_literal(term)
    words = func.to_tsquery(
        literal_column("'simple'"), quoted.concat(":*") if prefix else quoted
    )
    return and_(vector.op("@@")(words), like)


#: The statuses an event can be cancelled in (it is waiting or has failed).
CANCELLABLE = (PENDING, RETRYING, FAILED)
#: The statuses an event can be made due again in (``flask amocrm retry``, the
#: admin's retry): never ``delivered`` (its signals and hooks ran once) nor
#: ``processing`` (a worker holds it); a hook's cancel is asked again, and a spam
#: event is judged again (docs/spam.md; ``release`` delivers it unjudged).
RETRYABLE = (FAILED, IGNORED, CANCELLED, RETRYING, PENDING, SPAM)


def cancel(state: AppState, event_id: int, reason: str) -> bool:
    """End an event that is waiting (``pending``, ``retrying``, ``failed``) as
    ``ignored`` with ``reason`` as its last error and in its log; ``False`` when it
    is not waiting (delivered, held by a worker, gone)."""
    reason = cut_reason(reason) or ""
    with state.session() as session:
        event = session.scalar(
            select(Event).where(Event.id == event_id, Event.status.in_(CANCELLABLE))
        )
        if event is None:
            return False
        done = session.execute(
            update(Event)
            .where(Event.id == event_id, Event.status.in_(CANCELLABLE))
            .values(
                status=IGNORED,
                last_error=reason,
                next_attempt_at=None,
                locked_until=None,
                log=append_log(event.log, [reason]),
            )
        )
        session.commit()
    return bool(done.rowcount)  # type: ignore[attr-defined]


# -- switches --------------------------------------------------------------------------


def on_hold(state: AppState) -> ColumnElement[bool] | None:
    """The condition of the events whose delivery is switched off now
    (``AMOCRM_ENABLED = False``: all of them; a rule's ``enabled = false``: that
    rule's), or ``None`` when nothing is. Held events are kept as they are: never
    claimed, so never tried, failed or counted as an attempt, until switched on."""
    if not state.settings.enabled:
        return true()
    off = disabled_rules(state.settings.rules)
    if not off:
        return None
    return or_(
        *(and_(Event.kind == kind, Event.source == source) for kind, source, _ in off)
    )


@dataclass(frozen=True)
class SwitchedOff:
    """Something switched off, for ``flask amocrm status`` and the admin pages."""

    #: ``AMOCRM_ENABLED = False``, or the rule (``forms.callback``).
    what: str
    #: How many events wait for it to be switched on again.
    waiting: int


def switched_off(state: AppState) -> list[SwitchedOff]:
    """What is switched off now and how many events wait because of it."""
    waiting = Event.status.in_((PENDING, RETRYING, PROCESSING))
    out: list[SwitchedOff] = []
    with state.session() as session:
        if not state.settings.enabled:
            count = session.scalar(select(func.count()).where(waiting))
            out.append(SwitchedOff("AMOCRM_ENABLED = False", int(count or 0)))
        for kind, source, where in disabled_rules(state.settings.rules):
            count = session.scalar(
                select(func.count()).where(
                    waiting, Event.kind == kind, Event.source == source
                )
            )
            out.append(SwitchedOff(f"{where} (enabled = false)", int(count or 0)))
    return out


# -- due events ------------------------------------------------------------------------


class Waiting(ColumnElement[Any]):
    """``amocrm_events.status IN ('pending', 'retrying', 'processing')``, as the
    partial index ``ix_amocrm_events_waiting`` has it (PostgreSQL reads that index
    for it). On SQLite it is wrapped in ``unlikely()``: its statistics cannot tell
    that few events wait among many delivered, and would have it walk the whole
    table; told the condition is rare, it reads the waiting events by status."""

    # no Boolean type: SQLAlchemy would compare it with 1 on SQLite
    type = NullType()
    inherit_cache = True


def _waiting_sql(compiler: SQLCompiler, **kw: Any) -> str:
    listed: list[ColumnElement[Any]] = [
        literal_column(f"'{status}'") for status in WAITING
    ]
    return str(compiler.process(Event.status.in_(listed), **kw))


@compiles(Waiting)
def _compile_waiting(element: Waiting, compiler: SQLCompiler, **kw: Any) -> str:
    return _waiting_sql(compiler, **kw)


@compiles(Waiting, "sqlite")
def _compile_waiting_sqlite(element: Waiting, compiler: SQLCompiler, **kw: Any) -> str:
    return f"unlikely({_waiting_sql(compiler, **kw)})"


def due(now: datetime, hold: ColumnElement[bool] | None = None) -> ColumnElement[bool]:
    """The condition of an event that may be claimed at ``now``; ``hold``
    (:func:`on_hold`) leaves out the events whose delivery is switched off. It
    starts with the condition of ``ix_amocrm_events_waiting``, word for word, so
    PostgreSQL reads that partial index and never the delivered events."""
    ready = and_(
        Waiting(),
        or_(
            Event.status == PENDING,
            and_(
                Event.status == RETRYING,
                or_(Event.next_attempt_at.is_(None), Event.next_attempt_at <= now),
            ),
            and_(Event.status == PROCESSING, Event.locked_until < now),
        ),
    )
    return ready if hold is None else and_(ready, not_(hold))


def oldest_first(state: AppState) -> ColumnElement[int]:
    """The order of due events, oldest first, as each database reads it cheaply.
    SQLite may satisfy ``ORDER BY id`` by walking the table in rowid order, reading
    every delivered event before the waiting ones (the newest); ``id + 0`` is no
    rowid to its planner: it reads the waiting events by status and sorts those
    (:class:`Waiting`). PostgreSQL reads them in id order from the partial index
    ``ix_amocrm_events_waiting``."""
    column: ColumnElement[int] = Event.id.expression
    return column if state.engine.dialect.name == "postgresql" else column + 0


def due_ids(
    state: AppState, limit: int | None = None, *, include_fresh: bool = True
) -> list[int]:
    """Ids of the events that are due, oldest first. ``include_fresh=False`` leaves
    out pending events so young that their own job is still on the way."""
    now = utcnow()
    query = (
        select(Event.id).where(due(now, on_hold(state))).order_by(oldest_first(state))
    )
    if not include_fresh:
        query = query.where(Event.created_at < now - GRACE)
    if limit is not None:
        query = query.limit(limit)
    with state.session() as session:
        return list(session.scalars(query))


def batch_with(state: AppState, event_id: int) -> list[int]:
    """``event_id`` and other due events, up to ``AMOCRM_BATCH_SIZE`` in all: a burst
    delivered together shares its API calls."""
    size = state.settings.batch_size
    others = [i for i in due_ids(state, size) if i != event_id]
    return [event_id, *others][:size]


def lease_expired(state: AppState) -> set[int]:
    """Events whose worker stopped holding them without finishing (killed)."""
    with state.session() as session:
        return set(
            session.scalars(
                select(Event.id).where(
                    Event.status == PROCESSING, Event.locked_until < utcnow()
                )
            )
        )


def claim(state: AppState, event_ids: list[int]) -> list[int]:
    """Take the events that are due and that nobody else holds, in one statement;
    return their ids. Two workers claiming the same ids split them, never share."""
    return claim_rows(
        state, Event, event_ids, PROCESSING, lambda now: due(now, on_hold(state))
    )


def claim_rows(
    state: AppState,
    model: type[Event] | type[InboundChange],
    ids: list[int],
    status: str,
    ready: Callable[[datetime], ColumnElement[bool]],
) -> list[int]:
    """Take the rows of ``model`` among ``ids`` that are ``ready`` at now, in one
    statement: give them ``status``, hold them for :data:`LEASE` and count an
    attempt. Returns their ids in the order of ``ids``.

    On PostgreSQL the rows are chosen ``FOR UPDATE SKIP LOCKED``: a row another
    worker is claiming at this moment is left to it, not waited for (that worker
    takes it, or it stays due). SQLite has one writer at a time and no row locks;
    the clause is left out there."""
    if not ids:
        return []
    now = utcnow()
    free = (
        select(model.id)
        .where(model.id.in_(ids), ready(now))
        .with_for_update(skip_locked=True)
    )
    with state.session() as session:
        claimed = set(
            session.scalars(
                update(model)
                .where(model.id.in_(free), ready(now))
                .values(
                    status=status,
                    locked_until=now + LEASE,
                    attempts=model.attempts + 1,
                )
                .returning(model.id)
            )
        )
        session.commit()
    return [i for i in ids if i in claimed]


def renew_leases(
    state: AppState, leases: dict[int, datetime | None]
) -> dict[int, datetime]:
    """Hold on to claimed events for another :data:`LEASE`: ``leases`` maps each
    event to the ``locked_until`` its claim gave it. An event whose lease ran out
    and that another worker claimed since has another ``locked_until`` and is left
    to it. Returns the events still held, with their new ``locked_until``."""
    by_lease: dict[datetime, list[int]] = {}
    for event_id, until in leases.items():
        if until is not None:
            by_lease.setdefault(until, []).append(event_id)
    if not by_lease:
        return {}
    renewed = utcnow() + LEASE
    held: dict[int, datetime] = {}
    with state.engine.begin() as conn:
        for until, ids in by_lease.items():
            # Locked in id order first, the order in which the delivering thread's
            # progress saves update them: no deadlock between the two.
            conn.execute(
                select(Event.id)
                .where(Event.id.in_(ids))
                .order_by(Event.id)
                .with_for_update()
            ).all()
            for (event_id,) in conn.execute(
                update(Event)
                .where(
                    Event.id.in_(ids),
                    Event.status == PROCESSING,
                    Event.locked_until == until,
                )
                .values(locked_until=renewed)
                .returning(Event.id)
            ):
                held[event_id] = renewed
    return held


def claim_due(state: AppState, limit: int) -> list[int]:
    """Take up to ``limit`` of the oldest due events that nobody else holds, in one
    statement; return their ids, oldest first. Workers claiming at the same time
    get different events (PostgreSQL skips the rows another claim has locked;
    SQLite runs one write at a time), so a batch is never split between them."""
    if limit <= 0:
        return []
    now = utcnow()
    ready = due(now, on_hold(state))
    oldest = (
        select(Event.id)
        .where(ready)
        .order_by(oldest_first(state))
        .limit(limit)
        .with_for_update(skip_locked=True)
    )
    with state.session() as session:
        claimed = sorted(
            session.scalars(
                update(Event)
                .where(Event.id.in_(oldest), ready)
                .values(
                    status=PROCESSING,
                    locked_until=now + LEASE,
                    attempts=Event.attempts + 1,
                )
                .returning(Event.id)
                .execution_options(synchronize_session=False)
            )
        )
        session.commit()
    return claimed


def make_due(
    state: AppState,
    *,
    ids: Iterable[int] = (),
    status: str | None = None,
) -> list[int]:
    """Make events due now (``flask amocrm retry``): the events ``ids`` that are
    in a :data:`RETRYABLE` status, or every event in ``status`` (``failed`` or
    ``ignored``). Returns their ids; an id that does not exist, or whose event is
    delivered or held by a worker, is left out."""
    if status is not None and status not in (FAILED, IGNORED):
        raise ValueError(f"only failed or ignored events are retried, not {status!r}")
    with state.session() as session:
        query = select(Event)
        query = (
            query.where(Event.status == status)
            if status is not None
            else query.where(Event.id.in_(list(ids)), Event.status.in_(RETRYABLE))
        )
        events = list(session.scalars(query))
        for event in events:
            event.status = RETRYING
            event.next_attempt_at = utcnow()
            event.locked_until = None
        session.commit()
        return [e.id for e in events]


# -- the spool -------------------------------------------------------------------------


def spool_path(instance_path: str) -> str:
    """Where events go that the database refused."""
    return os.path.join(instance_path, SPOOL_NAME)


def spool(instance_path: str, record: dict[str, Any]) -> str:
    """Append an event the database refused to the spool; return the file's path.
    The line is strict JSON (no ``NaN``), written in one call."""
    os.makedirs(instance_path, exist_ok=True)
    path = spool_path(instance_path)
    line = json.dumps(finite(record), default=str, allow_nan=False)
    with open(path, "a", encoding="utf-8") as fp:
        fp.write(line + "\n")
    return path


def load_spool(state: AppState, instance_path: str) -> int:
    """Store the events that were spooled to a file when the database refused them;
    return how many.

    The spool is taken under a new name first (new events go to a new spool), then
    read line by line: a line that is not a record is appended to
    :data:`REJECTED_NAME` with its line number and the reason; when the database
    refuses to store, the lines not yet stored go back to the spool for the next
    run. Files a stopped run left (``*.loading``) are loaded too. A record whose
    ``uid`` is already stored is not stored again."""
    path = spool_path(instance_path)
    loaded = 0
    for working in _take_spool_files(path):
        loaded += _load_file(state, instance_path, working)
    return loaded


def _take_spool_files(path: str) -> list[str]:
    """The spool files this run loads: the spool (renamed) and leftovers."""
    taken = []
    if os.path.exists(path):
        working = f"{path}.{os.getpid()}.{uuid.uuid4().hex[:8]}.loading"
        try:
            os.replace(path, working)
        except FileNotFoundError:
            pass  # another run took it
        else:
            taken.append(working)
    for leftover in sorted(glob.glob(glob.escape(path) + ".*.loading")):
        if leftover in taken or _loading_elsewhere(leftover):
            continue
        # a new name of our own, so a second run never takes the same file
        mine = f"{path}.{os.getpid()}.{uuid.uuid4().hex[:8]}.loading"
        try:
            os.replace(leftover, mine)
        except FileNotFoundError:
            continue
        taken.append(mine)
    return taken


def _loading_elsewhere(name: str) -> bool:
    """Whether another live process is loading this file (its pid is in the name)."""
    match = re.search(r"\.(\d+)(?:\.[0-9a-f]{8})?\.loading$", name)
    if match is None or int(match.group(1)) == os.getpid():
        return False
    try:
        os.kill(int(match.group(1)), 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True  # alive, another user's
    return True


def _load_file(state: AppState, instance_path: str, working: str) -> int:
    loaded = 0
    keep: list[str] = []
    rejected: list[dict[str, Any]] = []
    with open(working, encoding="utf-8", errors="replace") as fp:
        for number, line in enumerate(fp, 1):
            if not line.strip():
                continue
            if keep:  # the database refused: keep the rest for the next run
                keep.append(line)
                continue
            try:
                record = _read_record(line)
            except Exception as exc:  # noqa: BLE001 - any line, any reason
                rejected.append(
                    {"line": number, "reason": _reason(exc), "text": line.rstrip("\n")}
                )
                continue
            try:
                loaded += _store_spooled(state, record)
            except OperationalError as exc:  # the database is down or locked
                log.warning(
                    "Flask-AmoCRM could not store spooled events (%s); they stay "
                    "in the spool",
                    type(exc).__name__,
                )
                keep.append(line)
            except IntegrityError as exc:
                if not _stored(state, record):  # else: another run stored it
                    rejected.append(
                        {"line": number, "reason": _reason(exc), "text": line.rstrip()}
                    )
            except (DBAPIError, ValueError) as exc:  # this record's own values
                rejected.append(
                    {"line": number, "reason": _reason(exc), "text": line.rstrip()}
                )
    if rejected:
        target = os.path.join(instance_path, REJECTED_NAME)
        with open(target, "a", encoding="utf-8") as out:
            for entry in rejected:
                out.write(json.dumps(entry, ensure_ascii=False) + "\n")
        log.error(
            "Flask-AmoCRM set %d spooled line(s) aside in %s: they could not be read",
            len(rejected),
            target,
        )
    if keep:
        with open(spool_path(instance_path), "a", encoding="utf-8") as out:
            out.writelines(
                line if line.endswith("\n") else line + "\n" for line in keep
            )
    try:
        os.remove(working)
    except FileNotFoundError:
        pass
    return loaded


def _stored(state: AppState, fields: dict[str, Any]) -> bool:
    uid = fields.get("uid")
    if not uid:
        return False
    with state.session() as session:
        return session.scalar(select(Event.id).where(Event.uid == uid)) is not None


def _read_record(line: str) -> dict[str, Any]:
    record = json.loads(line)
    if not isinstance(record, dict):
        raise ValueError(f"a record is a JSON object, not {type(record).__name__}")
    fields = {k: v for k, v in finite(record).items() if k in SPOOLED}
    for key in ("data", "context"):
        if not isinstance(fields.get(key, {}), dict):
            fields[key] = {"value": fields[key]}
    if not isinstance(fields.get("files", []), list):
        fields["files"] = []
    if not isinstance(fields.get("log", []), list):
        fields["log"] = []
    for key in ("uid", "kind", "source", "dedupe_key"):
        if key in fields and fields[key] is not None:
            fields[key] = str(fields[key])
    fields["source"] = (fields.get("source") or "(unnamed)")[:200]
    fields["kind"] = fields.get("kind") if fields.get("kind") == "mail" else "form"
    uid = fields.get("uid")
    if uid is not None and (len(uid) != 32 or not uid.isalnum()):
        fields.pop("uid")
    if fields.get("dedupe_key") is not None:
        fields["dedupe_key"] = fields["dedupe_key"][:200]
    return fields


def _store_spooled(state: AppState, fields: dict[str, Any]) -> int:
    """Store one spooled record; 0 when its event is stored already."""
    with state.session() as session:
        uid = fields.get("uid")
        if uid and session.scalar(select(Event.id).where(Event.uid == uid)):
            return 0
        key = fields.get("dedupe_key")
        if key and known_keys(session, [key]):
            return 0
        add(session, state.settings.phone_region, **fields)
        session.commit()
    return 1


def _reason(exc: BaseException) -> str:
    text = str(exc).splitlines()[0] if str(exc) else ""
    return f"{type(exc).__name__}: {text[:300]}"
