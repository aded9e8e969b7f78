"""The words rules, duplicate control and amoCRM share, each defined once.

A leaf module: it imports nothing from the package, so every layer (rules, duplicate
control, capture, the client) may read it.
"""

from __future__ import annotations

from typing import Any

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
#: Query parameters and cookies that describe where a visitor came from: the
#: campaign tags, less the referrer, which the request itself gives.
CAMPAIGN_KEYS = tuple(tag for tag in TRACKING_TAGS if tag != "referrer")
#: The country assumed for phones written without one (``AMOCRM_PHONE_REGION``).
DEFAULT_PHONE_REGION = "RU"


def fold(text: Any) -> str:
    """``text`` as names are compared: white space collapsed, case folded."""
    return " ".join(str(text).split()).casefold()


__all__ = [
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
