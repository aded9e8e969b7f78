"""Capture the visit's context for an event: ad marks, the visitor's path, page,
site and client.

Ad marks (``AMOCRM_AD_MARKS``: UTM tags, ad click ids, analytics client ids) are read
from the query string of the current request and from a cookie that
:func:`remember_visit` sets on the landing request, so a form posted three pages later
still carries the landing's marks; a mark in neither is read from the site's session
(the key named like the mark), then from its own cookie. The cookie keeps both the
first touch (the visit that first brought marks) and the last touch (the latest one).
It is signed with the site's ``SECRET_KEY``: a cookie the site did not sign (forged, or
written before it was signed) is ignored. The visitor's path (the last pages, the
landing page, the referrer, the time on site) is kept the same way in a second signed
cookie, written on HTML pages only (:func:`remember_page`).

The client IP is ``request.remote_addr`` and nothing else: headers such as
``X-Forwarded-For`` are set by the client and cannot be trusted. Behind a proxy, wrap
the app in :class:`werkzeug.middleware.proxy_fix.ProxyFix` so that ``remote_addr`` is
the visitor's address.

Outside a request (a mail sent from a CLI command or a worker) the context holds what
exists: the site's name and address, and the time.
"""

from __future__ import annotations

import base64
import codecs
import hmac
import json
import logging
import re
import socket
import time
from functools import lru_cache
from typing import Any
from urllib.parse import unquote_to_bytes

from flask import (
    Request,
    Response,
    current_app,
    g,
    has_request_context,
    request,
    session,
)
from itsdangerous import Signer
from itsdangerous.encoding import base64_decode, base64_encode, want_bytes
from werkzeug.datastructures import ImmutableMultiDict

from .config import Settings
from .outbox import blank_context
from .vocabulary import AD_MARK_PRESETS, AdMark

#: The salts of the signed cookies: a value signed for one is never read as the other.
CAMPAIGN_SALT = "flask-amocrm.campaign"
JOURNEY_SALT = "flask-amocrm.journey"

log = logging.getLogger("flask_amocrm")

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


class _Marks:
    """Where each ad mark of a site is read: query parameter → mark, cookie →
    mark, and the marks by name (the keys of the site's session)."""

    __slots__ = ("by_cookie", "by_query", "names")

    def __init__(self, marks: tuple[AdMark, ...]) -> None:
        self.by_query = {m.query: m.name for m in marks if m.query}
        self.by_cookie = {m.cookie: m.name for m in marks if m.cookie}
        self.names = frozenset(m.name for m in marks)


@lru_cache(maxsize=16)
def _marks(marks: tuple[AdMark, ...]) -> _Marks:
    return _Marks(marks)


_DEFAULT_MARKS = tuple(m for ms in AD_MARK_PRESETS.values() for m in ms)
#: Google Analytics' ``_ga`` cookie: ``GA1.2.<client id>`` (``GA1.1.`` on GA4).
_GA_PREFIX = re.compile(r"^GA\d+\.\d+\.")


def _mark_value(name: str, value: Any) -> str:
    text = _clean(value)
    if name == "_ga":
        return _GA_PREFIX.sub("", text, count=1)
    return text


def campaign_from_query(
    req: Request, marks: tuple[AdMark, ...] = _DEFAULT_MARKS
) -> dict[str, str]:
    """The ad marks present in the request's query string (the first value of
    each), in one pass over it."""
    kept = _marks(marks)
    by_query = kept.by_query
    found: dict[str, str] = {}
    for key, value in req.args.items():
        name = by_query.get(key)
        if name is not None and name not in found and value.strip():
            found[name] = _mark_value(name, value)
    if "_openstat" in found:
        _split_openstat(found, kept.names)
    return found


_OPENSTAT_PARTS = (
    "openstat_service",
    "openstat_campaign",
    "openstat_ad",
    "openstat_source",
)


def _split_openstat(found: dict[str, str], names: frozenset[str]) -> None:
    """``_openstat`` is ``service;campaign;ad;source`` in base64: its parts fill the
    ``openstat_*`` marks the query did not give (when the site keeps them)."""
    raw = found["_openstat"]
    try:
        text = base64.b64decode(raw + "=" * (-len(raw) % 4), altchars=b"-_")
        parts = text.decode("utf-8").split(";")
    except (ValueError, UnicodeDecodeError):
        return  # not base64: kept as it came
    if len(parts) != 4:
        return
    for name, part in zip(_OPENSTAT_PARTS, parts, strict=True):
        if name in names and part.strip():
            found.setdefault(name, _clean(part))


class _Signer(Signer):
    """itsdangerous' :class:`~itsdangerous.Signer` (HMAC-SHA1 under the key it
    derives from the secret and the salt: what it signs, it accepts, and the other
    way round) that derives its key once, not for every signature and every check
    (a form POST checks two cookies and signs one), and makes each HMAC in one call
    (:func:`hmac.digest`, not a pure-Python ``hmac.new`` over itsdangerous' SHA-1
    wrapper)."""

    def __init__(self, secret: str | bytes, salt: str) -> None:
        super().__init__(secret, salt=salt)
        self._key = super().derive_key()

    def derive_key(self, secret_key: str | bytes | None = None) -> bytes:
        return self._key if secret_key is None else super().derive_key(secret_key)

    def get_signature(self, value: str | bytes) -> bytes:
        return base64_encode(hmac.digest(self._key, want_bytes(value), "sha1"))

    def verify_signature(self, value: str | bytes, sig: str | bytes) -> bool:
        try:
            expected = base64_decode(sig)
        except Exception:  # noqa: BLE001 - not base64: not our signature
            return False
        return hmac.compare_digest(
            expected, hmac.digest(self._key, want_bytes(value), "sha1")
        )


class SignedCookie:
    """A value kept in a cookie: compact JSON, base64 (cookie-safe characters:
    quoted JSON is mangled by some clients' cookie parsers), signed with the site's
    secret and a salt of its own, so that one signed cookie is never read as
    another."""

    __slots__ = ("signer",)

    def __init__(self, secret: str | bytes, salt: str) -> None:
        self.signer = _Signer(secret, salt)

    def dumps(self, value: Any) -> str:
        payload = json.dumps(value, separators=(",", ":"), ensure_ascii=False)
        encoded = base64.urlsafe_b64encode(payload.encode("utf-8")).rstrip(b"=")
        return self.signer.sign(encoded).decode("ascii")

    def loads(self, raw: str) -> Any:
        """The value; :class:`~itsdangerous.BadSignature` when the site did not
        sign it."""
        encoded = self.signer.unsign(raw.encode("ascii"))
        padded = encoded + b"=" * (-len(encoded) % 4)
        return json.loads(base64.urlsafe_b64decode(padded))


@lru_cache(maxsize=16)
def _serializer(secret: str | bytes, salt: str) -> SignedCookie:
    return SignedCookie(secret, salt)


def _secret() -> str | bytes | None:
    """The site's ``SECRET_KEY``, which signs the campaign and path cookies; without
    one neither cookie is written or believed."""
    secret = current_app.secret_key
    return secret if isinstance(secret, str | bytes) and secret else None


def _signed(req: Request, cookie: str, salt: str, limit: int = 8192) -> Any:
    """The value of the signed cookie, or ``None`` when it is missing, unsigned,
    forged or garbage. Never raises: the visitor sets the cookie."""
    jar = req.cookies
    if cookie not in jar:  # not .get(): a missing key raises and catches inside
        return None
    raw = jar[cookie]
    if not raw or len(raw) > limit:
        return None
    secret = _secret()
    if secret is None:
        return None
    try:
        return _serializer(secret, salt).loads(raw)
    except Exception:  # noqa: BLE001 - BadSignature, garbage, too deep ...
        return None


def read_campaign_cookie(req: Request, cookie: str) -> dict[str, dict[str, str]]:
    """``{"first": {...}, "last": {...}}`` from the campaign cookie, or empties when
    it cannot be believed: a cookie not signed with the site's secret (forged, or
    written before the cookie was signed) is ignored."""
    try:
        return _touches(_signed(req, cookie, CAMPAIGN_SALT))
    except Exception:  # noqa: BLE001 - too deep (RecursionError), ...
        return {"first": {}, "last": {}}


def _campaign(
    req: Request, cookie: str, marks: tuple[AdMark, ...] = _DEFAULT_MARKS
) -> tuple[dict[str, dict[str, str]], dict[str, str]]:
    """The request's campaign cookie (:func:`read_campaign_cookie`) and query
    marks (:func:`campaign_from_query`), read once per request: capture and
    :func:`remember_visit` both need them. Neither is changed by its readers."""
    key = f"flask_amocrm.campaign.{cookie}"
    environ = req.environ
    found = environ.get(key)
    if found is None:
        found = (
            read_campaign_cookie(req, cookie),
            campaign_from_query(req, marks),
        )
        environ[key] = found
    return found


def _touches(value: Any) -> dict[str, dict[str, str]]:
    """The two touches of a campaign cookie's value. It is signed, so this site
    wrote it (its values cleaned then): only its shape is checked."""
    empty: dict[str, dict[str, str]] = {"first": {}, "last": {}}
    if not isinstance(value, dict):
        return empty
    result = {}
    for touch in ("first", "last"):
        part = value.get(touch)
        result[touch] = (
            {k: v for k, v in part.items() if isinstance(v, str)}
            if isinstance(part, dict)
            else {}
        )
    return result


def remember_visit(response: Response, settings: Settings) -> Response:
    """Store this request's ad marks in the campaign cookie (first touch is kept)
    and, on an HTML page, add it to the visitor's path (:func:`remember_page`).

    Registered as an ``after_request`` handler; never fails a page: a cookie it
    cannot write is logged and left as it is.
    """
    req = request._get_current_object()  # type: ignore[attr-defined]
    try:
        _remember(req, response, settings)
    except Exception:
        log.exception("Flask-AmoCRM could not update the campaign cookie")
    if settings.journey_pages and req.method == "GET":
        try:
            remember_page(response, settings)
        except Exception:
            log.exception("Flask-AmoCRM could not update the visitor's path")
    return response


def _remember(req: Request, response: Response, settings: Settings) -> None:
    cookie = settings.utm_cookie
    stored, tags = _campaign(req, cookie, settings.ad_marks)
    if not tags:
        return
    secret = _secret()
    if secret is None:
        return
    touch = dict(tags)
    touch["landing"] = _clean(_base_url(req), 500)
    referrer = req.referrer
    if referrer:
        touch["referrer"] = _clean(referrer, 500)
    touch["at"] = str(int(time.time()))
    value = {"first": stored["first"] or touch, "last": touch}
    response.set_cookie(
        cookie,
        _serializer(secret, CAMPAIGN_SALT).dumps(value),
        max_age=settings.utm_cookie_days * 86400,
        httponly=True,
        samesite="Lax",
        secure=req.is_secure,
    )


def _base_url(req: Request) -> str:
    """``req.base_url``; from ``req.url`` when capture has read it already (the
    part before the query: werkzeug makes both the same way, and a ``?`` in the
    path stays ``%3F``), so the address is built and decoded once per request."""
    url = req.__dict__.get("url")
    return url.partition("?")[0] if url is not None else req.base_url


# -- the visitor's path ---------------------------------------------------------------

#: A visit ends after this long without a page; the next page starts a new path.
VISIT_TIMEOUT = 30 * 60
#: The path cookie's value is kept under this many characters, so that the whole
#: ``Set-Cookie`` header (name and attributes too) stays under 2 KB.
JOURNEY_MAX_CHARS = 1800
_PATH_CHARS = 200
_TITLE_CHARS = 80


def _journey_wanted(response: Response) -> bool:
    """An HTML page the visitor asked for: not a static file, a redirect, an error
    or one of our own pages (the admin, the webhook)."""
    if response.status_code != 200 or response.mimetype != "text/html":
        return False
    endpoint = request.endpoint or ""
    return not (
        endpoint == "static"
        or endpoint.endswith(".static")
        or endpoint.startswith("amocrm")
    )


def _page_path(req: Request) -> str:
    query = req.query_string
    path = req.path
    if query:
        path = f"{path}?{query.decode('latin-1')}"
    return _clean(path, _PATH_CHARS)


def read_journey(req: Request, settings: Settings) -> dict[str, Any] | None:
    """The path cookie as stored (``{"s": started, "t": last seen, "l": landing,
    "r": referrer, "n": pages seen, "p": [[path, title, seconds in], ...]}``), or
    ``None`` when there is none that can be believed."""
    value = _signed(req, settings.journey_cookie, JOURNEY_SALT, limit=4096)
    # Signed, so written by this site (cleaned then): only its shape is checked.
    if (
        not isinstance(value, dict)
        or not isinstance(value.get("s"), int)
        or not isinstance(value.get("t"), int)
        or not isinstance(value.get("p"), list)
    ):
        return None
    pages = [
        p
        for p in value["p"][-(settings.journey_pages or 1) :]
        if isinstance(p, list) and len(p) == 3 and isinstance(p[2], int)
    ]
    return {
        "s": value["s"],
        "t": value["t"],
        "l": str(value.get("l") or ""),
        "r": str(value.get("r") or ""),
        "n": value.get("n") if isinstance(value.get("n"), int) else len(pages),
        "p": pages,
    }


def remember_page(response: Response, settings: Settings) -> None:
    """Add the current HTML page to the visitor's path cookie: the last
    ``AMOCRM_JOURNEY_PAGES`` pages (path, the title the view put in
    ``g.amocrm_page_title``, seconds since the visit began), the landing page, the
    referrer and when the visit began, signed, one cookie that never passes 2 KB
    (the oldest pages are dropped first)."""
    if not _journey_wanted(response):
        return
    secret = _secret()
    if secret is None:
        return
    now = int(time.time())
    stored = read_journey(request, settings)
    path = _page_path(request)
    title = _clean(g.get("amocrm_page_title") or "", _TITLE_CHARS)
    if stored is None or now - stored["t"] > VISIT_TIMEOUT:
        referrer = request.referrer or ""
        stored = {"s": now, "t": now, "l": path, "r": _clean(referrer, _PATH_CHARS)}
        stored.update(n=0, p=[])
    pages = stored["p"]
    pages.append([path, title, now - stored["s"]])
    del pages[: -settings.journey_pages]
    stored["t"] = now
    stored["n"] += 1
    serializer = _serializer(secret, JOURNEY_SALT)
    value = serializer.dumps(stored)
    while len(value) > JOURNEY_MAX_CHARS:
        if len(pages) > 1:
            del pages[0]
        elif stored["r"] or stored["l"]:
            stored["r"] = stored["l"] = ""
        else:
            pages[0][0] = pages[0][0][:50]
            pages[0][1] = ""
        value = serializer.dumps(stored)
    response.set_cookie(
        settings.journey_cookie,
        value,
        httponly=True,
        samesite="Lax",
        secure=request.is_secure,
    )


def _journey(req: Request, settings: Settings) -> dict[str, Any] | None:
    """The visitor's path as rules read it (``journey``, docs/rules.md)."""
    stored = read_journey(req, settings)
    if stored is None:
        return None
    now = int(time.time())
    start = stored["s"]
    return {
        "landing": stored["l"] or None,
        "referrer": stored["r"] or None,
        "started_at": start,
        "seconds": max(0, now - start),
        "count": stored["n"],
        "pages": [
            {"path": p, "title": t or None, "at": start + offset}
            for p, t, offset in stored["p"]
        ],
    }


def display_domain(host: str) -> str:
    """A host as a person reads it: an IDN (``xn--80aswg.xn--p1ai``) in Unicode
    (``сайт.рф``); any other host as it is."""
    if "xn--" not in host:
        return host
    try:
        return host.encode("ascii").decode("idna")
    except (UnicodeError, ValueError):
        return host


def read_visit(
    *,
    site_name: str | None,
    cookie: str,
    data: dict[str, Any] | None = None,
    cookies: frozenset[str] = frozenset(),
    settings: Settings | None = None,
) -> dict[str, Any]:
    """The context of an event: what the current request (if any) says of the
    visit. Only the cookies :func:`kept_cookie` allows are copied (``cookies``:
    those the rules name). ``settings`` names the ad marks and the path cookie
    (without: every preset mark, no path)."""
    context = blank_context(site_name, ip=server_ip())
    data = data or {}
    if not has_request_context():
        context["client"]["visitor_uid"] = _visitor_uid(data, {})
        return context

    req = request._get_current_object()  # type: ignore[attr-defined]
    ad_marks = settings.ad_marks if settings is not None else _DEFAULT_MARKS
    marks = _marks(ad_marks)
    stored, query = _campaign(req, cookie, ad_marks)
    names = marks.names
    last: dict[str, str] = {k: v for k, v in stored["last"].items() if k in names}
    last.update(query)
    first = {k: v for k, v in stored["first"].items() if k in names} or dict(query)
    # Marks not in the query nor the campaign cookie: the site's session, then
    # their own cookies (an analytics service's client id); both touches have them.
    extra: dict[str, str] = {}
    held = session
    if held:
        for name in names.intersection(held):
            value = held[name]
            if isinstance(value, str | int) and str(value).strip():
                extra[name] = _mark_value(name, value)
    jar: dict[str, str] = {}
    by_cookie = marks.by_cookie
    for name, value in req.cookies.items():
        if name == cookie:
            continue
        mark = by_cookie.get(name)
        if mark is not None and mark not in extra and value.strip():
            extra[mark] = _mark_value(mark, value)
        if len(jar) < _MAX_COOKIES and kept_cookie(name, cookies):
            jar[name] = _clean(value)
    for name, value in extra.items():
        last.setdefault(name, value)
        first.setdefault(name, value)
    headers = req.headers
    referrer = headers.get("Referer")

    host = req.host.split(":")[0]
    site = context["site"]
    site["domain"] = display_domain(host)
    site["host"] = host
    site["ip"] = req.environ.get("SERVER_ADDR") or server_ip()
    context["utm"] = last
    context["utm_first"] = first
    context["page"] = {
        "url": _clean(req.url, 2000),
        "referrer": _clean(referrer, 2000) if referrer else None,
        "title": _clean(data["page_title"], 500) if data.get("page_title") else None,
        "landing": stored["first"].get("landing"),
        "landing_referrer": stored["first"].get("referrer"),
    }
    context["client"] = {
        "ip": req.remote_addr,
        "user_agent": _clean(headers.get("User-Agent", ""), 500),
        "visitor_uid": _visitor_uid(data, jar),
    }
    context["cookies"] = jar
    if settings is not None and settings.journey_pages:
        journey = _journey(req, settings)
        if journey is not None:
            context["journey"] = journey
    return context


def decode_form(settings: Settings) -> None:
    """Read a urlencoded form posted in another charset (``windows-1251`` from an
    old page) in that charset: the one its ``Content-Type`` declares, else
    ``AMOCRM_FORM_ENCODING``. Werkzeug reads every form as UTF-8, which turns such a
    form's letters into U+FFFD; registered as a ``before_request`` handler, this
    reads the body first and sets ``request.form`` from it, so the view and capture
    both see the visitor's text. Multipart forms are left to werkzeug. Never fails
    a request: a body it cannot read is left to werkzeug."""
    environ = request.environ
    content_type = environ.get("CONTENT_TYPE")
    if not content_type or environ.get("REQUEST_METHOD") != "POST":
        return
    lowered = content_type.lower()
    if not lowered.startswith("application/x-www-form-urlencoded"):
        return
    charset = settings.form_encoding
    declared = None
    if "charset=" in lowered:
        declared = request.mimetype_params.get("charset")
    charset = declared or charset
    if charset is None:
        return
    try:
        charset = codecs.lookup(charset).name
        if charset == "utf-8":
            return
        form = _form_in(request.get_data(cache=True), charset, utf8_first=not declared)
        # what werkzeug's own form loading sets (a urlencoded body has no files)
        request.files = ImmutableMultiDict()
        request.form = form
    except Exception:  # noqa: BLE001 - an unknown charset, a broken body
        log.warning("Flask-AmoCRM could not read a form in %r", charset)


def _form_in(
    raw: bytes, charset: str, utf8_first: bool
) -> ImmutableMultiDict[str, str]:
    """A urlencoded body's fields, their bytes (percent-encoded or not) read in
    ``charset``; ``utf8_first`` (the charset is configured, not declared): a value
    that is valid UTF-8 is read as UTF-8 (a newer page of the same site)."""

    def text(part: bytes) -> str:
        value = unquote_to_bytes(part.replace(b"+", b" "))
        if utf8_first:
            try:
                return value.decode("utf-8")
            except UnicodeDecodeError:
                pass
        return value.decode(charset, "replace")

    pairs = []
    for part in raw.split(b"&"):
        if part:
            key, _, value = part.partition(b"=")
            pairs.append((text(key), text(value)))
    return ImmutableMultiDict(pairs)


def _visitor_uid(data: dict[str, Any], cookies: dict[str, str]) -> str | None:
    for key in _VISITOR_UID_KEYS:
        value = data.get(key) or cookies.get(key)
        if value:
            return _clean(value, 100)
    return None
