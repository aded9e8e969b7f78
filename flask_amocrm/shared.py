"""State that every process of a site shares: flags, locks, counters, a small cache.

Several web processes and workers on several machines must agree on a few things: an
outage mail goes out once, one process refreshes the token, two workers never create
the same person, round-robin turns go round. This module is the one way to do that.

Every name is turned into a key by :func:`key`, which always carries the amoCRM
account (its host) and, for what belongs to one site, the queue (``AMOCRM_QUEUE``): two
sites sharing one Redis or one database never share a site's flag, tick or turn. What
belongs to the amoCRM account itself (``account=True``: its people being created, its
fields, its token refresh, a block by amoCRM) is shared by every site feeding that
account, so that two sites never create one person twice or refresh one token at once.

Redis keeps this state when it answers (``SET NX EX``, redis-py locks, ``INCR``); when
it is not configured, does not answer, or fails in the middle of a call, the
``amocrm_flags`` and ``amocrm_counters`` tables do, because delivery must not stop when
Redis does.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import random
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import urlsplit

from sqlalchemy import delete, insert, select, update
from sqlalchemy.exc import IntegrityError, OperationalError

from .errors import LockTimeoutError
from .models import Counter, Flag, utcnow

if TYPE_CHECKING:
    from redis import Redis

    from .state import AppState

log = logging.getLogger("flask_amocrm")

T = TypeVar("T")

#: The longest key the tables take; longer keys end in a hash of their tail.
KEY_LIMIT = 200


def key(state: AppState, *parts: str, account: bool = False) -> str:
    """The shared key of ``parts`` for this app's account and queue (for the account
    alone with ``account=True``)."""
    host = urlsplit(state.settings.base_url).netloc or state.settings.base_url
    scope = [host] if account else [host, state.settings.queue]
    name = ":".join(["amocrm", *scope, *parts])
    if len(name) > KEY_LIMIT:
        digest = hashlib.sha256(name.encode()).hexdigest()[:32]
        name = f"{name[: KEY_LIMIT - 33]}#{digest}"
    return name


class _Down:
    """What :func:`_via_redis` gives when Redis is off, down, or failed."""


_DOWN = _Down()


def _via_redis(state: AppState, op: Callable[[Redis], T]) -> T | _Down:
    """``op`` on Redis, or :data:`_DOWN` when there is no Redis to ask or it failed
    (then Redis counts as down until its next health check, and the caller uses the
    database)."""
    redis = state.live_redis()
    if redis is None:
        return _DOWN
    from redis.exceptions import RedisError

    try:
        return op(redis)
    except RedisError as exc:
        log.warning("Redis failed (%s); shared state goes to the database", exc)
        state.redis_failed()
        return _DOWN


def _text(raw: Any) -> str | None:
    return raw.decode() if isinstance(raw, bytes) else raw


# -- flags -----------------------------------------------------------------------------


def set_once(
    state: AppState,
    name: str,
    value: str = "1",
    seconds: int | None = None,
    *,
    account: bool = False,
) -> bool:
    """Set the flag ``name`` unless it is set; ``True`` if this call set it."""
    full = key(state, name, account=account)
    done = _via_redis(state, lambda r: bool(r.set(full, value, nx=True, ex=seconds)))
    if not isinstance(done, _Down):
        return done
    now = utcnow()
    expires = now + timedelta(seconds=seconds) if seconds else None
    with state.session() as session:
        session.execute(delete(Flag).where(Flag.key == full, Flag.expires_at < now))
        session.commit()
        session.add(Flag(key=full, value=value, expires_at=expires))
        try:
            session.commit()
        except IntegrityError:
            session.rollback()
            return False
    return True


def get(state: AppState, name: str, *, account: bool = False) -> str | None:
    """The flag's value, or ``None`` when it is not set (or expired)."""
    full = key(state, name, account=account)
    found = _via_redis(state, lambda r: _text(r.get(full)))
    if not isinstance(found, _Down):
        return found
    with state.session() as session:
        flag = session.get(Flag, full)
        if flag is None or (flag.expires_at and flag.expires_at < utcnow()):
            return None
        return flag.value


def put(
    state: AppState,
    name: str,
    value: str,
    seconds: int | None = None,
    *,
    account: bool = False,
) -> None:
    """Set the flag ``name`` to ``value``, whether it was set or not."""
    full = key(state, name, account=account)
    if not isinstance(
        _via_redis(state, lambda r: r.set(full, value, ex=seconds)), _Down
    ):
        return
    now = utcnow()
    expires = now + timedelta(seconds=seconds) if seconds else None
    with state.session() as session:
        flag = session.get(Flag, full)
        if flag is None:
            session.add(Flag(key=full, value=value, expires_at=expires))
        else:
            flag.value = value
            flag.created_at = now
            flag.expires_at = expires
        try:
            session.commit()
        except IntegrityError:  # set by another process meanwhile: ours is newer
            session.rollback()
            session.execute(
                update(Flag)
                .where(Flag.key == full)
                .values(value=value, created_at=now, expires_at=expires)
            )
            session.commit()


def clear(state: AppState, name: str, *, account: bool = False) -> str | None:
    """Remove the flag; return its value if this call removed it (else ``None``)."""
    full = key(state, name, account=account)
    found = _via_redis(state, lambda r: _text(r.getdel(full)))
    if not isinstance(found, _Down):
        return found
    with state.session() as session:
        flag = session.get(Flag, full)
        if flag is None:
            return None
        value = flag.value
        deleted = session.execute(delete(Flag).where(Flag.key == full))
        session.commit()
        return value if deleted.rowcount else None  # type: ignore[attr-defined]


# -- locks -----------------------------------------------------------------------------


@dataclass
class Held:
    """A lock this process holds (see :func:`acquire`)."""

    name: str
    redis_lock: Any = None
    token: str | None = None


def acquire(
    state: AppState, name: str, *, ttl: float, wait: float, account: bool = False
) -> Held | None:
    """Take the lock ``name`` for at most ``ttl`` seconds, waiting up to ``wait``
    seconds for it; ``None`` if another process held it all that time.

    The lock expires by itself after ``ttl``, so a killed process cannot hold it for
    ever; a lock that expired is never released by its old holder."""
    full = key(state, "lock", name, account=account)
    deadline = time.monotonic() + wait

    def take(redis: Redis) -> Held | None:
        lock = redis.lock(
            full, timeout=ttl, blocking_timeout=max(deadline - time.monotonic(), 0.01)
        )
        return Held(full, redis_lock=lock) if lock.acquire() else None

    held = _via_redis(state, take)
    if not isinstance(held, _Down):
        return held
    token = uuid.uuid4().hex
    while True:
        if _insert_lock(state, full, token, ttl):
            return Held(full, token=token)
        if time.monotonic() >= deadline:
            return None
        time.sleep(random.uniform(0.02, 0.1))


def _insert_lock(state: AppState, full: str, token: str, ttl: float) -> bool:
    now = utcnow()
    with state.session() as session:
        try:
            session.execute(delete(Flag).where(Flag.key == full, Flag.expires_at < now))
            session.add(
                Flag(key=full, value=token, expires_at=now + timedelta(seconds=ttl))
            )
            session.commit()
        except (IntegrityError, OperationalError):
            # Held by another process (or SQLite busy with its insert).
            session.rollback()
            return False
    return True


def release(state: AppState, held: Held) -> None:
    """Give the lock back. A lock that expired meanwhile may belong to another
    process now: it is left alone."""
    if held.redis_lock is not None:
        from redis.exceptions import RedisError

        with contextlib.suppress(RedisError):
            held.redis_lock.release()
        return
    with state.session() as session:
        session.execute(
            delete(Flag).where(Flag.key == held.name, Flag.value == held.token)
        )
        session.commit()


@contextlib.contextmanager
def lock(
    state: AppState, name: str, *, ttl: float, wait: float, account: bool = False
) -> Iterator[None]:
    """Hold the lock ``name`` for the block; :class:`LockTimeoutError` if another
    process held it for ``wait`` seconds (the caller tries again later)."""
    held = acquire(state, name, ttl=ttl, wait=wait, account=account)
    if held is None:
        raise LockTimeoutError(
            f"another process has held the lock {name!r} for more than {wait:g} "
            "seconds; trying again later"
        )
    try:
        yield
    finally:
        release(state, held)


# -- counters --------------------------------------------------------------------------


def incr(state: AppState, name: str) -> int:
    """Add one to the counter ``name`` and return the new value (1 the first time)."""
    full = key(state, "count", name)
    value = _via_redis(state, lambda r: int(r.incr(full)))
    if not isinstance(value, _Down):
        return value
    for _ in range(3):
        with state.session() as session:
            result = session.execute(
                update(Counter)
                .where(Counter.name == full)
                .values(value=Counter.value + 1)
            )
            if result.rowcount:  # type: ignore[attr-defined]
                found = session.scalar(
                    select(Counter.value).where(Counter.name == full)
                )
                session.commit()
                return int(found or 1)
            try:
                session.execute(insert(Counter).values(name=full, value=1))
                session.commit()
                return 1
            except IntegrityError:  # another process inserted it first: bump that
                session.rollback()
    raise RuntimeError(f"could not advance the counter {name!r}")


def peek(state: AppState, name: str) -> int:
    """The counter's value, without changing it (0 when it was never advanced)."""
    full = key(state, "count", name)
    value = _via_redis(state, lambda r: int(r.get(full) or 0))
    if not isinstance(value, _Down):
        return value
    with state.session() as session:
        return int(
            session.scalar(select(Counter.value).where(Counter.name == full)) or 0
        )


# -- cache -----------------------------------------------------------------------------


def cache_get(state: AppState, name: str, *, account: bool = False) -> str | None:
    """A cached text, or ``None`` when it is missing or expired."""
    return get(state, f"cache:{name}", account=account)


def cache_set(
    state: AppState, name: str, value: str, seconds: int, *, account: bool = False
) -> None:
    """Cache a text for ``seconds``."""
    put(state, f"cache:{name}", value, seconds, account=account)


def cache_clear(state: AppState, name: str, *, account: bool = False) -> None:
    """Drop a cached text."""
    clear(state, f"cache:{name}", account=account)


# -- groups of counters (the metrics) -------------------------------------------------


def _group_key(state: AppState, group: str) -> str:
    return key(state, "counts", group)


def add_counts(state: AppState, group: str, counts: Mapping[str, int]) -> None:
    """Add ``counts`` (field -> amount) to the counters of ``group`` at once: one
    pipelined Redis call (``HINCRBY`` on one hash), else one database transaction."""
    counts = {field: int(n) for field, n in counts.items() if n}
    if not counts:
        return
    full = _group_key(state, group)

    def add(redis: Redis) -> bool:
        pipe = redis.pipeline(transaction=False)
        for field, n in counts.items():
            pipe.hincrby(full, field, n)
        pipe.execute()
        return True

    if not isinstance(_via_redis(state, add), _Down):
        return
    for _ in range(3):
        with state.session() as session:
            try:
                for field, n in counts.items():
                    name = f"{full}:{field}"
                    if len(name) > KEY_LIMIT:
                        continue  # labels are bounded; one this long is not kept
                    done = session.execute(
                        update(Counter)
                        .where(Counter.name == name)
                        .values(value=Counter.value + n)
                    )
                    if not done.rowcount:  # type: ignore[attr-defined]
                        session.execute(insert(Counter).values(name=name, value=n))
                session.commit()
                return
            except IntegrityError:  # another process inserted one first: again
                session.rollback()
    log.warning("Could not add to the counters %r", group)


def read_counts(state: AppState, group: str) -> dict[str, int]:
    """Every counter of ``group``: field -> value, what Redis holds plus what the
    database holds (counts made while Redis was down, or without Redis)."""
    full = _group_key(state, group)
    found = _via_redis(state, lambda r: r.hgetall(full))
    out: dict[str, int] = {}
    if not isinstance(found, _Down):
        for raw, value in found.items():
            out[str(_text(raw))] = int(value)
    prefix = f"{full}:"
    with state.session() as session:
        rows = session.execute(
            select(Counter.name, Counter.value).where(
                Counter.name.startswith(prefix, autoescape=True)
            )
        ).all()
    for name, count in rows:
        field = name[len(prefix) :]
        out[field] = out.get(field, 0) + int(count or 0)
    return out
