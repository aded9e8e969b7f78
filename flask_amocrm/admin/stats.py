"""The figures behind the health page's charts, counted by the database.

Each query groups rows by a truncated time (an hour, or a day) with ``GROUP BY``, so a
busy site's charts never load its rows: SQLite's ``strftime`` and PostgreSQL's
``date_trunc`` do the truncating, on times shifted into the site's timezone
(``AMOCRM_TIMEZONE``, at its offset now: a daylight-saving change inside the window
shifts the buckets before it by that hour). Delivery delay percentiles are picked by
``row_number()`` over each bucket's delays in order, a window function both databases
have, so only two rows per bucket come back.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import ColumnElement, func, or_, select
from sqlalchemy.orm import Session

from ..models import ApiLog, Event, utcnow

#: The charts' spans: name → (length, bucket unit, number of buckets).
SPANS: dict[str, tuple[timedelta, str, int]] = {
    "24h": (timedelta(hours=24), "hour", 24),
    "7d": (timedelta(days=7), "day", 7),
}
#: The percentiles of the delay chart.
PERCENTILES = (50, 95)
_FORMATS = {"hour": "%Y-%m-%d %H:00:00", "day": "%Y-%m-%d 00:00:00"}


class UnsupportedDatabase(Exception):
    """The events database is neither SQLite nor PostgreSQL."""


@dataclass(frozen=True)
class Buckets:
    """The buckets of a span: their keys (local start times, as text) in order."""

    unit: str
    offset: timedelta
    keys: list[str]
    since: datetime  # naive UTC


def buckets(span: str, timezone: str, now: datetime | None = None) -> Buckets:
    """The buckets of ``span`` ending with the current one, in ``timezone``."""
    length, unit, count = SPANS[span]
    now = now or utcnow()
    offset = ZoneInfo(timezone).utcoffset(now.replace(tzinfo=UTC)) or timedelta(0)
    local = now + offset
    if unit == "hour":
        last = local.replace(minute=0, second=0, microsecond=0)
        step = timedelta(hours=1)
    else:
        last = local.replace(hour=0, minute=0, second=0, microsecond=0)
        step = timedelta(days=1)
    starts = [last - step * (count - 1 - i) for i in range(count)]
    keys = [s.strftime(_FORMATS[unit]) for s in starts]
    return Buckets(unit=unit, offset=offset, keys=keys, since=starts[0] - offset)


def _bucket(session: Session, column: Any, b: Buckets) -> ColumnElement[Any]:
    dialect = session.get_bind().dialect.name
    seconds = int(b.offset.total_seconds())
    if dialect == "sqlite":
        return func.strftime(_FORMATS[b.unit], column, f"{seconds:+d} seconds")
    if dialect == "postgresql":
        return func.date_trunc(b.unit, column + b.offset)
    raise UnsupportedDatabase(dialect)


def _seconds_between(session: Session, start: Any, end: Any) -> ColumnElement[Any]:
    if session.get_bind().dialect.name == "sqlite":
        return (func.julianday(end) - func.julianday(start)) * 86400.0
    return func.extract("epoch", end - start)


def _key(value: Any, unit: str) -> str:
    """A bucket as the database gave it (text, or a timestamp) as its key."""
    if isinstance(value, datetime):
        return value.strftime(_FORMATS[unit])
    return str(value)


def events_by_status(session: Session, b: Buckets) -> dict[str, dict[str, int]]:
    """Events stored in each bucket, by their status now: {status: {key: count}}."""
    bucket = _bucket(session, Event.created_at, b).label("bucket")
    rows = session.execute(
        select(bucket, Event.status, func.count())
        .where(Event.created_at >= b.since)
        .group_by(bucket, Event.status)
    ).all()
    out: dict[str, dict[str, int]] = {}
    for key, status, count in rows:
        out.setdefault(status, {})[_key(key, b.unit)] = int(count)
    return out


def delivery_delays(session: Session, b: Buckets) -> dict[int, dict[str, float]]:
    """Seconds from capture to delivery of the events delivered in each bucket, at
    each of :data:`PERCENTILES` (nearest rank): {percentile: {key: seconds}}."""
    bucket = _bucket(session, Event.delivered_at, b)
    delay = _seconds_between(session, Event.created_at, Event.delivered_at)
    ranked = (
        select(
            bucket.label("bucket"),
            delay.label("delay"),
            func.row_number().over(partition_by=bucket, order_by=delay).label("pos"),
            func.count().over(partition_by=bucket).label("n"),
        )
        .where(Event.delivered_at.is_not(None), Event.delivered_at >= b.since)
        .subquery()
    )
    # nearest rank: the ceil(p * n / 100)-th delay, in integer arithmetic
    wanted = {p: (ranked.c.n * p + 99) // 100 for p in PERCENTILES}
    rows = session.execute(
        select(ranked.c.bucket, ranked.c.pos, ranked.c.n, ranked.c.delay).where(
            or_(*(ranked.c.pos == wanted[p] for p in PERCENTILES))
        )
    ).all()
    out: dict[int, dict[str, float]] = {p: {} for p in PERCENTILES}
    for key, pos, n, seconds in rows:
        for p in PERCENTILES:
            if pos == (n * p + 99) // 100:
                # to a tenth: SQLite's julianday arithmetic is not exact
                out[p][_key(key, b.unit)] = max(0.0, round(float(seconds), 1))
    return out


def calls_per_event(session: Session, b: Buckets) -> dict[str, float]:
    """Requests sent to amoCRM in each bucket divided by the events delivered in it:
    {key: calls per event}, for the buckets where an event was delivered. Every
    request counts (searches, metadata, retries that failed), and a batch's shared
    calls are not any one event's (they are logged without one), so it is the whole
    cost of a delivered event."""
    bucket = _bucket(session, ApiLog.created_at, b).label("bucket")
    calls = {
        _key(key, b.unit): int(count)
        for key, count in session.execute(
            select(bucket, func.count())
            .where(ApiLog.created_at >= b.since)
            .group_by(bucket)
        ).all()
    }
    delivered = _bucket(session, Event.delivered_at, b).label("bucket")
    events = {
        _key(key, b.unit): int(count)
        for key, count in session.execute(
            select(delivered, func.count())
            .where(Event.delivered_at.is_not(None), Event.delivered_at >= b.since)
            .group_by(delivered)
        ).all()
    }
    return {key: calls.get(key, 0) / n for key, n in events.items() if n}
