"""Cleaning what visitors typed before it goes to amoCRM.

Form input is garbage as often as not: control characters pasted from a PDF, bytes that
were never UTF-8, a 50 KB "name". amoCRM rejects or silently mangles such values, so
every text value passes through :func:`clean_text` on its way into a payload: invalid
UTF-8 becomes U+FFFD, control characters go, and an oversized value is cut to amoCRM's
limit with a warning (the warnings end up in a note on the entity, so nothing the
visitor sent is lost).
"""

from __future__ import annotations

import math
import re
from typing import Any

from ..i18n import N_

#: Entity names (lead, contact, company): amoCRM stores 255 characters.
NAME_LIMIT = 255
#: One-line custom field values (text, url, tracking_data, streetaddress, multitext).
TEXT_LIMIT = 256
#: Multi-line values (textarea) and the text of a note. amoCRM does not publish these
#: limits; 20 000 characters is well inside what the interface shows and stores.
LONG_LIMIT = 20_000
#: A tag name.
TAG_LIMIT = 100

# C0 and C1 control characters, DEL, and the Unicode line/paragraph separators that
# break amoCRM's interface; tab and newline are handled separately.
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\u2028\u2029\ufeff]")
_SPACE = re.compile(r"[ \t\r\n]+")
_SURROGATE = re.compile("[\ud800-\udfff]")


def fix_unicode(text: str) -> str:
    """Replace lone surrogates (bytes that were not UTF-8, decoded with
    ``surrogateescape``) with U+FFFD, so the value can be encoded at all."""
    return _SURROGATE.sub("\ufffd", text)


def clean_text(
    value: Any,
    *,
    limit: int = TEXT_LIMIT,
    multiline: bool = False,
    where: str = "",
    warnings: list[str] | None = None,
) -> str:
    """``value`` as clean text, at most ``limit`` characters.

    One-line values get their whitespace runs collapsed to one space; multi-line values
    keep newlines (``\\r\\n`` becomes ``\\n``). A cut is reported in ``warnings`` with
    the full value, so a note can keep it.
    """
    if value is None:
        return ""
    if isinstance(value, bytes):
        text = value.decode("utf-8", "replace")
    else:
        text = str(value)
    text = fix_unicode(text)
    text = _CONTROL.sub("", text)
    if multiline:
        text = text.replace("\r\n", "\n").replace("\r", "\n").strip()
    else:
        text = _SPACE.sub(" ", text).strip()
    if len(text) > limit:
        if warnings is not None:
            cut = N_(
                "the value was %(length)s characters, cut to %(max)s; in full: "
                "%(text)s",
                length=len(text),
                max=limit,
                text=text,
            )
            warnings.append(
                N_("%(where)s: %(warning)s", where=where, warning=cut) if where else cut
            )
        text = text[: limit - 1].rstrip() + "…"
    return text


#: A currency word or sign before or after a price: ``руб.``, ``р.``, ``RUB``, ``₽``,
#: ``$``, ``USD``.
_UNIT = r"(?:[^\W\d_]{1,5}\.?|[^\w\s.,'+\-]{1,3})"
#: A number as visitors write it: ``1 500,50``, ``1,500.50``, ``1'500``, ``2e3``.
_NUMBER = re.compile(
    rf"{_UNIT}?\s*([+\-]?[.,]?\d(?:[\d\s\u00a0\u202f'.,]*\d)?(?:[eE][+\-]?\d+)?)"
    rf"\s*{_UNIT}?"
)


def parse_number(value: Any) -> float | None:
    """A number from what a visitor typed (``"1 500,50"``, ``"1500.5 ₽"``,
    ``"1 500,50 руб."``, ``"1500р."``, ``"$20"``), or ``None`` when it is not one."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return float(value) if math.isfinite(value) else None
    found = _NUMBER.fullmatch(str(value).strip())
    if found is None:
        return None
    # Spaces (also no-break and thin ones) and apostrophes group thousands.
    text = re.sub(r"[\s\u00a0\u202f']", "", found.group(1))
    if "," in text and "." in text:
        # "1,500.50" or "1.500,50": the last separator is the decimal one.
        if text.rfind(",") > text.rfind("."):
            text = text.replace(".", "").replace(",", ".")
        else:
            text = text.replace(",", "")
    else:
        text = text.replace(",", ".")
    try:
        number = float(text)
    except ValueError:
        return None
    return number if math.isfinite(number) else None
