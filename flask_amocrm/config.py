"""The ``AMOCRM_*`` configuration keys: their defaults, and validation at ``init_app``.

Configuration is read once, when the extension is registered on an application. A key
this package does not know, a value of the wrong kind, or two settings that contradict
each other raise :class:`RuntimeError` with a message that names the key.
"""

from __future__ import annotations

import base64
import binascii
import codecs
import hashlib
import ipaddress
import json
import logging
import math
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import time
from typing import Any
from urllib.parse import urlsplit

from flask import Flask

from .vocabulary import (
    AD_MARK_PRESETS,
    DEFAULT_PHONE_REGION,
    LOCALES,
    MARK_NAME,
    AdMark,
)

#: Delivery modes: ``rq`` hands events to RQ workers, ``inline`` delivers in the web
#: process after the response, ``deferred`` only stores them for ``flask amocrm
#: process`` or the scheduler.
DELIVERY_MODES = ("rq", "inline", "deferred")

#: Every key this package reads, with its default. ``None`` means "not set".
DEFAULTS: dict[str, Any] = {
    "AMOCRM_BASE_URL": None,
    "AMOCRM_TOKEN": None,
    "AMOCRM_CLIENT_ID": None,
    "AMOCRM_CLIENT_SECRET": None,
    "AMOCRM_REDIRECT_URI": None,
    "AMOCRM_DATABASE_URI": None,
    "AMOCRM_REDIS_URL": None,
    "AMOCRM_QUEUE": "amocrm",
    "AMOCRM_DELIVERY": None,
    "AMOCRM_BATCH_SIZE": 250,
    "AMOCRM_WORKER_THREADS": 3,
    "AMOCRM_AGENT_INTERVAL": 300,
    "AMOCRM_INDEX_INTERVAL": 300,
    "AMOCRM_RATE_LIMIT": 7,
    "AMOCRM_RULES": None,
    "AMOCRM_SITE_NAME": None,
    "AMOCRM_ADMIN_EMAILS": (),
    "AMOCRM_LOG_REQUESTS": True,
    "AMOCRM_RETENTION_DAYS": 90,
    "AMOCRM_PHONE_REGION": DEFAULT_PHONE_REGION,
    "AMOCRM_UTM_COOKIE": "amocrm_utm",
    "AMOCRM_UTM_COOKIE_DAYS": 90,
    # The ad marks a visit keeps: preset names and custom marks (None: every preset).
    "AMOCRM_AD_MARKS": None,
    # The visitor's path: how many pages it keeps, and its cookie.
    "AMOCRM_JOURNEY_PAGES": 10,
    "AMOCRM_JOURNEY_COOKIE": "amocrm_journey",
    # The charset of forms that do not declare one (None: UTF-8, werkzeug's).
    "AMOCRM_FORM_ENCODING": None,
    "AMOCRM_TIMEOUT": 15,
    "AMOCRM_RETRY_MAX_DELAY": 3600,
    "AMOCRM_EVENT_FIELD": "Site event id",
    "AMOCRM_METADATA_TTL": 3600,
    "AMOCRM_ADMIN_AUTH": None,
    "AMOCRM_ADMIN_URL_PREFIX": "/amocrm/admin",
    "AMOCRM_LOCALE": None,
    "AMOCRM_KEEPALIVE_DAYS": 14,
    # Rules: dates and deadlines, uploaded files.
    "AMOCRM_TIMEZONE": "UTC",
    "AMOCRM_WORKDAY_END": "18:00",
    "AMOCRM_UPLOAD_FOLDER": None,
    "AMOCRM_UPLOAD_URL": None,
    "AMOCRM_UPLOAD_MAX_SIZE": 10 * 1024 * 1024,
    "AMOCRM_UPLOAD_EXTENSIONS": (
        "pdf",
        "txt",
        "csv",
        "rtf",
        "doc",
        "docx",
        "xls",
        "xlsx",
        "odt",
        "ods",
        "ppt",
        "pptx",
        "jpg",
        "jpeg",
        "png",
        "gif",
        "webp",
        "heic",
        "zip",
        "rar",
        "7z",
    ),
    # Capture: what one event may store (issue 11, items 8 and 9).
    "AMOCRM_MAX_VALUE_LENGTH": 65536,
    "AMOCRM_MAX_EVENT_SIZE": 1024 * 1024,
    "AMOCRM_UPLOAD_MAX_FILES": 10,
    "AMOCRM_UPLOAD_MAX_TOTAL": 50 * 1024 * 1024,
    # Encryption of the stored OAuth tokens (default: a key derived from SECRET_KEY).
    "AMOCRM_TOKEN_KEY": None,
    # Hooks and switches (docs/hooks.md): False holds every event's delivery.
    "AMOCRM_ENABLED": True,
    # The site's amoCRM source: its external_id (default: SERVER_NAME's host).
    "AMOCRM_SOURCE": None,
    # amoCRM -> site (docs/webhooks.md).
    "AMOCRM_WEBHOOK_PATH": "/amocrm/webhook",
    "AMOCRM_WEBHOOK_SECRET": None,
    "AMOCRM_WEBHOOK_URL": None,
    "AMOCRM_RECONCILE_INTERVAL": 300,
    # Consent evidence and spam checks, before delivery (docs/consent.md, docs/spam.md).
    "AMOCRM_CONSENT_FIELDS": None,
    "AMOCRM_HONEYPOT_FIELD": "amocrm_website",
    "AMOCRM_MIN_FILL_SECONDS": 3,
    "AMOCRM_FORM_STAMP_REQUIRED": False,
    "AMOCRM_SPAM_WINDOW": 3600,
    "AMOCRM_SPAM_MAX_PER_IP": 0,
    "AMOCRM_SPAM_MAX_PER_PHONE": 0,
    # Operations (docs/operations.md): the health and metrics endpoints (None: not
    # registered) and one JSON object a line in the logs.
    "AMOCRM_HEALTH_PATH": None,
    "AMOCRM_METRICS_PATH": None,
    "AMOCRM_LOG_JSON": False,
}

log = logging.getLogger("flask_amocrm")

_HOST_SUFFIXES = (".amocrm.ru", ".kommo.com", ".amocrm.com")
#: Uploads a browser would run as a page or script when the site serves them back
#: (stored XSS from the site's own origin): refused whatever the configuration says.
ACTIVE_EXTENSIONS = frozenset(
    {
        "html",
        "htm",
        "xhtml",
        "shtml",
        "svg",
        "svgz",
        "xml",
        "js",
        "mjs",
        "php",
        "phtml",
        "asp",
        "aspx",
        "jsp",
        "cgi",
        "pl",
        "py",
        "sh",
        "swf",
    }
)


@dataclass(frozen=True)
class Settings:
    """The validated configuration of one application. Every field comes from
    :data:`DEFAULTS` and the app's config: the defaults are written once, there."""

    base_url: str
    token: str | None = field(repr=False)
    client_id: str | None
    client_secret: str | None = field(repr=False)
    redirect_uri: str | None
    database_uri: str = field(repr=False)
    redis_url: str | None = field(repr=False)
    queue: str
    delivery: str
    batch_size: int
    #: Batches one worker process delivers at once (threads sharing the rate
    #: limit): while one waits for amoCRM, the next is claimed and planned.
    worker_threads: int
    agent_interval: int
    #: Seconds between two polls of amoCRM for changed contacts and companies, which
    #: keep the local contact index fresh; 0: no index, duplicates are searched.
    index_interval: int
    rate_limit: float
    rules: dict[str, Any]
    site_name: str | None
    admin_emails: tuple[str, ...]
    log_requests: bool
    retention_days: int
    phone_region: str
    utm_cookie: str
    utm_cookie_days: int
    timeout: float
    retry_max_delay: int
    event_field: str | None
    #: Seconds the cached account metadata (pipelines, users, fields) is kept.
    metadata_ttl: int
    #: ``callable() -> bool`` that allows the current user into the admin views;
    #: ``None``: the admin views are not registered.
    admin_auth: Callable[[], bool] | None
    #: Where the admin pages live (``/amocrm/admin``).
    admin_url_prefix: str
    #: The language of every text a person reads (``en`` or ``ru``); ``None``: the
    #: request's ``Accept-Language`` on pages, English elsewhere.
    locale: str | None
    #: Refresh the OAuth tokens when the refresh token is older than this many days
    #: (keeps a quiet site inside amoCRM's three-month refresh-token lifetime).
    keepalive_days: int
    #: The account's time zone (an IANA name): form dates and task deadlines are read
    #: in it.
    timezone: str
    #: When the working day ends (``HH:MM``), for the task deadline ``eod``.
    workday_end: time
    #: Where uploaded files are saved (default: the app's ``UPLOAD_FOLDER``); unset:
    #: uploads are not saved and only their names reach amoCRM.
    upload_folder: str | None
    #: The public address of that folder (absolute, or a path on this site).
    upload_url: str | None
    #: The largest upload saved, in bytes.
    upload_max_size: int
    #: File name extensions saved (lower case, without the dot).
    upload_extensions: tuple[str, ...]
    #: The longest text value an event stores, in characters (longer ones are cut,
    #: with a note in the event's log).
    max_value_length: int
    #: About how many characters of submitted data one event stores; fields past it
    #: are left out, with a note.
    max_event_size: int
    #: How many uploads of one event are saved; the rest are named, not saved.
    upload_max_files: int
    #: How many bytes of uploads one event saves in all.
    upload_max_total: int
    #: The rules file ``AMOCRM_RULES`` names (``None``: rules given as a mapping)
    #: and its modification time when it was read: workers reload a changed file.
    rules_file: str | None
    rules_mtime: float | None
    #: The Fernet keys of the stored OAuth tokens, newest first (from
    #: ``AMOCRM_TOKEN_KEY``, else derived from ``SECRET_KEY``); empty: none.
    token_keys: tuple[str, ...] = field(repr=False)
    #: ``AMOCRM_ENABLED``: ``False`` keeps capturing events and holds their delivery
    #: until it is ``True`` again.
    enabled: bool = True
    #: The ``external_id`` of the site's amoCRM source (``AMOCRM_SOURCE``, else the
    #: host of ``SERVER_NAME``); ``None``: leads name no source.
    source: str | None = None
    #: Where amoCRM posts webhooks (``<path>/<secret>``); the endpoint exists only
    #: when ``webhook_secret`` is set.
    webhook_path: str = "/amocrm/webhook"
    webhook_secret: str | None = field(default=None, repr=False)
    #: The site's public address, for ``flask amocrm webhooks install``.
    webhook_url: str | None = None
    #: Seconds between two reads of amoCRM's events log; 0: never.
    reconcile_interval: int = 300
    #: The ad marks a visit keeps (``AMOCRM_AD_MARKS``), in the order they are read.
    ad_marks: tuple[AdMark, ...] = tuple(
        m for marks in AD_MARK_PRESETS.values() for m in marks
    )
    #: The most pages the visitor's path keeps (0: the path is not kept).
    journey_pages: int = 10
    journey_cookie: str = "amocrm_journey"
    #: The charset forms without a declared one are read in (``None``: UTF-8).
    form_encoding: str | None = None
    #: The consent fields of forms and the version of the text each one agrees to
    #: (``None``: the site names none), in the order given (``AMOCRM_CONSENT_FIELDS``).
    consent_fields: tuple[tuple[str, str | None], ...] = ()
    #: The form field only a bot fills (``AMOCRM_HONEYPOT_FIELD``); ``None``: none.
    honeypot_field: str | None = "amocrm_website"
    #: A form sent sooner than this many seconds after its page was rendered (its
    #: signed stamp) is spam; 0: the fill time is not judged.
    min_fill_seconds: float = 3.0
    #: Whether a form without a stamp is spam: ``True`` for every form, or the form
    #: ids that must carry one (``AMOCRM_FORM_STAMP_REQUIRED``).
    stamp_required: bool | frozenset[str] = False
    #: The window of the per-IP and per-phone rates, in seconds.
    spam_window: int = 3600
    #: More forms than this from one IP (one phone) within the window are spam;
    #: 0: not counted.
    spam_max_per_ip: int = 0
    spam_max_per_phone: int = 0
    #: Where the health endpoint answers (``AMOCRM_HEALTH_PATH``); ``None``: it is
    #: not registered.
    health_path: str | None = None
    #: Where the Prometheus metrics are served (``AMOCRM_METRICS_PATH``); ``None``:
    #: no endpoint, and no process of the site counts anything for it.
    metrics_path: str | None = None
    #: ``AMOCRM_LOG_JSON``: the ``flask_amocrm`` loggers write one JSON object a line.
    log_json: bool = False

    def secrets(self) -> list[str | None]:
        """The configured values no log line, API log row or admin page may show:
        the long-lived token, the OAuth client secret and the webhook secret (the
        webhook's address, sent to amoCRM by ``flask amocrm webhooks``, holds it)."""
        return [self.token, self.client_secret, self.webhook_secret]


#: Seconds between two runs of the workers' periodic job (the tick).
TICK_SECONDS = 30
#: The shortest ``AMOCRM_AGENT_INTERVAL``: the agent runs on that tick.
MIN_AGENT_INTERVAL = TICK_SECONDS


def _fail(key: str, problem: str) -> RuntimeError:
    return RuntimeError(f"{key} {problem}")


def _int(config: dict[str, Any], key: str, minimum: int = 0) -> int:
    value = config[key]
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise _fail(key, f"must be a whole number, not {value!r}.")
    try:
        number = int(value)
    except ValueError:
        raise _fail(key, f"must be a whole number, not {value!r}.") from None
    if number < minimum:
        raise _fail(key, f"must be at least {minimum}, not {number}.")
    return number


#: The most batches one worker sends at once: the HTTP connections it keeps open
#: to amoCRM (a thread without one opens a new connection for every request).
MAX_WORKER_THREADS = 10


def _threads(config: dict[str, Any]) -> int:
    threads = _int(config, "AMOCRM_WORKER_THREADS", 1)
    if threads > MAX_WORKER_THREADS:
        raise _fail(
            "AMOCRM_WORKER_THREADS",
            f"must be at most {MAX_WORKER_THREADS}, not {threads}: more workers "
            "share the rate limit as well.",
        )
    return threads


def _number(config: dict[str, Any], key: str) -> float:
    """A finite number; a string from the environment (``"2.5"``) is read as one."""
    value = config[key]
    number: float | None = None
    if isinstance(value, int | float) and not isinstance(value, bool):
        number = float(value)
    elif isinstance(value, str):
        try:
            number = float(value.strip())
        except ValueError:
            number = None
    if number is None or not math.isfinite(number):
        raise _fail(key, f"must be a number, not {value!r}.")
    return number


def _bool(config: dict[str, Any], key: str) -> bool:
    value = config[key]
    if isinstance(value, str):
        lowered = value.strip().lower()
        if lowered in {"1", "true", "yes", "on"}:
            return True
        if lowered in {"0", "false", "no", "off", ""}:
            return False
        raise _fail(key, f"must be true or false, not {value!r}.")
    return bool(value)


def validate_base_url(url: Any) -> str:
    """Return the account URL without a trailing slash, or raise naming the key."""
    key = "AMOCRM_BASE_URL"
    if not url:
        raise _fail(
            key,
            "is not set. Set it to your account's address, for example "
            "'https://example.amocrm.ru', or to the bundled sandbox "
            "('python -m flask_amocrm.sandbox' prints its address).",
        )
    if not isinstance(url, str):
        raise _fail(key, f"must be a string, not {url!r}.")
    parts = urlsplit(url.strip())
    if parts.scheme not in {"http", "https"} or not parts.hostname:
        raise _fail(
            key,
            f"must be an http(s) address such as "
            f"'https://example.amocrm.ru', not {url!r}.",
        )
    # A fully qualified name ("example.amocrm.ru.") is the same host: without its
    # trailing dot, so the https rule below cannot be stepped around.
    host = parts.hostname.rstrip(".")
    is_account = host.endswith(_HOST_SUFFIXES)
    if is_account and parts.scheme != "https":
        raise _fail(key, f"must use https for an amoCRM account, not {url!r}.")
    if host in {"www.amocrm.ru", "www.kommo.com", "www.amocrm.com"}:
        raise _fail(
            key,
            "must be your account's own host (https://SUBDOMAIN.amocrm.ru), not www.",
        )
    if parts.path.rstrip("/") or parts.query:
        raise _fail(
            key,
            f"must be the account's address only, without a path: "
            f"{parts.scheme}://{parts.netloc}",
        )
    netloc = parts.netloc
    if parts.hostname.endswith("."):  # a name, not an IPv6 address in brackets
        userinfo, at, hostport = netloc.rpartition("@")
        name, colon, port = hostport.partition(":")
        netloc = userinfo + at + name.rstrip(".") + colon + port
    return f"{parts.scheme}://{netloc}"


def is_loopback_url(url: str) -> bool:
    """Whether ``url`` names this machine (the bundled sandbox, a local test)."""
    host = (urlsplit(url).hostname or "").rstrip(".")
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def load_rules(value: Any, root: str | None = None) -> dict[str, Any]:
    """Read ``AMOCRM_RULES``: a mapping, or a path to a TOML or JSON file. A relative
    path is taken from ``root`` (the app's ``root_path``, as ``config.from_file``
    does), so workers and cron jobs started elsewhere find the same file."""
    key = "AMOCRM_RULES"
    if value is None:
        return {}
    if isinstance(value, dict):
        return value
    if isinstance(value, str | os.PathLike):
        path = os.fspath(value)
        if root and not os.path.isabs(path):
            path = os.path.join(root, path)
        try:
            with open(path, "rb") as fp:
                raw = fp.read()
        except OSError as exc:
            raise _fail(key, f"names a file that cannot be read: {exc}") from None
        try:
            if path.endswith(".toml"):
                import tomllib

                return tomllib.loads(raw.decode("utf-8"))
            loaded: dict[str, Any] = json.loads(raw)
            return loaded
        except ValueError as exc:
            raise _fail(key, f"file {path!r} is not valid: {exc}") from None
    raise _fail(key, f"must be a dict or a path to a TOML or JSON file, not {value!r}.")


def rules_file_path(value: Any, root: str | None) -> str | None:
    """The path of the rules file ``AMOCRM_RULES`` names, or ``None``."""
    if not isinstance(value, str | os.PathLike):
        return None
    path = os.fspath(value)
    if root and not os.path.isabs(path):
        path = os.path.join(root, path)
    return path


def _rules_file(value: Any, root: str | None) -> dict[str, Any]:
    path = rules_file_path(value, root)
    try:
        mtime = os.stat(path).st_mtime if path else None
    except OSError:
        mtime = None
    return {"rules_file": path, "rules_mtime": mtime}


def log_json_wanted(app: Flask) -> bool:
    """``AMOCRM_LOG_JSON``, read before the other keys, so that what checking them
    logs is written as JSON already."""
    app.config.setdefault("AMOCRM_LOG_JSON", DEFAULTS["AMOCRM_LOG_JSON"])
    return _bool(app.config, "AMOCRM_LOG_JSON")


def read_settings(app: Flask) -> Settings:
    """Apply the defaults to ``app.config`` and return the validated settings."""
    for key, default in DEFAULTS.items():
        app.config.setdefault(key, default)
    unknown = sorted(
        key for key in app.config if key.startswith("AMOCRM_") and key not in DEFAULTS
    )
    if unknown:
        raise _fail(
            unknown[0],
            "is not a Flask-AmoCRM setting. Known keys: "
            + ", ".join(sorted(DEFAULTS))
            + ".",
        )
    config = app.config

    base_url = validate_base_url(config["AMOCRM_BASE_URL"])
    if is_loopback_url(base_url) and not (app.debug or app.testing):
        log.warning(
            "AMOCRM_BASE_URL is %s, an address on this machine (the sandbox?), "
            "and the app runs in production (neither DEBUG nor TESTING): events "
            "will not reach a real amoCRM account.",
            base_url,
        )
    token = config["AMOCRM_TOKEN"] or None
    client_id = config["AMOCRM_CLIENT_ID"] or None
    client_secret = config["AMOCRM_CLIENT_SECRET"] or None
    redirect_uri = config["AMOCRM_REDIRECT_URI"] or None
    if token and (client_id or client_secret):
        raise _fail(
            "AMOCRM_TOKEN",
            "and AMOCRM_CLIENT_ID/AMOCRM_CLIENT_SECRET are both set: use a long-lived "
            "token or OAuth, not both.",
        )
    if not token and not client_id:
        raise _fail(
            "AMOCRM_TOKEN",
            "is not set. Set AMOCRM_TOKEN to a long-lived token of a private "
            "integration, or set AMOCRM_CLIENT_ID, AMOCRM_CLIENT_SECRET and "
            "AMOCRM_REDIRECT_URI for OAuth.",
        )
    if client_id and not (client_secret and redirect_uri):
        missing = "AMOCRM_CLIENT_SECRET" if not client_secret else "AMOCRM_REDIRECT_URI"
        raise _fail(missing, "is required when AMOCRM_CLIENT_ID is set (OAuth).")

    redis_url = config["AMOCRM_REDIS_URL"] or None
    if redis_url is not None and not str(redis_url).startswith(
        ("redis://", "rediss://", "unix://")
    ):
        raise _fail("AMOCRM_REDIS_URL", f"must be a redis:// URL, not {redis_url!r}.")
    delivery = config["AMOCRM_DELIVERY"] or ("rq" if redis_url else "inline")
    if delivery not in DELIVERY_MODES:
        raise _fail(
            "AMOCRM_DELIVERY",
            f"must be one of {', '.join(DELIVERY_MODES)}, not {delivery!r}.",
        )
    if delivery == "rq" and not redis_url:
        raise _fail(
            "AMOCRM_DELIVERY",
            "is 'rq' but AMOCRM_REDIS_URL is not set: RQ needs Redis. Set "
            "AMOCRM_REDIS_URL, or use 'inline' or 'deferred'.",
        )

    database_uri = config["AMOCRM_DATABASE_URI"] or (
        "sqlite:///" + os.path.join(app.instance_path, "amocrm.sqlite3")
    )

    rate_limit = _number(config, "AMOCRM_RATE_LIMIT")
    if not 0 < rate_limit <= 50:
        raise _fail(
            "AMOCRM_RATE_LIMIT",
            f"must be above 0 and at most 50 requests per second, not {rate_limit}.",
        )

    emails = config["AMOCRM_ADMIN_EMAILS"] or ()
    if isinstance(emails, str):
        emails = [e for e in emails.replace(";", ",").split(",")]
    emails = tuple(e.strip() for e in emails if e and e.strip())
    for email in emails:
        if "@" not in email or any(c in email for c in "\r\n,<>"):
            raise _fail("AMOCRM_ADMIN_EMAILS", f"has an invalid address: {email!r}.")

    queue = config["AMOCRM_QUEUE"]
    if (
        not isinstance(queue, str)
        or not queue
        or not all(c.isalnum() or c in "_-." for c in queue)
    ):
        raise _fail("AMOCRM_QUEUE", f"must be a plain queue name, not {queue!r}.")

    timeout = _number(config, "AMOCRM_TIMEOUT")
    if timeout <= 0:
        raise _fail("AMOCRM_TIMEOUT", f"must be a positive number, not {timeout!r}.")

    return Settings(
        base_url=base_url,
        token=token,
        client_id=client_id,
        client_secret=client_secret,
        redirect_uri=redirect_uri,
        database_uri=database_uri,
        redis_url=redis_url,
        queue=queue,
        delivery=delivery,
        batch_size=_int(config, "AMOCRM_BATCH_SIZE", 1),
        worker_threads=_threads(config),
        agent_interval=_agent_interval(config),
        index_interval=_index_interval(config),
        rate_limit=rate_limit,
        rules=load_rules(config["AMOCRM_RULES"], app.root_path),
        site_name=config["AMOCRM_SITE_NAME"],
        admin_emails=emails,
        log_requests=_bool(config, "AMOCRM_LOG_REQUESTS"),
        retention_days=_int(config, "AMOCRM_RETENTION_DAYS", 1),
        phone_region=str(config["AMOCRM_PHONE_REGION"]).upper(),
        utm_cookie=str(config["AMOCRM_UTM_COOKIE"]),
        utm_cookie_days=_int(config, "AMOCRM_UTM_COOKIE_DAYS", 1),
        timeout=timeout,
        retry_max_delay=_int(config, "AMOCRM_RETRY_MAX_DELAY", 1),
        event_field=str(config["AMOCRM_EVENT_FIELD"]).strip() or None
        if config["AMOCRM_EVENT_FIELD"]
        else None,
        metadata_ttl=_int(config, "AMOCRM_METADATA_TTL", 1),
        admin_auth=_admin_auth(config["AMOCRM_ADMIN_AUTH"]),
        **_admin_settings(config),
        keepalive_days=_int(config, "AMOCRM_KEEPALIVE_DAYS", 1),
        token_keys=_token_keys(config, oauth=bool(client_id)),
        enabled=_bool(config, "AMOCRM_ENABLED"),
        source=_source(app, config["AMOCRM_SOURCE"]),
        **_rules_file(config["AMOCRM_RULES"], app.root_path),
        **_rules_settings(app, config),
        **_webhook_settings(config),
        **_visit_settings(config),
        **_screening_settings(config),
        **_operations_settings(config),
    )


def _visit_settings(config: Any) -> dict[str, Any]:
    """The ad marks, the visitor's path and the forms' charset."""
    return {
        "ad_marks": _ad_marks(config["AMOCRM_AD_MARKS"]),
        "journey_pages": _int(config, "AMOCRM_JOURNEY_PAGES", 0),
        "journey_cookie": _cookie_name(config, "AMOCRM_JOURNEY_COOKIE"),
        "form_encoding": _form_encoding(config["AMOCRM_FORM_ENCODING"]),
    }


def _ad_marks(value: Any) -> tuple[AdMark, ...]:
    """``AMOCRM_AD_MARKS``: a list (or a comma-separated text) of preset names
    (``"*"``: every preset) and custom mark names; ``None``: every preset."""
    if value is None:
        return tuple(m for marks in AD_MARK_PRESETS.values() for m in marks)
    if isinstance(value, str):
        value = value.replace(",", " ").split()
    if not isinstance(value, list | tuple):
        raise _fail(
            "AMOCRM_AD_MARKS",
            f"must be a list of preset and mark names, not {value!r}.",
        )
    found: dict[str, AdMark] = {}
    for name in value:
        if name == "*":
            marks = tuple(m for ms in AD_MARK_PRESETS.values() for m in ms)
        elif name in AD_MARK_PRESETS:
            marks = AD_MARK_PRESETS[name]
        elif isinstance(name, str) and MARK_NAME.match(name):
            marks = (AdMark(name, name, name),)
        else:
            raise _fail(
                "AMOCRM_AD_MARKS",
                f"has {name!r}: neither a preset ("
                + ", ".join(AD_MARK_PRESETS)
                + ", or '*' for all) nor a mark name (letters, digits, '_', '.', "
                "'-', at most 50).",
            )
        for mark in marks:
            found.setdefault(mark.name, mark)
    return tuple(found.values())


def _cookie_name(config: Any, key: str) -> str:
    name = config[key]
    if not isinstance(name, str) or not MARK_NAME.match(name):
        raise _fail(key, f"must be a cookie name (letters, digits, '_'), not {name!r}.")
    return name


def _form_encoding(value: Any) -> str | None:
    if not value:
        return None
    try:
        return codecs.lookup(str(value)).name
    except LookupError:
        raise _fail(
            "AMOCRM_FORM_ENCODING",
            f"must be a charset Python knows (such as 'windows-1251'), not {value!r}.",
        ) from None


def _screening_settings(config: Any) -> dict[str, Any]:
    """Consent fields and the spam checks (docs/consent.md, docs/spam.md)."""
    honeypot = config["AMOCRM_HONEYPOT_FIELD"] or None
    if honeypot is not None and (not isinstance(honeypot, str) or not honeypot.strip()):
        raise _fail("AMOCRM_HONEYPOT_FIELD", f"must be a field name, not {honeypot!r}.")
    min_fill = _number(config, "AMOCRM_MIN_FILL_SECONDS")
    if min_fill < 0:
        raise _fail(
            "AMOCRM_MIN_FILL_SECONDS", f"must be 0 or more seconds, not {min_fill!r}."
        )
    required = config["AMOCRM_FORM_STAMP_REQUIRED"]
    stamp_required: bool | frozenset[str]
    if isinstance(required, list | tuple | set | frozenset):
        if not all(isinstance(form, str) and form for form in required):
            raise _fail(
                "AMOCRM_FORM_STAMP_REQUIRED",
                f"must be true, false or a list of form ids, not {required!r}.",
            )
        stamp_required = frozenset(required)
    else:
        stamp_required = _bool(config, "AMOCRM_FORM_STAMP_REQUIRED")
    return {
        "consent_fields": _consent_fields(config["AMOCRM_CONSENT_FIELDS"]),
        "honeypot_field": honeypot.strip() if honeypot else None,
        "min_fill_seconds": min_fill,
        "stamp_required": stamp_required,
        "spam_window": _int(config, "AMOCRM_SPAM_WINDOW", 1),
        "spam_max_per_ip": _int(config, "AMOCRM_SPAM_MAX_PER_IP", 0),
        "spam_max_per_phone": _int(config, "AMOCRM_SPAM_MAX_PER_PHONE", 0),
    }


def _consent_fields(value: Any) -> tuple[tuple[str, str | None], ...]:
    """``AMOCRM_CONSENT_FIELDS``: a list of field names, or a mapping of field name
    to the version (or name, or hash) of the consent text it agrees to."""
    key = "AMOCRM_CONSENT_FIELDS"
    if not value:
        return ()
    if isinstance(value, str):
        value = [value]
    pairs: list[tuple[Any, Any]]
    if isinstance(value, Mapping):
        pairs = list(value.items())
    elif isinstance(value, list | tuple):
        pairs = [(name, None) for name in value]
    else:
        raise _fail(key, f"must be a list of field names or a mapping, not {value!r}.")
    fields: list[tuple[str, str | None]] = []
    for name, version in pairs:
        if not isinstance(name, str) or not name.strip():
            raise _fail(key, f"has a field name that is not a name: {name!r}.")
        if version is not None and not isinstance(version, str):
            raise _fail(
                key,
                f"names a version of {name!r} that is not text: {version!r} (give "
                "the consent text's version, name or hash as a string).",
            )
        fields.append((name.strip(), version.strip() or None if version else None))
    return tuple(fields)


#: The shortest ``AMOCRM_WEBHOOK_SECRET``: it is all that guards the endpoint.
MIN_SECRET_LENGTH = 16


def _site_path(config: Any, key: str, example: str) -> str:
    """A path on the site where an endpoint of this package answers, without a
    trailing ``/``."""
    path = config[key]
    if (
        not isinstance(path, str)
        or not path.startswith("/")
        or path.rstrip("/") == ""
        or any(c in path for c in "<>?#% \t\r\n")
    ):
        raise _fail(
            key, f"must be a path on the site such as {example!r}, not {path!r}."
        )
    return "/" + path.strip("/")


def _operations_settings(config: Any) -> dict[str, Any]:
    """The health and metrics endpoints (each off when its key is ``None``), and the
    JSON logs."""
    paths = {
        name: None
        if config[key] is None
        else _site_path(config, key, f"/amocrm/{name.partition('_')[0]}")
        for name, key in (
            ("health_path", "AMOCRM_HEALTH_PATH"),
            ("metrics_path", "AMOCRM_METRICS_PATH"),
        )
    }
    if paths["health_path"] and paths["health_path"] == paths["metrics_path"]:
        raise _fail(
            "AMOCRM_METRICS_PATH",
            f"is the same path as AMOCRM_HEALTH_PATH ({paths['health_path']!r}): "
            "give each endpoint its own.",
        )
    return {**paths, "log_json": _bool(config, "AMOCRM_LOG_JSON")}


def _webhook_settings(config: Any) -> dict[str, Any]:
    """The settings of the way back (amoCRM -> site): endpoint, secret, address,
    reconciliation."""
    path = _site_path(config, "AMOCRM_WEBHOOK_PATH", "/amocrm/webhook")
    secret = config["AMOCRM_WEBHOOK_SECRET"] or None
    if secret is not None and (
        not isinstance(secret, str)
        or len(secret) < MIN_SECRET_LENGTH
        or not all(c.isalnum() or c in "-_" for c in secret)
    ):
        raise _fail(
            "AMOCRM_WEBHOOK_SECRET",
            f"must be at least {MIN_SECRET_LENGTH} letters, digits, '-' or '_' "
            "(for example secrets.token_urlsafe(32)): it is the only thing that "
            "keeps strangers from posting to the webhook endpoint.",
        )
    url = config["AMOCRM_WEBHOOK_URL"] or None
    if url is not None:
        parts = urlsplit(str(url))
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise _fail(
                "AMOCRM_WEBHOOK_URL",
                "must be the site's public address, such as "
                f"'https://shop.example.com', not {url!r}.",
            )
        url = str(url).rstrip("/")
    interval = _int(config, "AMOCRM_RECONCILE_INTERVAL", 0)
    if 0 < interval < TICK_SECONDS:
        raise _fail(
            "AMOCRM_RECONCILE_INTERVAL",
            f"must be 0 (off) or at least {TICK_SECONDS} seconds, not {interval}: "
            "the events log is read on the worker's tick.",
        )
    return {
        "webhook_path": path,
        "webhook_secret": secret,
        "webhook_url": url,
        "reconcile_interval": interval,
    }


#: The longest ``AMOCRM_SOURCE``.
SOURCE_LIMIT = 100


def _source(app: Flask, value: Any) -> str | None:
    """The site's source ``external_id``: ``AMOCRM_SOURCE``; unset, the host of
    ``SERVER_NAME`` (never a request's ``Host`` header: the visitor chooses that);
    ``False``, or unset without ``SERVER_NAME``: no source."""
    key = "AMOCRM_SOURCE"
    if value is False:
        return None
    if value is None:
        server = str(app.config.get("SERVER_NAME") or "").strip()
        host = urlsplit(f"//{server}").hostname if server else None
        return host[:SOURCE_LIMIT] if host else None
    if not isinstance(value, str) or not value.strip():
        raise _fail(
            key, f"must be a text (the source's external_id) or False, not {value!r}."
        )
    text = value.strip()
    if len(text) > SOURCE_LIMIT or any(c in text for c in "\r\n\t"):
        raise _fail(
            key,
            f"must be one line of at most {SOURCE_LIMIT} characters, not {value!r}.",
        )
    return text


def _agent_interval(config: Any) -> int:
    seconds = _int(config, "AMOCRM_AGENT_INTERVAL", 1)
    if seconds < MIN_AGENT_INTERVAL:
        raise _fail(
            "AMOCRM_AGENT_INTERVAL",
            f"must be at least {MIN_AGENT_INTERVAL} seconds, not {seconds}: the agent "
            f"runs on the worker's tick, which comes every {MIN_AGENT_INTERVAL} "
            "seconds, so a shorter interval would not be kept.",
        )
    return seconds


def _index_interval(config: Any) -> int:
    seconds = _int(config, "AMOCRM_INDEX_INTERVAL", 0)
    if 0 < seconds < TICK_SECONDS:
        raise _fail(
            "AMOCRM_INDEX_INTERVAL",
            f"must be 0 (no contact index) or at least {TICK_SECONDS} seconds, not "
            f"{seconds}: the index is polled on the worker's tick, which comes every "
            f"{TICK_SECONDS} seconds.",
        )
    return seconds


#: Mixed into a passphrase or SECRET_KEY before it becomes a Fernet key, so the key
#: that encrypts the tokens is never the one that signs the site's sessions.
_KEY_LABEL = b"flask-amocrm token encryption\x00"


def _token_keys(config: Any, *, oauth: bool) -> tuple[str, ...]:
    """The Fernet keys for the stored tokens: ``AMOCRM_TOKEN_KEY`` (a Fernet key,
    any other secret string, or a list of them, newest first, to rotate), else one
    derived from ``SECRET_KEY``. OAuth without either is refused."""
    value = config["AMOCRM_TOKEN_KEY"]
    if value:
        secrets = [value] if isinstance(value, str | bytes) else list(value)
    elif config.get("SECRET_KEY"):
        # The current key first (it encrypts), then Flask's fallbacks: tokens
        # stored before a SECRET_KEY rotation still read, and are sealed anew.
        secrets = [config["SECRET_KEY"], *(config.get("SECRET_KEY_FALLBACKS") or [])]
    elif oauth:
        raise _fail(
            "AMOCRM_TOKEN_KEY",
            "is not set and neither is SECRET_KEY: the OAuth tokens are stored "
            "encrypted, with AMOCRM_TOKEN_KEY or a key derived from SECRET_KEY.",
        )
    else:
        return ()
    keys = []
    for secret in secrets:
        if not isinstance(secret, str | bytes) or not secret:
            raise _fail(
                "AMOCRM_TOKEN_KEY", "must be a secret string or a list of them."
            )
        raw = secret.encode() if isinstance(secret, str) else secret
        try:
            is_fernet_key = len(base64.urlsafe_b64decode(raw)) == 32 and len(raw) == 44
        except (binascii.Error, ValueError):
            is_fernet_key = False
        if is_fernet_key:
            keys.append(raw.decode())
        else:
            digest = hashlib.sha256(_KEY_LABEL + raw).digest()
            keys.append(base64.urlsafe_b64encode(digest).decode())
    return tuple(keys)


def _admin_auth(value: Any) -> Callable[[], bool] | None:
    if value is None:
        return None
    if not callable(value):
        raise _fail(
            "AMOCRM_ADMIN_AUTH",
            f"must be a callable returning True for allowed users, not {value!r}.",
        )
    return value  # type: ignore[no-any-return]


def _admin_settings(config: Any) -> dict[str, Any]:
    prefix = config["AMOCRM_ADMIN_URL_PREFIX"]
    if (
        not isinstance(prefix, str)
        or not prefix.startswith("/")
        or prefix.endswith("/")
        or any(c in prefix for c in '?#<>"\\ ')
    ):
        raise _fail(
            "AMOCRM_ADMIN_URL_PREFIX",
            f"must be a path such as '/amocrm/admin' (a leading '/', none at the "
            f"end), not {prefix!r}.",
        )
    locale = config["AMOCRM_LOCALE"] or None
    if locale is not None and locale not in LOCALES:
        raise _fail(
            "AMOCRM_LOCALE",
            f"must be one of {', '.join(LOCALES)} (or None: the browser's "
            f"language), not {locale!r}.",
        )
    return {"admin_url_prefix": prefix, "locale": locale}


def _upload_url_on_site(app: Flask, path: str) -> str:
    """``AMOCRM_UPLOAD_URL`` given as a path on this site, made absolute with the
    site's configured ``SERVER_NAME``: never with a request's ``Host`` header, which
    the visitor chooses, so a link a manager clicks in amoCRM cannot point elsewhere."""
    server = str(app.config.get("SERVER_NAME") or "").strip()
    if not server or "/" in server:
        raise _fail(
            "AMOCRM_UPLOAD_URL",
            f"is a path ({path!r}): set SERVER_NAME to the site's host "
            "('shop.example.com'), or give AMOCRM_UPLOAD_URL with its host "
            "('https://shop.example.com/uploads'), so links in amoCRM never take "
            "the host a visitor sent.",
        )
    scheme = str(app.config.get("PREFERRED_URL_SCHEME") or "http")
    root = str(app.config.get("APPLICATION_ROOT") or "/").strip("/")
    prefix = f"/{root}" if root else ""
    return f"{scheme}://{server}{prefix}/{path.lstrip('/')}"


def _rules_settings(app: Flask, config: Any) -> dict[str, Any]:
    """The settings rules and uploads use: time zone, working day, upload folder."""
    from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

    timezone = str(config["AMOCRM_TIMEZONE"] or "UTC")
    try:
        ZoneInfo(timezone)
    except (ZoneInfoNotFoundError, ValueError):
        raise _fail(
            "AMOCRM_TIMEZONE",
            f"must be a time zone name such as 'Europe/Moscow', not {timezone!r}.",
        ) from None
    workday_end = str(config["AMOCRM_WORKDAY_END"]).strip()
    hours, _, minutes = workday_end.partition(":")
    if not (
        hours.isdigit() and minutes.isdigit() and int(hours) < 24 and int(minutes) < 60
    ):
        raise _fail(
            "AMOCRM_WORKDAY_END",
            f"must be a time such as '18:00', not {workday_end!r}.",
        )
    folder = config["AMOCRM_UPLOAD_FOLDER"] or app.config.get("UPLOAD_FOLDER") or None
    url = config["AMOCRM_UPLOAD_URL"] or None
    if folder and not url:
        raise _fail(
            "AMOCRM_UPLOAD_URL",
            "is required with AMOCRM_UPLOAD_FOLDER: the "
            "address the folder is served at ('/uploads' or "
            "'https://files.example.com/'), so amoCRM gets working links.",
        )
    if url and "://" not in str(url):
        url = _upload_url_on_site(app, str(url))
    extensions = config["AMOCRM_UPLOAD_EXTENSIONS"] or ()
    if isinstance(extensions, str):
        extensions = extensions.replace(";", ",").split(",")
    extensions = [
        str(e).strip().lower().lstrip(".") for e in extensions if str(e).strip()
    ]
    served_as_code = sorted(set(extensions) & ACTIVE_EXTENSIONS)
    if served_as_code:
        raise _fail(
            "AMOCRM_UPLOAD_EXTENSIONS",
            f"lists .{served_as_code[0]}: such files would be served as pages "
            "or scripts from the site's own address; accept them zipped.",
        )
    return {
        "timezone": timezone,
        "workday_end": time(int(hours), int(minutes)),
        "upload_folder": os.fspath(folder) if folder else None,
        "upload_url": str(url) if url else None,
        "upload_max_size": _int(config, "AMOCRM_UPLOAD_MAX_SIZE", 1),
        "upload_extensions": tuple(extensions),
        "max_value_length": _int(config, "AMOCRM_MAX_VALUE_LENGTH", 100),
        "max_event_size": _int(config, "AMOCRM_MAX_EVENT_SIZE", 10_000),
        "upload_max_files": _int(config, "AMOCRM_UPLOAD_MAX_FILES", 0),
        "upload_max_total": _int(config, "AMOCRM_UPLOAD_MAX_TOTAL", 0),
    }
