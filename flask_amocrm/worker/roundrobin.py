"""Round-robin turns for a rule's list of responsible users, shared by every worker.

``responsible = ["Anna", "Boris"]`` gives leads to Anna and Boris in turn across all
workers on all machines: the turn is ``INCR amocrm:rr:<rule key>`` in Redis, or, where
there is no Redis, a row of ``amocrm_counters`` bumped in one atomic ``UPDATE``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from sqlalchemy import insert, select, update
from sqlalchemy.exc import IntegrityError

from ..models import Counter

if TYPE_CHECKING:
    from ..extension import _State


def next_turn(state: _State, key: str, count: int) -> int:
    """The index (``0 … count-1``) of the next user of the list at ``key``."""
    if count <= 1:
        return 0
    name = f"amocrm:rr:{key}"[:200]
    redis = state.live_redis()
    if redis is not None:
        value = int(redis.incr(name))
    else:
        value = _db_incr(state, name)
    return (value - 1) % count


def _db_incr(state: _State, name: str) -> int:
    for _ in range(3):
        with state.session() as session:
            result = session.execute(
                update(Counter)
                .where(Counter.name == name)
                .values(value=Counter.value + 1)
            )
            if result.rowcount:  # type: ignore[attr-defined]
                value = session.scalar(
                    select(Counter.value).where(Counter.name == name)
                )
                session.commit()
                return int(value or 1)
            try:
                session.execute(insert(Counter).values(name=name, value=1))
                session.commit()
                return 1
            except IntegrityError:  # another worker inserted it first: bump that
                session.rollback()
    raise RuntimeError(f"could not advance the counter {name!r}")


def peek_turn(state: _State, key: str, count: int) -> int:
    """The index :func:`next_turn` would give now, without taking the turn
    (``flask amocrm preview``)."""
    if count <= 1:
        return 0
    name = f"amocrm:rr:{key}"[:200]
    redis = state.live_redis()
    if redis is not None:
        value = int(redis.get(name) or 0)
    else:
        with state.session() as session:
            value = int(
                session.scalar(select(Counter.value).where(Counter.name == name)) or 0
            )
    return value % count
