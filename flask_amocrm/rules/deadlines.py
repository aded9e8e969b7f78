"""Task deadlines: ``+2h``, the end of the working day, or a date.

A rule's ``task.deadline`` is rendered first (it may be a template, such as
``{{ data.call_at }}``), then read here:

* ``+30m``, ``+2h``, ``+1d``, ``+1w``, combined as ``+1d 4h``: relative to now;
* ``eod`` (also ``end of day``, ``end of working day``): today's end of the working
  day (``AMOCRM_WORKDAY_END``, 18:00 by default) in the account's time zone, or the
  next working day's once that has passed; Saturdays and Sundays are skipped;
* anything :func:`~flask_amocrm.rules.fields.parse_when` reads: ``2024-05-17 14:30``,
  ``17.05.2024``, Unix seconds.
"""

from __future__ import annotations

import re
from datetime import datetime, time, timedelta, tzinfo

from ..errors import RuleError
from ..i18n import N_
from .fields import parse_when

#: The deadline of a task whose rule gives none.
DEFAULT_DEADLINE = "+1h"
_UNITS = {"s": 1, "m": 60, "min": 60, "h": 3600, "d": 86400, "w": 604800}
_RELATIVE = re.compile(r"^\+\s*((?:\d+\s*(?:min|s|m|h|d|w)\s*)+)$", re.I)
_PART = re.compile(r"(\d+)\s*(min|s|m|h|d|w)", re.I)
_EOD = {
    "eod",
    "end of day",
    "end of working day",
    "end of the working day",
    "конец дня",
    "конец рабочего дня",
}


def is_static(text: str) -> bool:
    """Whether ``text`` is a deadline form that needs no event data."""
    text = text.strip().lower()
    return bool(_RELATIVE.match(text)) or text in _EOD


def deadline(
    text: str, *, now: float, tz: tzinfo, workday_end: time, where: str
) -> int:
    """Unix seconds for a rendered deadline; :class:`RuleError` if it means nothing."""
    cleaned = " ".join(str(text).split())
    lowered = cleaned.lower()
    match = _RELATIVE.match(lowered)
    if match:
        seconds = sum(
            int(n) * _UNITS[unit.lower()] for n, unit in _PART.findall(match.group(1))
        )
        return int(now + seconds)
    if lowered in _EOD:
        return end_of_working_day(now=now, tz=tz, workday_end=workday_end)
    stamp = parse_when(cleaned, tz=tz)
    if stamp is None:
        raise RuleError(
            N_(
                "%(where)s: %(value)s is not a deadline; use '+2h', 'eod' "
                "or a date such as '2024-05-17 14:30'",
                where=where,
                value=repr(cleaned),
            )
        )
    return stamp


def end_of_working_day(*, now: float, tz: tzinfo, workday_end: time) -> int:
    """The next end of a working day (Monday to Friday) from ``now``."""
    local = datetime.fromtimestamp(now, tz)
    candidate = datetime.combine(local.date(), workday_end, tzinfo=tz)
    while candidate <= local or candidate.weekday() >= 5:
        candidate = datetime.combine(
            candidate.date() + timedelta(days=1), workday_end, tzinfo=tz
        )
    return int(candidate.timestamp())
