"""Shared flags: set-if-absent markers with an expiry, in Redis or the database.

Several workers on several machines must agree that something happens once: one
outage mail, one retention purge per hour. With Redis that is ``SET NX EX``; without
it, a row in ``amocrm_flags`` whose primary key makes the insert succeed only once.
"""

from __future__ import annotations

from datetime import timedelta
from typing import TYPE_CHECKING, Any

from sqlalchemy import delete
from sqlalchemy.exc import IntegrityError

from .models import Flag, utcnow

if TYPE_CHECKING:
    from .extension import _State


def _key(state: _State, name: str) -> str:
    return f"amocrm:{state.settings.base_url}:{name}"


def _text(raw: Any) -> str | None:
    return raw.decode() if isinstance(raw, bytes) else raw


def set_once(
    state: _State, name: str, value: str = "1", seconds: int | None = None
) -> bool:
    """Set the flag unless it is set; ``True`` if this call set it."""
    key = _key(state, name)
    conn = state.live_redis()  # None: Redis is off or down, the database keeps it
    if conn is not None:
        return bool(conn.set(key, value, nx=True, ex=seconds))
    now = utcnow()
    with state.session() as session:
        session.execute(delete(Flag).where(Flag.key == key, Flag.expires_at < now))
        session.commit()
        expires = now + timedelta(seconds=seconds) if seconds else None
        session.add(Flag(key=key, value=value, expires_at=expires))
        try:
            session.commit()
        except IntegrityError:
            session.rollback()
            return False
    return True


def get(state: _State, name: str) -> str | None:
    """The flag's value, or ``None`` when it is not set."""
    key = _key(state, name)
    conn = state.live_redis()  # None: Redis is off or down, the database keeps it
    if conn is not None:
        return _text(conn.get(key))
    with state.session() as session:
        flag = session.get(Flag, key)
        if flag is None or (flag.expires_at and flag.expires_at < utcnow()):
            return None
        return flag.value


def clear(state: _State, name: str) -> str | None:
    """Remove the flag; return its value if this call removed it (else ``None``)."""
    key = _key(state, name)
    conn = state.live_redis()  # None: Redis is off or down, the database keeps it
    if conn is not None:
        return _text(conn.getdel(key))
    with state.session() as session:
        flag = session.get(Flag, key)
        if flag is None:
            return None
        value = flag.value
        deleted = session.execute(delete(Flag).where(Flag.key == key)).rowcount
        session.commit()
        return value if deleted else None
