"""Capture the visit's context for an event: campaign tags, page, site and client.

Campaign tags (UTM and ad click ids) are read from the query string of the current
request and from a cookie that :func:`remember_campaign` sets on the landing request, so
a form posted three pages later still carries the landing's tags. The cookie keeps both
the first touch (the visit that first brought tags) and the last touch (the latest one).

The client IP is ``request.remote_addr`` and nothing else: headers such as
``X-Forwarded-For`` are set by the client and cannot be trusted. Behind a proxy, wrap
the app in :class:`werkzeug.middleware.proxy_fix.ProxyFix` so that ``remote_addr`` is
the visitor's address.

Outside a request (a mail sent from a CLI command or a worker) the context holds what
exists: the site's name and address, and the time.
"""

from __future__ import annotations

import base64
import json
import logging
import re
import socket
import time
from functools import lru_cache
from typing import Any

from flask import Request, Response, has_request_context, request

from .outbox import blank_context
from .vocabulary import CAMPAIGN_KEYS

log = logging.getLogger("flask_amocrm")

#: Cookies set by analytics services, read when the query string lacks the value.
_ANALYTICS_COOKIES = {"_ym_uid": "_ym_uid", "roistat": "roistat_visit"}
#: Where the amoCRM site tracker's visitor id may be found.
_VISITOR_UID_KEYS = ("visitor_uid", "amo_visitor_uid")

#: The cookies an event keeps (an allow-list: a site's session, login and API
#: cookies have names of every kind, so they are never copied): those of analytics
#: and ad services, campaign tags, the amoCRM tracker's visitor id, and the cookies
#: the rules name (``{{ cookies.partner }}``).
_CAMPAIGN_COOKIE = re.compile(
    r"^(_ga(_\w+)?|_gid|_gcl_\w+|_ym_uid|_ym_d|_fbp|_fbc|_ttp|_tt_\w*|_hjid|"
    r"roistat_\w+|utm_\w+|gclid|yclid|fbclid|ysclid|ttclid|_uetsid|_uetvid|"
    r"visitor_uid|amo_visitor_uid|_ct|_ct_\w+|calltouch_\w*|comagic_\w*)$",
    re.I,
)
#: ``cookies.name``, ``cookies['name']`` and ``cookies.get('name')`` in a template.
_COOKIE_IN_TEMPLATE = re.compile(
    r"cookies\s*(?:\.\s*get\s*\(\s*['\"]([^'\"]+)['\"]|\.\s*([A-Za-z_]\w*)|"
    r"\[\s*['\"]([^'\"]+)['\"]\s*\])"
)

_MAX_VALUE = 250  # no campaign tag is longer; a longer one is garbage or an attack
_MAX_COOKIES = 30
_CAMPAIGN_KEYS = frozenset(CAMPAIGN_KEYS)


def _clean(value: Any, limit: int = _MAX_VALUE) -> str:
    text = str(value)
    if not text.isprintable():  # most values are: one check in C, no copy
        text = "".join(ch for ch in text if ch.isprintable())
    return text[:limit]


@lru_cache(maxsize=1)
def server_ip() -> str | None:
    """The address of this machine, as the site's IP (looked up once per process)."""
    try:
        return socket.gethostbyname(socket.gethostname())
    except OSError:
        return None


def cookies_named(rules: Any) -> frozenset[str]:
    """The cookie names the rules' templates read (``cookies.x``, ``cookies['x']``,
    ``cookies["x"]``, ``cookies.get('x')``)."""
    names = set()
    for text in _texts(rules):
        for match in _COOKIE_IN_TEMPLATE.finditer(text):
            name = next(g for g in match.groups() if g)
            if name != "get":
                names.add(name)
    return frozenset(names)


def _texts(value: Any, depth: int = 0) -> list[str]:
    """Every text in the rules (their templates), as written."""
    if depth > 50:
        return []
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [t for k, v in value.items() for t in _texts(v, depth + 1)]
    if isinstance(value, list | tuple):
        return [t for v in value for t in _texts(v, depth + 1)]
    return []


def kept_cookie(name: str, named: frozenset[str] = frozenset()) -> bool:
    """Whether an event keeps the cookie ``name``."""
    return name in named or bool(_CAMPAIGN_COOKIE.match(name))


def campaign_from_query(req: Request) -> dict[str, str]:
    """The campaign tags present in the request's query string (the first value of
    each), in one pass over it."""
    return {
        key: _clean(value)
        for key, value in req.args.items()
        if key in _CAMPAIGN_KEYS and value.strip()
    }


def read_campaign_cookie(req: Request, cookie: str) -> dict[str, dict[str, str]]:
    """``{"first": {...}, "last": {...}}`` from the campaign cookie, or empties when
    it cannot be read. Never raises: the visitor sets the cookie."""
    empty: dict[str, dict[str, str]] = {"first": {}, "last": {}}
    try:
        raw = req.cookies.get(cookie)
        if not raw or len(raw) > 8192:
            return empty
        value = json.loads(base64.urlsafe_b64decode(raw.encode("ascii")))
        return _touches(value)
    except Exception:  # noqa: BLE001 - garbage, too deep (RecursionError), ...
        return empty


def _campaign(cookie: str) -> tuple[dict[str, dict[str, str]], dict[str, str]]:
    """The current request's campaign cookie (:func:`read_campaign_cookie`) and
    query tags (:func:`campaign_from_query`), read once per request: capture and
    :func:`remember_campaign` both need them. Neither is changed by its readers."""
    key = f"flask_amocrm.campaign.{cookie}"
    found = request.environ.get(key)
    if found is None:
        found = (read_campaign_cookie(request, cookie), campaign_from_query(request))
        request.environ[key] = found
    return found


def _touches(value: Any) -> dict[str, dict[str, str]]:
    empty: dict[str, dict[str, str]] = {"first": {}, "last": {}}
    if not isinstance(value, dict):
        return empty
    result = {}
    for touch in ("first", "last"):
        part = value.get(touch)
        result[touch] = (
            {
                _clean(k, 50): _clean(v)
                for k, v in list(part.items())[:50]
                if isinstance(v, str | int) and not isinstance(v, bool)
            }
            if isinstance(part, dict)
            else {}
        )
    return result


def remember_campaign(response: Response, cookie: str, days: int) -> Response:
    """Store this request's campaign tags in the cookie (first touch is kept).

    Registered as an ``after_request`` handler; does nothing on requests without tags,
    and never fails a page: a cookie it cannot write is logged and left as it is.
    """
    try:
        return _remember(response, cookie, days)
    except Exception:
        log.exception("Flask-AmoCRM could not update the campaign cookie")
        return response


def _remember(response: Response, cookie: str, days: int) -> Response:
    stored, tags = _campaign(cookie)
    if not tags:
        return response
    touch = dict(tags)
    touch["landing"] = _clean(request.base_url, 500)
    if request.referrer:
        touch["referrer"] = _clean(request.referrer, 500)
    touch["at"] = str(int(time.time()))
    value = {"first": stored["first"] or touch, "last": touch}
    response.set_cookie(
        cookie,
        # base64 keeps the value within cookie-safe characters: quoted JSON is
        # mangled by some clients' cookie parsers.
        base64.urlsafe_b64encode(
            json.dumps(value, separators=(",", ":")).encode("utf-8")
        ).decode("ascii"),
        max_age=days * 86400,
        httponly=True,
        samesite="Lax",
        secure=request.is_secure,
    )
    return response


def read_visit(
    *,
    site_name: str | None,
    cookie: str,
    data: dict[str, Any] | None = None,
    cookies: frozenset[str] = frozenset(),
) -> dict[str, Any]:
    """The context of an event: what the current request (if any) says of the
    visit. Only the cookies :func:`kept_cookie` allows are copied (``cookies``:
    those the rules name)."""
    context = blank_context(site_name, ip=server_ip())
    data = data or {}
    if not has_request_context():
        context["client"]["visitor_uid"] = _visitor_uid(data, {})
        return context

    stored, query = _campaign(cookie)
    jar: dict[str, str] = {}
    for name, value in request.cookies.items():
        if name != cookie and kept_cookie(name, cookies):
            jar[name] = _clean(value)
            if len(jar) == _MAX_COOKIES:
                break
    headers = request.headers
    referrer = headers.get("Referer")
    last: dict[str, str] = {
        k: v for k, v in stored["last"].items() if k in CAMPAIGN_KEYS
    }
    last.update(query)
    for key, cookie_name in _ANALYTICS_COOKIES.items():
        if key not in last and jar.get(cookie_name):
            last[key] = jar[cookie_name]
    first = {k: v for k, v in stored["first"].items() if k in CAMPAIGN_KEYS} or dict(
        query
    )

    context["site"]["domain"] = request.host.split(":")[0]
    context["site"]["ip"] = request.environ.get("SERVER_ADDR") or server_ip()
    context["utm"] = last
    context["utm_first"] = first
    context["page"] = {
        "url": _clean(request.url, 2000),
        "referrer": _clean(referrer, 2000) if referrer else None,
        "title": _clean(data["page_title"], 500) if data.get("page_title") else None,
        "landing": stored["first"].get("landing"),
        "landing_referrer": stored["first"].get("referrer"),
    }
    context["client"] = {
        "ip": request.remote_addr,
        "user_agent": _clean(headers.get("User-Agent", ""), 500),
        "visitor_uid": _visitor_uid(data, jar),
    }
    context["cookies"] = jar
    return context


def _visitor_uid(data: dict[str, Any], cookies: dict[str, str]) -> str | None:
    for key in _VISITOR_UID_KEYS:
        value = data.get(key) or cookies.get(key)
        if value:
            return _clean(value, 100)
    return None
