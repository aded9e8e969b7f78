"""The :class:`AmoCRM` extension: registration, per-app state and event capture."""

from __future__ import annotations

import json
import logging
import os
import threading
import time
import uuid
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from flask import Flask, after_this_request, current_app, has_request_context
from sqlalchemy import create_engine, insert
from sqlalchemy import event as sa_event
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session, sessionmaker

from . import context as context_mod
from .config import Settings, read_settings
from .models import PENDING, Event, metadata, utcnow
from .rules.schema import find_mail_event, validate_rules
from .signals import event_captured, form_submitted, mail_sent

if TYPE_CHECKING:
    from flask_sqlalchemy import SQLAlchemy
    from redis import Redis

log = logging.getLogger("flask_amocrm")

#: Mail header that names the mail event a Flask-Mail message stands for.
MAIL_EVENT_HEADER = "X-AmoCRM-Event"
#: Header on our own alert mails: such mails are never captured.
ALERT_HEADER = "X-AmoCRM-Alert"


class _State:
    """What Flask-AmoCRM keeps for one application (``app.extensions["amocrm"]``)."""

    def __init__(
        self, extension: AmoCRM, app: Flask, settings: Settings, db: SQLAlchemy | None
    ) -> None:
        self.extension = extension
        self.settings = settings
        self.db = db
        self.import_name = app.import_name
        self._engine: Engine | None = None
        self._engine_pid = 0
        self._session_factory: sessionmaker[Session] | None = None
        self._redis: dict[str, Redis] = {}
        self._redis_checked = 0.0
        self._redis_alive = False
        self._lock = threading.Lock()
        self.tables_ready = db is not None

    # -- database ---------------------------------------------------------------

    @property
    def engine(self) -> Engine:
        """The engine events live in; re-created after a fork (RQ work horses)."""
        pid = os.getpid()
        if self._engine is not None and self._engine_pid != pid:
            # A forked child must not share pooled connections with its parent.
            self._engine.dispose(close=False)
            self._engine_pid = pid
        if self._engine is None:
            with self._lock:
                if self._engine is None:
                    self._engine = self._make_engine()
                    self._engine_pid = pid
        return self._engine

    def _make_engine(self) -> Engine:
        if self.db is not None:
            return self.db.engine
        uri = self.settings.database_uri
        if uri.startswith("sqlite:///") and uri != "sqlite:///:memory:":
            os.makedirs(os.path.dirname(uri[len("sqlite:///") :]) or ".", exist_ok=True)
        engine = create_engine(uri, pool_pre_ping=not uri.startswith("sqlite"))
        if engine.dialect.name == "sqlite":
            sa_event.listen(engine, "connect", _sqlite_pragmas)
        return engine

    def session(self) -> Session:
        """A new ORM session on the events database (use it as a context manager)."""
        if self._session_factory is None or self._session_factory.kw["bind"] is not (
            self.engine
        ):
            self._session_factory = sessionmaker(self.engine, expire_on_commit=False)
        if not self.tables_ready:
            self.create_tables()
        return self._session_factory()

    def create_tables(self) -> None:
        """Create the ``amocrm_*`` tables that do not exist yet."""
        metadata.create_all(self.engine)
        self.tables_ready = True

    # -- redis ------------------------------------------------------------------

    def redis(self, *, for_worker: bool = False) -> Redis:
        """The Redis connection. Web processes get short timeouts so a dead Redis
        cannot hold a visitor's request; workers block on the queue and get none."""
        from redis import Redis

        if not self.settings.redis_url:
            raise RuntimeError("AMOCRM_REDIS_URL is not set: this feature needs Redis.")
        key = f"{os.getpid()}:{for_worker}"
        if key not in self._redis:
            options: dict[str, Any] = {"health_check_interval": 30}
            if not for_worker:
                options.update(socket_connect_timeout=0.5, socket_timeout=2)
            self._redis[key] = Redis.from_url(self.settings.redis_url, **options)
        return self._redis[key]

    def live_redis(self) -> Redis | None:
        """Redis for state shared between processes (locks, counters, caches), or
        ``None`` when it is not configured or does not answer: then the database
        keeps that state, because delivery must not stop when Redis does. Whether it
        answers is checked at most every few seconds."""
        if not self.settings.redis_url:
            return None
        now = time.monotonic()
        if now - self._redis_checked > _REDIS_CHECK_SECONDS:
            from redis.exceptions import RedisError

            try:
                self.redis().ping()
                self._redis_alive = True
            except RedisError as exc:
                if self._redis_alive or not self._redis_checked:
                    log.warning(
                        "Redis does not answer (%s); shared state goes to "
                        "the database until it is back",
                        type(exc).__name__,
                    )
                self._redis_alive = False
            self._redis_checked = now
        return self.redis() if self._redis_alive else None


#: How long a Redis health check is trusted, in seconds.
_REDIS_CHECK_SECONDS = 5.0


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    # WAL lets the web process write while a worker reads; FULL keeps a committed
    # event through a power loss (NORMAL could roll it back), see reliability.md.
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=FULL")
    cursor.execute("PRAGMA busy_timeout=10000")
    cursor.close()


def get_state(app: Flask | None = None) -> _State:
    """The Flask-AmoCRM state of ``app`` (default: the current app)."""
    app = app or current_app._get_current_object()  # type: ignore[attr-defined]
    try:
        return app.extensions["amocrm"]  # type: ignore[no-any-return]
    except KeyError:
        raise RuntimeError(
            "The current Flask app is not registered with Flask-AmoCRM. Did you forget "
            "to call 'AmoCRM(app)' or 'amocrm.init_app(app)'?"
        ) from None


class AmoCRM:
    """Feed amoCRM from a Flask site.

    ``amocrm = AmoCRM(app)``, or ``amocrm = AmoCRM()`` at import time and
    ``amocrm.init_app(app)`` in the app factory. Pass ``db=db`` to keep the events in
    the
    app's own Flask-SQLAlchemy database (tables prefixed ``amocrm_``); otherwise they
    live in ``AMOCRM_DATABASE_URI``, by default an SQLite file in the instance folder.
    """

    def __init__(
        self, app: Flask | None = None, *, db: SQLAlchemy | None = None
    ) -> None:
        self._db = db
        if app is not None:
            self.init_app(app)

    def init_app(self, app: Flask) -> None:
        """Register the extension on ``app``: read and check the configuration, connect
        the signals, add the ``flask amocrm`` commands."""
        if "amocrm" in app.extensions:
            raise RuntimeError(
                "A 'AmoCRM' instance has already been registered on this Flask app."
                " Import and use that instance instead."
            )
        settings = read_settings(app)
        validate_rules(settings.rules)
        if self._db is not None:
            for table in metadata.sorted_tables:
                if table.name not in self._db.metadata.tables:
                    table.to_metadata(self._db.metadata)
        app.extensions["amocrm"] = _State(self, app, settings, self._db)

        form_submitted.connect(_on_form_submitted, sender=app)
        mail_sent.connect(_on_mail_sent, sender=app)
        try:
            from flask_mail import email_dispatched
        except ImportError:
            pass
        else:
            email_dispatched.connect(_on_email_dispatched, sender=app)

        cookie, days = settings.utm_cookie, settings.utm_cookie_days
        app.after_request(
            lambda response: context_mod.remember_campaign(response, cookie, days)
        )

        from .cli import amocrm_cli

        app.cli.add_command(amocrm_cli)

        from .admin import register_admin

        register_admin(app, settings)

    def submit(
        self,
        form: str,
        data: Mapping[str, Any] | None,
        files: Mapping[str, Any] | None = None,
    ) -> Event | None:
        """Capture a submitted form, as sending :data:`form_submitted` does.

        Returns the stored event, or ``None`` if it could not be stored (the reason is
        logged). Never raises into the caller.
        """
        return capture("form", form, data, files=files)

    def get_event(self, event_id: int) -> Event | None:
        """The stored event with this id, in the current app's database."""
        with get_state().session() as session:
            return session.get(Event, event_id)


# -- capture -------------------------------------------------------------------------


def _on_form_submitted(app: Flask, **kwargs: Any) -> None:
    capture("form", kwargs.get("form"), kwargs.get("data"), files=kwargs.get("files"))


def _on_mail_sent(app: Flask, **kwargs: Any) -> None:
    message = kwargs.get("message")
    data = dict(kwargs.get("data") or {})
    if message is not None:
        data.setdefault("mail", _message_fields(message))
    capture("mail", kwargs.get("event"), data)


def _on_email_dispatched(app: Flask, **kwargs: Any) -> None:
    message = kwargs.get("message")
    try:
        headers = dict(getattr(message, "extra_headers", None) or {})
        if ALERT_HEADER in headers:
            return
        event = headers.get(MAIL_EVENT_HEADER) or find_mail_event(
            get_state(app).settings.rules, getattr(message, "subject", None)
        )
        if not event:
            return  # only mails tagged for amoCRM, or matching a rule, are captured
        data = {"mail": _message_fields(message)}
    except Exception:
        log.exception("Flask-AmoCRM could not read a dispatched mail")
        return
    capture("mail", event, data)


def _message_fields(message: Any) -> dict[str, Any]:
    sender = getattr(message, "sender", None)
    if isinstance(sender, tuple):
        sender = f"{sender[0]} <{sender[1]}>"
    return {
        "subject": getattr(message, "subject", None),
        "sender": sender,
        "recipients": [str(r) for r in getattr(message, "recipients", None) or []],
        "body": getattr(message, "body", None),
        "html": getattr(message, "html", None),
    }


def _plain(value: Any) -> Any:
    """Make submitted data JSON-safe: MultiDicts keep repeated keys as lists."""
    if hasattr(value, "to_dict") and hasattr(value, "getlist"):
        return {
            key: (vals[0] if len(vals) == 1 else vals)
            for key, vals in ((k, [_plain(v) for v in value.getlist(k)]) for k in value)
        }
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set):
        return [_plain(v) for v in value]
    if value is None or isinstance(value, bool | int | float):
        return value
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return str(value)


def _file_links(files: Mapping[str, Any] | None) -> list[dict[str, Any]]:
    """Uploads saved under ``AMOCRM_UPLOAD_FOLDER`` (see :mod:`.uploads`), and links
    a site passes itself, as ``[{"field", "name", "url"}]``; a file that was not
    saved has ``url: None`` and the reason in ``error``."""
    from .uploads import UploadRefused, save_upload

    links: list[dict[str, Any]] = []
    if not files:
        return links
    settings = get_state().settings
    items = files.items(multi=True) if hasattr(files, "getlist") else files.items()
    for field, value in items:
        if isinstance(value, str):
            url = value.strip()
            entry = {
                "field": str(field),
                "name": url.rsplit("/", 1)[-1][:200],
                "url": url[:2000],
            }
            if not url.lower().startswith(("http://", "https://")):
                entry.update(url=None, error="not an http(s) link")
            links.append(entry)
        elif value is not None and getattr(value, "filename", None):
            # The visitor's path is theirs: keep only the last part, as a label.
            name = str(value.filename).replace("\\", "/").rsplit("/", 1)[-1]
            entry = {"field": str(field), "name": name[:200], "url": None}
            if not settings.upload_folder or not settings.upload_url:
                entry["error"] = "uploads are not saved (AMOCRM_UPLOAD_FOLDER)"
            else:
                try:
                    saved = save_upload(
                        value,
                        folder=settings.upload_folder,
                        base_url=settings.upload_url,
                        max_size=settings.upload_max_size,
                        extensions=settings.upload_extensions,
                    )
                except UploadRefused as exc:
                    entry["error"] = str(exc)
                except OSError as exc:
                    log.exception("Flask-AmoCRM could not save an upload")
                    entry["error"] = f"could not be saved ({exc.strerror})"
                else:
                    entry.update(url=saved["url"], size=saved["size"])
            links.append(entry)
    return links


def capture(
    kind: str,
    source: Any,
    data: Any,
    *,
    files: Mapping[str, Any] | None = None,
    dedupe_key: str | None = None,
) -> Event | None:
    """Store an event and hand it to delivery. Never raises into the caller."""
    try:
        state = get_state()
    except RuntimeError:
        log.exception("Flask-AmoCRM: an event was sent but the app is not registered")
        return None
    record: dict[str, Any] = {}
    try:
        plain = _plain(data) if data is not None else {}
        if not isinstance(plain, dict):
            plain = {"value": plain}
        record = {
            "kind": kind,
            "source": str(source or "").strip()[:200] or "(unnamed)",
            "data": plain,
            "files": _file_links(files),
            "context": context_mod.capture(
                site_name=state.settings.site_name,
                cookie=state.settings.utm_cookie,
                data=plain,
            ),
            "dedupe_key": dedupe_key,
        }
        event = _store(state, record)
    except Exception:
        log.exception("Flask-AmoCRM could not store an event")
        _spool(record, kind, source)
        return None

    app = current_app._get_current_object()  # type: ignore[attr-defined]
    try:
        event_captured.send(app, event=event)
    except Exception:
        log.exception("A receiver of event_captured failed for event %s", event.id)
    _dispatch(state, event.id)
    return event


def _store(state: _State, record: dict[str, Any]) -> Event:
    """Insert the event row and commit; return it (detached, fully loaded).

    A Core ``INSERT`` on a pooled connection: the ORM's unit of work costs more than
    the insert itself on this hot path, where the visitor waits.
    """
    if not state.tables_ready:
        state.create_tables()
    now = utcnow()
    values = {
        **record,
        "uid": uuid.uuid4().hex,
        "status": PENDING,
        "attempts": 0,
        "remote": {},
        "log": [],
        "created_at": now,
        "updated_at": now,
    }
    with state.engine.begin() as connection:
        event_id = connection.execute(
            insert(Event).values(**values).returning(Event.id)
        ).scalar_one()
    return Event(id=event_id, **values)


def _spool(record: dict[str, Any], kind: str, source: Any) -> None:
    """Last resort when the database refuses the event: append it to a file that
    ``flask amocrm process`` loads, so the lead is not lost."""
    try:
        path = os.path.join(current_app.instance_path, "amocrm-spool.jsonl")
        os.makedirs(current_app.instance_path, exist_ok=True)
        line = json.dumps(record or {"kind": kind, "source": str(source)}, default=str)
        with open(path, "a", encoding="utf-8") as fp:
            fp.write(line + "\n")
        log.error("Flask-AmoCRM spooled the event to %s", path)
    except Exception:
        log.exception("Flask-AmoCRM could not spool the event either")


def _dispatch(state: _State, event_id: int) -> None:
    """Hand a stored event on: queue it (``rq``), or deliver it together with the other
    due events (``inline``: so retries happen on the next form even without cron). In
    ``deferred`` mode capture only stores; the agent delivers.

    In a request this happens once the response has gone to the visitor, so neither
    Redis nor amoCRM adds to their wait. If the process dies before that, the event is
    ``pending`` in the table and the sweeper takes it.
    """
    mode = state.settings.delivery
    if mode == "deferred":
        return
    app = current_app._get_current_object()  # type: ignore[attr-defined]

    def run() -> None:
        try:
            with app.app_context():
                if mode == "rq":
                    from .worker.queue import enqueue_event

                    enqueue_event(state, event_id)
                elif mode == "inline":
                    from .worker.deliver import deliver_events
                    from .worker.sweeper import due_event_ids

                    size = state.settings.batch_size
                    due = [i for i in due_event_ids(state, size) if i != event_id]
                    deliver_events([event_id, *due][:size])
        except Exception:
            log.exception(
                "Flask-AmoCRM stored event %s but could not hand it on; "
                "the sweeper or 'flask amocrm process' will deliver it",
                event_id,
            )

    if has_request_context():

        @after_this_request
        def _later(response: Any) -> Any:
            response.call_on_close(run)
            return response
    else:
        run()
