"""The words rules, duplicate control and amoCRM share, each defined once.

A leaf module: it imports nothing from the package, so every layer (rules, duplicate
control, capture, the client) may read it.
"""

from __future__ import annotations

import re
from typing import Any, NamedTuple

#: Rule section → API entity.
ENTITY = {"lead": "leads", "contact": "contacts", "company": "companies"}
#: Standard keys of a section that are custom fields with a predefined code.
STANDARD_FIELDS: dict[str, dict[str, str]] = {
    "contact": {"position": "POSITION", "phone": "PHONE", "email": "EMAIL", "im": "IM"},
    "company": {"phone": "PHONE", "email": "EMAIL", "web": "WEB", "address": "ADDRESS"},
    "lead": {},
}
#: Section keys that are not custom fields, per section.
CORE_KEYS = {
    "contact": ("name",),
    "company": ("name",),
    "lead": ("name", "price", "pipeline", "status"),
}
#: The names ``lock`` takes besides fields, and the payload keys each one keeps out
#: of an update.
LOCK_KEYS = {
    "name": ("name",),
    "first_name": ("first_name",),
    "last_name": ("last_name",),
    "price": ("price",),
    "pipeline": ("pipeline_id", "status_id"),
    "status": ("status_id",),
    "responsible": ("responsible_user_id",),
    "tags": ("_embedded",),
    "visitor_uid": ("visitor_uid",),
}
#: Campaign tags and the lead tracking field (``tracking_data``) each one fills.
TRACKING_TAGS = {
    "utm_source": "UTM_SOURCE",
    "utm_medium": "UTM_MEDIUM",
    "utm_campaign": "UTM_CAMPAIGN",
    "utm_content": "UTM_CONTENT",
    "utm_term": "UTM_TERM",
    "utm_referrer": "UTM_REFERRER",
    "gclid": "GCLID",
    "yclid": "YCLID",
    "fbclid": "FBCLID",
    "roistat": "ROISTAT",
    "_ym_uid": "_YM_UID",
    "_ym_counter": "_YM_COUNTER",
    "openstat_service": "OPENSTAT_SERVICE",
    "openstat_campaign": "OPENSTAT_CAMPAIGN",
    "openstat_ad": "OPENSTAT_AD",
    "openstat_source": "OPENSTAT_SOURCE",
    "from": "FROM",
    "referrer": "REFERRER",
}
#: Google Analytics' client id (the ``_ga`` mark) fills this tracking field.
TRACKING_TAGS["_ga"] = "GCLIENTID"


class AdMark(NamedTuple):
    """One ad mark a visit keeps (``AMOCRM_AD_MARKS``): its ``name`` (the key in
    ``utm``/``utm_first``, and the key read in the site's session), the query
    parameter it is read from (``None``: never in the query) and the cookie
    (``None``: never in a cookie)."""

    name: str
    query: str | None
    cookie: str | None


def _marks(*names: str, query: bool = True, cookie: bool = True) -> tuple[AdMark, ...]:
    return tuple(AdMark(n, n if query else None, n if cookie else None) for n in names)


#: The presets of ``AMOCRM_AD_MARKS`` (all of them by default): preset name → the
#: marks it brings. A mark is read from the query string, then the site's session
#: (the key named like the mark), then its cookie.
AD_MARK_PRESETS: dict[str, tuple[AdMark, ...]] = {
    "utm_*": _marks(
        "utm_source",
        "utm_medium",
        "utm_campaign",
        "utm_content",
        "utm_term",
        "utm_referrer",
    ),
    **{
        name: _marks(name)
        for name in (
            "gclid",
            "gbraid",
            "wbraid",
            "yclid",
            "ysclid",
            "fbclid",
            "msclkid",
            "ttclid",
            "vkclid",
            "rb_clickid",
        )
    },
    # Roistat's visit number: ``roistat`` in the query, its ``roistat_visit`` cookie.
    "roistat_visit": (AdMark("roistat", "roistat", "roistat_visit"),),
    "_openstat": _marks(
        "_openstat",
        "openstat_service",
        "openstat_campaign",
        "openstat_ad",
        "openstat_source",
        cookie=False,
    ),
    "from": _marks("from", cookie=False),
    # Yandex Metrica's client id (its cookie) and counter.
    "_ym_uid": (*_marks("_ym_uid"), *_marks("_ym_counter", cookie=False)),
    # Google Analytics' client id: the cookie's ``GA1.2.`` prefix is dropped.
    "_ga": _marks("_ga", query=False),
    "_fbp": _marks("_fbp", query=False),
    "_fbc": _marks("_fbc", query=False),
}
#: Every preset's mark names (what capture and the importer read by default).
CAMPAIGN_KEYS = tuple(m.name for ms in AD_MARK_PRESETS.values() for m in ms)
#: A custom mark's name in ``AMOCRM_AD_MARKS``.
MARK_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_.-]{0,49}$")
#: The country assumed for phones written without one (``AMOCRM_PHONE_REGION``).
DEFAULT_PHONE_REGION = "RU"


def fold(text: Any) -> str:
    """``text`` as names are compared: white space collapsed, case folded."""
    return " ".join(str(text).split()).casefold()


__all__ = [
    "AD_MARK_PRESETS",
    "CAMPAIGN_KEYS",
    "AdMark",
    "CORE_KEYS",
    "DEFAULT_PHONE_REGION",
    "ENTITY",
    "LOCK_KEYS",
    "STANDARD_FIELDS",
    "TRACKING_TAGS",
    "fold",
]

#: The languages every text a person reads is written in (``AMOCRM_LOCALE``); the
#: first is the default.
LOCALES = ("en", "ru")
