"""What Flask-AmoCRM keeps for one application: settings, the events database, Redis,
and the objects each process builds once (the amoCRM client, its rate limiter, the
account's metadata).

:class:`AppState` lives in ``app.extensions["amocrm"]``; :func:`get_state` finds it.
It knows nothing of capture, delivery or amoCRM: the modules above it put their
per-process objects in it through :meth:`AppState.local`, so nothing is kept in module
globals and two apps in one process never share a client.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import weakref
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

from flask import Flask, current_app
from sqlalchemy import create_engine
from sqlalchemy import event as sa_event
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.pool import QueuePool

from .config import Settings
from .hooks import Hooks
from .migrations import ensure_tables

if TYPE_CHECKING:
    from flask_sqlalchemy import SQLAlchemy
    from redis import Redis

log = logging.getLogger("flask_amocrm")

T = TypeVar("T")

#: How long, in milliseconds, an SQLite connection waits for another writer's lock
#: (capture waits much less: :data:`CAPTURE_BUSY_MS`).
SQLITE_BUSY_MS = 10000
#: How long, in milliseconds, storing an event at capture waits for SQLite's write
#: lock before it gives up and spools the event: the visitor is waiting.
CAPTURE_BUSY_MS = 200

#: How many of capture's own SQLite connections (:class:`OwnConnections`) are kept
#: open between captures, per process.
OWN_IDLE = 8

#: How long a Redis health check is trusted, in seconds.
REDIS_CHECK_SECONDS = 5.0


class AppState:
    """What Flask-AmoCRM keeps for one application (``app.extensions["amocrm"]``)."""

    def __init__(
        self,
        app: Flask,
        settings: Settings,
        db: SQLAlchemy | None = None,
        *,
        extension: Any = None,
        hooks: Hooks | None = None,
    ) -> None:
        #: The :class:`~flask_amocrm.AmoCRM` instance registered on the app.
        self.extension = extension
        #: The hooks registered on it (``@amocrm.before_push`` ...), read by the
        #: worker and the amoCRM client.
        self.hooks = hooks if hooks is not None else Hooks()
        self.settings = settings
        self.db = db
        self.import_name = app.import_name
        self._app = weakref.ref(app)
        self._engine: Engine | None = None
        self._engine_pid = 0
        self._capture_engine: Engine | None = None
        self._capture_engine_pid = 0
        self._own_connections: OwnConnections | None = None
        self._session_factory: sessionmaker[Session] | None = None
        self._redis: dict[str, Redis] = {}
        self._redis_checked = 0.0
        self._redis_alive = False
        self._lock = threading.RLock()
        self._tables_lock = threading.Lock()
        self._local: dict[str, tuple[int, Any]] = {}
        self.tables_ready = db is not None
        #: Who may use the admin pages: ``AMOCRM_ADMIN_AUTH`` or the function
        #: decorated with ``@amocrm.admin_auth`` (``None``: the pages are off).
        self.admin_auth: Callable[[], Any] | None = settings.admin_auth

    @property
    def app(self) -> Flask:
        """The application (held weakly: the state never keeps an app alive)."""
        app = self._app()
        if app is None:
            raise RuntimeError("The Flask app of this Flask-AmoCRM state is gone.")
        return app

    # -- per-process objects ---------------------------------------------------------

    def local(self, name: str, factory: Callable[[], T]) -> T:
        """The object ``name`` of this process, built by ``factory`` on first use.

        A forked child (an RQ work horse) builds its own: sockets, locks and pools
        are never shared with the parent."""
        pid = os.getpid()
        held = self._local.get(name)
        if held is not None and held[0] == pid:
            return held[1]  # type: ignore[no-any-return]
        with self._lock:
            held = self._local.get(name)
            if held is None or held[0] != pid:
                held = (pid, factory())
                self._local[name] = held
        found: T = held[1]
        return found

    def forget_local(self, name: str) -> None:
        """Drop the per-process object ``name``; the next use builds it again."""
        with self._lock:
            self._local.pop(name, None)

    # -- database --------------------------------------------------------------------

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

    @property
    def capture_engine(self) -> Engine:
        """The engine capture stores new events with, where the visitor waits.

        The events' own database, with two round trips per form less: no health
        check on every checkout (capture stores again once on a fresh connection
        when a pooled one turns out to be dropped), and autocommit, so the one
        ``INSERT`` is its own durable transaction without a ``COMMIT`` of its own.
        It is :attr:`engine` itself on SQLite (no round trips to save) and when the
        app's Flask-SQLAlchemy engine is used (its settings are the app's)."""
        engine = self.engine
        if self.db is not None or engine.dialect.name == "sqlite":
            return engine
        pid = os.getpid()
        if self._capture_engine is not None and self._capture_engine_pid != pid:
            self._capture_engine.dispose(close=False)
            self._capture_engine_pid = pid
        if self._capture_engine is None:
            with self._lock:
                if self._capture_engine is None:
                    self._capture_engine = self._make_engine(capture=True)
                    self._capture_engine_pid = pid
        return self._capture_engine

    def own_connections(self) -> OwnConnections | None:
        """Capture's own connections (:class:`OwnConnections`), made by
        :attr:`capture_engine` (on PostgreSQL: in autocommit), when it is the
        extension's own engine; ``None`` for the app's Flask-SQLAlchemy engine and
        an in-memory SQLite database: capture takes a pooled connection then."""
        if self.db is not None:
            return None
        engine = self.capture_engine
        own = self._own_connections
        if own is not None and own.engine is engine and own.pid == os.getpid():
            return own
        if engine.dialect.name == "sqlite" and not isinstance(engine.pool, QueuePool):
            return None  # in memory: the pool's one connection is the database
        with self._lock:
            own = self._own_connections
            if own is not None and own.pid != os.getpid():
                # A forked child never uses nor closes its parent's connections
                # (closing one could let SQLite think the database unused).
                _INHERITED.append(own)
                own = None
            if own is None or own.engine is not engine:
                own = self._own_connections = OwnConnections(engine)
        return own

    def _make_engine(self, *, capture: bool = False) -> Engine:
        if self.db is not None:
            return self.db.engine
        uri = self.settings.database_uri
        if uri.startswith("sqlite:///") and uri != "sqlite:///:memory:":
            os.makedirs(os.path.dirname(uri[len("sqlite:///") :]) or ".", exist_ok=True)
        options: dict[str, Any] = (
            {"isolation_level": "AUTOCOMMIT"}
            if capture
            else {"pool_pre_ping": not uri.startswith("sqlite")}
        )
        engine = create_engine(
            uri,
            # An error's message never quotes the visitor's data (issue 11, item 16).
            hide_parameters=True,
            **options,
        )
        if engine.dialect.name == "sqlite":
            sa_event.listen(engine, "connect", _sqlite_pragmas)
        return engine

    def dispose(self) -> None:
        """Close the pooled connections of the engines this state made (not those of
        the app's Flask-SQLAlchemy engine); the next use opens new ones."""
        if self.db is not None:
            return
        if self._own_connections is not None:
            self._own_connections.close()
            self._own_connections = None
        for engine in (self._engine, self._capture_engine):
            if engine is not None:
                engine.dispose()

    def session(self) -> Session:
        """A new ORM session on the events database (use it as a context manager)."""
        engine = self.engine
        factory = self._session_factory
        if factory is None or factory.kw["bind"] is not engine:
            factory = self._session_factory = sessionmaker(
                engine, expire_on_commit=False
            )
        self.ensure_tables()
        return factory()

    def ensure_tables(self) -> None:
        """:meth:`create_tables` once, on first use: threads that start together
        (a worker's, a web process's first forms) wait for the one that makes them."""
        if not self.tables_ready:
            with self._tables_lock:
                if not self.tables_ready:
                    self.create_tables()

    def create_tables(self) -> None:
        """Create the ``amocrm_*`` tables that do not exist yet, add what an earlier
        version's tables lack, and stamp them with the migrations' head revision
        where Alembic is installed (:func:`~flask_amocrm.migrations.ensure_tables`)."""
        with self.engine.begin() as connection:
            added = ensure_tables(connection)
        if added:
            log.info("Flask-AmoCRM added to its tables: %s", ", ".join(added))
        self.tables_ready = True

    # -- redis -----------------------------------------------------------------------

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
        answers is checked at most every :data:`REDIS_CHECK_SECONDS`."""
        if not self.settings.redis_url:
            return None
        now = time.monotonic()
        if now - self._redis_checked > REDIS_CHECK_SECONDS:
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

    def redis_failed(self) -> None:
        """A Redis call failed: treat Redis as down until the next health check."""
        self._redis_alive = False
        self._redis_checked = time.monotonic()


class OwnConnections:
    """The DBAPI connections capture stores new events with, kept out of the
    engine's pool: taking one is a ``list.pop`` (the pool's checkout and checkin,
    its locks and its reset on return, cost a visitor about as much as the insert's
    own Python). On SQLite each waits at most :data:`CAPTURE_BUSY_MS` for the write
    lock for good, so no statement sets and restores it around every insert.

    A connection is opened by the engine (SQLite's pragmas: WAL,
    ``synchronous=FULL``; PostgreSQL's autocommit) and taken out of its pool; there
    are never more than captures running at once, and at most :data:`OWN_IDLE` are
    kept between them. One that failed is closed, never reused. :meth:`close`
    closes them (:meth:`AppState.dispose`)."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.pid = os.getpid()
        self.sqlite = engine.dialect.name == "sqlite"
        self._idle: list[Any] = []
        self._closed = False

    def take(self) -> Any:
        """A DBAPI connection, ready for one insert and its commit."""
        try:
            return self._idle.pop()  # atomic: threads never get the same one
        except IndexError:
            pass
        pooled = self.engine.raw_connection()
        pooled.detach()  # the pool forgets it; it is ours to close
        connection = pooled.dbapi_connection
        assert connection is not None
        if self.sqlite:
            cursor = connection.cursor()
            try:
                cursor.execute(f"PRAGMA busy_timeout={CAPTURE_BUSY_MS}")
            finally:
                cursor.close()
        return connection

    def give_back(self, connection: Any) -> None:
        """Keep ``connection`` (committed) for the next capture."""
        if self._closed or len(self._idle) >= OWN_IDLE:
            connection.close()
        else:
            self._idle.append(connection)

    def discard(self, connection: Any) -> None:
        """Close a connection whose insert failed: its state is not known (nor
        whether the server still holds it: what closing it says is not news)."""
        for end in (connection.rollback, connection.close):
            try:
                end()
            except Exception:  # noqa: BLE001, S110 - dropped or broken: it goes
                pass

    def close(self) -> None:
        """Close the idle connections; those in use are closed when given back."""
        self._closed = True
        while self._idle:
            self._idle.pop().close()


#: The capture connections a forked process inherited: kept, never used.
_INHERITED: list[OwnConnections] = []


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    # WAL lets the web process write while a worker reads; FULL keeps a committed
    # event through a power loss (NORMAL could roll the last commits back).
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=FULL")
    cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_MS}")
    cursor.close()


def get_state(app: Flask | None = None) -> AppState:
    """The Flask-AmoCRM state of ``app`` (default: the current app)."""
    app = app or current_app._get_current_object()  # type: ignore[attr-defined]
    try:
        state = app.extensions["amocrm"]
    except KeyError:
        raise RuntimeError(
            "The current Flask app is not registered with Flask-AmoCRM. Did you forget "
            "to call 'AmoCRM(app)' or 'amocrm.init_app(app)'?"
        ) from None
    assert isinstance(state, AppState)
    return state
