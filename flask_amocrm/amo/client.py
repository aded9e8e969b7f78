"""A small amoCRM API v4 client on :mod:`requests`.

One :class:`AmoClient` talks to one account. Before each request it waits for its slot
in the account's shared rate limit; it sends the token its provider gives it and, on a
401, asks the provider once for a fresh one. Every non-success answer becomes a typed
:class:`~flask_amocrm.errors.APIError`; 204 is an empty result (``None``).

The verbs (:meth:`AmoClient.read`, :meth:`~AmoClient.search`,
:meth:`~AmoClient.create_complex`, :meth:`~AmoClient.add_notes` ...) are what the
delivery code asks of amoCRM: they build every ``/api/v4`` path and its filters, and
return the parsed items. Batch writes go through :meth:`AmoClient.write_many`.

Retries, all bounded:

* 429: every method, because amoCRM's gateway refused the request before it was
  processed. The shared limiter is told to slow down, then the client sleeps with
  jitter.
* 5xx, timeouts, dropped connections: GET only. A POST or PATCH may have been carried
  out, so it is retried only when the connection was never made.
* 504 on a batch write: the batch is split in halves, each sent again (amoCRM's
  documentation advises it for a batch that times out).
"""

from __future__ import annotations

import base64
import binascii
import copy
import json
import logging
import random
import time
from collections.abc import Mapping, Sequence
from typing import Any, Protocol
from urllib.parse import urlencode, urlsplit

import requests

from ..errors import (
    AccountBlockedError,
    APIError,
    AuthError,
    ForbiddenError,
    NotFoundError,
    PaymentRequiredError,
    RateLimitError,
    ServerError,
    TransportError,
    ValidationError,
)
from ..hooks import ApiCall, call_events
from .apilog import ApiLogSink, Redactor
from .ratelimit import RateLimiter

log = logging.getLogger("flask_amocrm.amo")

#: Seconds to wait for a TCP connection to amoCRM.
CONNECT_TIMEOUT = 5.0
#: amoCRM takes at most this many entities per write (and 50 is its advice): the
#: light items, notes, tasks and links, go this many a call.
WRITE_LIMIT = 250
#: Entities that carry custom fields (leads, contacts, companies, incoming leads)
#: go at most this many a write, as amoCRM advises; it is also the limit of
#: ``/leads/complex``.
BATCH_SIZE = 50
#: The API's largest page for lists.
PAGE_LIMIT = 250
#: Entity ids per read filtered by them (``filter[entity_id][]``): the filter is in
#: the URL, and 100 eight-digit ids make about 3.7 KB of it, under the 8 KB request
#: line many front ends take (250 would make 9.3 KB).
IDS_PER_READ = 100
#: The largest page of the events log on amocrm.ru (Kommo allows 250).
EVENTS_PAGE_LIMIT = 100
#: Where every path of the API starts.
API = "/api/v4"
_IDEMPOTENT = frozenset({"GET", "HEAD", "OPTIONS"})


def token_claims(token: str | None) -> dict[str, Any]:
    """The claims of an amoCRM token (a JWT: ``exp``, ``api_domain``, ...), read
    without checking the signature (amoCRM does not publish its key; the token
    is only ever sent back to amoCRM); ``{}`` for a token that is not a JWT."""
    parts = (token or "").split(".")
    if len(parts) != 3:
        return {}
    try:
        raw = base64.urlsafe_b64decode(parts[1] + "=" * (-len(parts[1]) % 4))
        claims = json.loads(raw)
    except (ValueError, binascii.Error):
        return {}
    return claims if isinstance(claims, dict) else {}


class TokenProvider(Protocol):
    """Where the client gets its bearer token (see :mod:`flask_amocrm.amo.auth`)."""

    def access_token(self) -> str:
        """The token to send now; raises :class:`AuthError` if there is none."""

    def refresh(self, rejected: str) -> str | None:
        """amoCRM refused ``rejected`` (401): a better token, or ``None`` if there
        is no way to get one."""


class CallObserver(Protocol):
    """What the client calls around each request (the site's API-call hooks,
    :class:`flask_amocrm.hooks.Hooks`)."""

    @property
    def observes(self) -> bool:
        """Whether there is anything to call (else no copy of the body is made)."""

    def before_call(self, call: ApiCall) -> None:
        """Before the request: may change ``call.params`` and ``call.body``, or
        raise :class:`~flask_amocrm.errors.CallVetoed` (nothing is sent)."""

    def after_call(self, call: ApiCall) -> None:
        """After it, with ``call.status`` and ``call.answer`` (or ``call.error``)."""


class CallMeter(Protocol):
    """What counts the requests for the metrics (:class:`flask_amocrm.meter.Meter`)."""

    def api_call(
        self, method: str, path: str, status: int | None, waited: float
    ) -> None:
        """One request sent: its answer's status (``None``: no answer) and the
        seconds it waited for its slot in the rate limit. Never raises."""


class LongLivedToken:
    """A fixed token, such as the long-lived token of a private integration: it
    cannot be refreshed, so a 401 is final."""

    def __init__(self, token: str | None) -> None:
        self._token = token

    def access_token(self) -> str:
        """The token; :class:`AuthError` if none was given, or if it is a JWT whose
        ``exp`` has passed (amoCRM would refuse it: no request is sent)."""
        if not self._token:
            raise AuthError(
                "amoCRM is not connected: no access token is set "
                "(AMOCRM_TOKEN, or 'flask amocrm auth' for OAuth)"
            )
        exp = token_claims(self._token).get("exp")
        if (
            isinstance(exp, int | float)
            and not isinstance(exp, bool)
            and exp < time.time()
        ):
            raise AuthError(
                "the long-lived token (AMOCRM_TOKEN) expired at "
                f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime(exp))}: an admin "
                "of the account makes a new one ('Keys and scopes' of the private "
                "integration) and sets AMOCRM_TOKEN"
            )
        return self._token

    def refresh(self, rejected: str) -> str | None:
        """A long-lived token cannot be refreshed: amoCRM has no refresh token for
        it."""
        return None


class AmoClient:
    """Talk to one amoCRM account.

    ``token`` is a token string or a :class:`TokenProvider`. ``limiter`` is the
    account's shared :class:`~flask_amocrm.amo.ratelimit.RateLimiter` (none: no
    limit); ``sink`` writes the API log rows. ``retries`` bounds each kind of retry;
    ``backoff`` is the first back-off step in seconds (doubled each time, with jitter).
    ``observer`` is called around each request sent (the API-call hooks);
    ``meter`` counts each one for the metrics.
    """

    def __init__(
        self,
        base_url: str,
        token: str | TokenProvider | None,
        *,
        timeout: float = 15.0,
        connect_timeout: float = CONNECT_TIMEOUT,
        limiter: RateLimiter | None = None,
        sink: ApiLogSink | None = None,
        session: requests.Session | None = None,
        retries: int = 3,
        backoff: float = 0.5,
        rate_limit_backoff: float = 1.0,
        redactor: Redactor | None = None,
        observer: CallObserver | None = None,
        meter: CallMeter | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.observer = observer
        self.meter = meter
        self.tokens: TokenProvider = (
            token
            if token is not None and not isinstance(token, str)
            else LongLivedToken(token)
        )
        self.timeout = timeout
        self.connect_timeout = connect_timeout
        self.limiter = limiter
        self.sink = sink
        self.retries = retries
        self.backoff = backoff
        self.rate_limit_backoff = rate_limit_backoff
        self.redactor = redactor or Redactor()
        self._drive_url: str | None = None
        self.session = session or requests.Session()
        self.session.headers["User-Agent"] = "flask-amocrm"
        # requests would read ~/.netrc and proxies for every call otherwise.
        self.session.trust_env = False

    # -- one call ----------------------------------------------------------------------

    def request(
        self,
        method: str,
        path: str,
        *,
        params: dict[str, Any] | None = None,
        json_body: Any = None,
        auth: bool = True,
        oauth: bool = False,
        host: str | None = None,
        headers: dict[str, str] | None = None,
        data: bytes | None = None,
    ) -> Any:
        """Make one call, with the retries described in the module docstring; return
        the parsed JSON body, or ``None`` for 204.

        ``auth=False`` sends no token (the OAuth token endpoint); ``oauth=True`` masks
        the OAuth secrets in the body and answer, ``code`` included. ``host``
        (``https://api-b.amocrm.ru``, the drive's host) sends to another host than the
        account's, with the extra ``headers``. ``data`` is a raw body (a part of a
        file) sent instead of JSON; the logs show its size only.
        """
        extra = dict(headers or {})
        method = method.upper()
        failures = 0  # transport errors and 5xx
        limited = 0  # 429 answers
        refreshed = False
        token: str | None = None
        while True:
            sent_headers: dict[str, str] = dict(extra)
            if auth:
                token = self.tokens.access_token()
                self.redactor.add(token)
                sent_headers["Authorization"] = f"Bearer {token}"
            call = self._before(method, path, params, json_body)
            try:
                response = self._exchange(
                    method,
                    path,
                    call.params if call is not None else params,
                    call.body if call is not None else json_body,
                    sent_headers,
                    oauth=oauth,
                    host=host,
                    raw=data,
                )
            except TransportError as exc:
                self._after(call, error=str(exc))
                if (method in _IDEMPOTENT or not exc.sent) and failures < self.retries:
                    failures += 1
                    self._sleep(self.backoff, failures, f"{method} {path}: {exc}")
                    continue
                raise
            status = response.status_code
            body = _body(response) if status != 204 else None
            self._after(call, status=status, answer=body)
            if 200 <= status < 300:
                return body
            if status == 401 and auth and not refreshed and token is not None:
                refreshed = True
                if self.tokens.refresh(token) is not None:
                    continue
            elif status == 429:
                if self.limiter is not None:
                    self.limiter.penalize(self.rate_limit_backoff)
                if limited < self.retries:
                    limited += 1
                    self._sleep(
                        self.rate_limit_backoff,
                        limited,
                        f"{method} {path}: 429 Too Many Requests",
                    )
                    continue
            elif status >= 500 and method in _IDEMPOTENT and failures < self.retries:
                failures += 1
                self._sleep(self.backoff, failures, f"{method} {path}: HTTP {status}")
                continue
            raise error_for(status, body, f"{method} {path}", html=_is_html(response))

    def _before(
        self, method: str, path: str, params: dict[str, Any] | None, body: Any
    ) -> ApiCall | None:
        """Show the request to the observer (each one sent, retries included),
        with copies of its query and body that the observer may change."""
        if self.observer is None or not self.observer.observes:
            return None
        call = ApiCall(
            method=method,
            path=path,
            params=copy.deepcopy(params),
            body=copy.deepcopy(body),
            events=call_events.get(),
        )
        self.observer.before_call(call)
        return call

    def _after(self, call: ApiCall | None, **outcome: Any) -> None:
        if call is None or self.observer is None:
            return
        for name, value in outcome.items():
            setattr(call, name, copy.deepcopy(value))
        self.observer.after_call(call)

    def _sleep(self, base: float, attempt: int, why: str) -> None:
        # Half fixed, half random: never a tight loop, never all workers in step.
        ceiling = base * 2 ** (attempt - 1)
        delay = ceiling / 2 + random.uniform(0, ceiling / 2)
        log.warning("%s; retry %d in %.2f s", why, attempt, delay)
        time.sleep(delay)

    def _exchange(
        self,
        method: str,
        path: str,
        params: dict[str, Any] | None,
        json_body: Any,
        headers: dict[str, str],
        *,
        oauth: bool,
        host: str | None = None,
        raw: bytes | None = None,
    ) -> requests.Response:
        """Send once (after waiting for a slot) and log what happened."""
        base = (host or self.base_url).rstrip("/")
        if host:
            path_shown = f"{base}{path}"
        else:
            path_shown = path
        shown = path_shown + (f"?{self.redactor.query(params)}" if params else "")
        # Python logs get the path without what was searched for (a phone, an
        # e-mail): they outlive AMOCRM_RETENTION_DAYS. The API log keeps it all.
        logged = path_shown + (f"?{_log_query(params)}" if params else "")
        try:
            data = (
                None
                if json_body is None
                else json.dumps(json_body, ensure_ascii=False, allow_nan=False).encode()
            )
        except (UnicodeError, ValueError, OverflowError, TypeError) as exc:
            # A lone surrogate or a non-finite number: never sent, never retried.
            raise ValidationError(
                f"{method} {path}: the body cannot be sent as JSON: "
                f"{type(exc).__name__}",
                status=None,
            ) from None
        if raw is not None:
            data = raw
        # Last, right before sending: the moment the limiter grants is the moment
        # amoCRM counts, give or take the network.
        waited = self.limiter.acquire() if self.limiter is not None else 0.0
        started = time.monotonic()
        if self.limiter is not None:
            self.limiter.sent()
        response: requests.Response | None = None
        error: TransportError | None = None
        try:
            response = self.session.request(
                method,
                f"{base}{path}",
                params=params,
                data=data,
                headers={**headers, "Content-Type": "application/json"}
                if json_body is not None
                else headers,
                timeout=(self.connect_timeout, self.timeout),
                allow_redirects=False,
            )
        except requests.Timeout as exc:
            sent = not isinstance(exc, requests.ConnectTimeout)
            error = TransportError(f"{method} {path}: timed out", sent=sent)
        except requests.ConnectionError as exc:
            # A refused connection never reached amoCRM; a dropped one may have.
            error = TransportError(
                f"{method} {path}: {_reason(exc)}", sent=not _never_connected(exc)
            )
        except requests.RequestException as exc:
            error = TransportError(f"{method} {path}: {type(exc).__name__}", sent=True)
        duration = (time.monotonic() - started) * 1000
        self._record(
            method,
            shown,
            logged,
            json_body if raw is None else f"[{len(raw)} bytes]",
            response,
            error,
            duration,
            oauth=oauth,
        )
        if self.meter is not None:
            status = response.status_code if response is not None else None
            self.meter.api_call(method, path, status, waited)
        if error is not None:
            raise error from None
        assert response is not None
        return response

    def _record(
        self,
        method: str,
        shown: str,
        logged: str,
        json_body: Any,
        response: requests.Response | None,
        error: Exception | None,
        duration: float,
        *,
        oauth: bool,
    ) -> None:
        redact = self.redactor
        status = response.status_code if response is not None else None
        request_id = (
            response.headers.get("X-Request-Id") if response is not None else None
        )
        if error is not None:
            log.warning(
                "amoCRM %s %s failed after %.0f ms: %s", method, logged, duration, error
            )
        else:
            log.info(
                "amoCRM %s %s -> %s in %.0f ms (request id %s)",
                method,
                logged,
                status,
                duration,
                request_id or "-",
            )
        want_debug = log.isEnabledFor(logging.DEBUG)
        if self.sink is None and not want_debug:
            return
        request_text = redact.dump(json_body, oauth=oauth)
        response_text = None
        kind = response.headers.get("Content-Type", "") if response is not None else ""
        if response is not None and response.content and _binary(kind):
            # A file read back from the drive: its size, not its bytes.
            response_text = f"[{len(response.content)} bytes of {kind}]"
        elif response is not None and response.content:
            try:
                response_text = redact.dump(response.json(), oauth=oauth)
            except ValueError:
                response_text = redact.dump(response.text, oauth=oauth)
        if want_debug:
            # Sizes only: the bodies hold the visitors' data (the API log has them).
            log.debug(
                "amoCRM %s %s request body: %s characters, response body: %s "
                "characters (see the API log)",
                method,
                logged,
                len(request_text or ""),
                len(response_text or ""),
            )
        if self.sink is not None:
            self.sink.write(
                method=method,
                path=shown[:2000],
                status=status,
                duration_ms=round(duration, 1),
                request_id=request_id[:100] if request_id else None,
                request_body=request_text,
                response_body=response_text,
                error=redact.text(str(error)) if error is not None else None,
            )

    # -- shortcuts ---------------------------------------------------------------------

    def get(self, path: str, **params: Any) -> Any:
        """GET ``path`` with query ``params``; ``None`` for 204."""
        return self.request("GET", path, params=params or None)

    def post(self, path: str, body: Any) -> Any:
        """POST a JSON body."""
        return self.request("POST", path, json_body=body)

    def patch(self, path: str, body: Any) -> Any:
        """PATCH a JSON body."""
        return self.request("PATCH", path, json_body=body)

    def delete(self, path: str) -> Any:
        """DELETE ``path``."""
        return self.request("DELETE", path)

    def get_all(self, path: str, key: str, **params: Any) -> list[dict[str, Any]]:
        """Every item of a list endpoint (``_embedded[key]``), page by page, until a
        page has no ``next`` link or amoCRM answers 204."""
        params.setdefault("limit", PAGE_LIMIT)
        items: list[dict[str, Any]] = []
        page = 1
        while True:
            answer = self.get(path, **params, page=page)
            if not answer:
                break
            items.extend((answer.get("_embedded") or {}).get(key) or [])
            if not (answer.get("_links") or {}).get("next"):
                break
            page += 1
        return items

    # -- verbs: what the delivery code asks of amoCRM; every path is built here -------

    def read(
        self,
        entity: str,
        ids: Sequence[int],
        *,
        with_: str | None = None,
        per_call: int = BATCH_SIZE,
    ) -> list[dict[str, Any]]:
        """The ``entity`` items with these ids (``per_call`` ids per call, at most
        250), ``with_`` embedded. Deleted ones are not among them."""
        items: list[dict[str, Any]] = []
        for start in range(0, len(ids), per_call):
            params: dict[str, Any] = {
                "filter[id][]": list(ids[start : start + per_call])
            }
            if per_call > BATCH_SIZE:
                params["limit"] = per_call
            if with_:
                params["with"] = with_
            items += self.get_all(f"{API}/{entity}", entity, **params)
        return items

    def list_page(
        self,
        entity: str,
        page: int,
        *,
        order: str = "id",
        since: int | None = None,
    ) -> tuple[list[dict[str, Any]], bool]:
        """Page ``page`` (from 1) of every ``entity`` item, 250 a page, in ``order``
        (``id`` or ``updated_at``, ascending), only those updated at or after
        ``since`` when given; and whether a next page follows."""
        params: dict[str, Any] = {
            "limit": PAGE_LIMIT,
            "page": page,
            f"order[{order}]": "asc",
        }
        if since is not None:
            params["filter[updated_at][from]"] = since
        answer = self.get(f"{API}/{entity}", **params)
        more = bool(answer and (answer.get("_links") or {}).get("next"))
        return answer_items(answer, entity), more

    def search(
        self,
        entity: str,
        query: str | None = None,
        *,
        with_: str | None = None,
        filters: Mapping[str, Any] | None = None,
        limit: int | None = None,
        oldest_first: bool = False,
    ) -> list[dict[str, Any]]:
        """One page of ``entity`` matching full-text ``query`` and ``filter[...]``."""
        params: dict[str, Any] = {}
        if limit is not None:
            params["limit"] = limit
        if oldest_first:
            params["order[created_at]"] = "asc"
        if with_:
            params["with"] = with_
        if query:
            params["query"] = query
        params.update(filters or {})
        return answer_items(self.get(f"{API}/{entity}", **params), entity)

    def create(
        self, entity: str, items: Sequence[dict[str, Any]]
    ) -> list[dict[str, Any] | None]:
        """Create ``entity`` items; amoCRM's answer item (``id``) for each, in order."""
        return self.write_many("POST", f"{API}/{entity}", items, key=entity)

    def update(
        self, entity: str, items: Sequence[dict[str, Any]]
    ) -> list[dict[str, Any] | None]:
        """Change ``entity`` items, each naming its ``id``; the answer item of each."""
        return self.write_many("PATCH", f"{API}/{entity}", items, key=entity)

    def create_complex(
        self, items: Sequence[dict[str, Any]]
    ) -> list[dict[str, Any] | None]:
        """Create leads with contact and company; per lead its ids and ``merged``."""
        return self.write_many("POST", f"{API}/leads/complex", items, key="leads")

    def create_unsorted(
        self, items: Sequence[dict[str, Any]]
    ) -> list[dict[str, Any] | None]:
        """Create incoming leads (forms); per item its ``uid`` and ``_embedded`` ids."""
        return self.write_many(
            "POST", f"{API}/leads/unsorted/forms", items, key="unsorted"
        )

    def link(
        self, entity: str, items: Sequence[dict[str, Any]]
    ) -> list[dict[str, Any] | None]:
        """Link ``entity`` items (``entity_id``) to others (``to_entity_id``, ...),
        :data:`WRITE_LIMIT` a call."""
        return self.write_many(
            "POST", f"{API}/{entity}/link", items, key="links", chunk_size=WRITE_LIMIT
        )

    def add_notes(
        self, entity: str, items: Sequence[dict[str, Any]]
    ) -> list[dict[str, Any] | None]:
        """Add notes to ``entity`` items (``entity_id``), :data:`WRITE_LIMIT` a
        call; the answer item of each."""
        return self.write_many(
            "POST", f"{API}/{entity}/notes", items, key="notes", chunk_size=WRITE_LIMIT
        )

    def list_notes(
        self, entity: str, entity_ids: Sequence[int], *, note_type: str | None = None
    ) -> list[dict[str, Any]]:
        """Every note (of ``note_type``) of these ``entity`` items,
        :data:`IDS_PER_READ` ids per call."""
        notes: list[dict[str, Any]] = []
        for start in range(0, len(entity_ids), IDS_PER_READ):
            params: dict[str, Any] = {
                "filter[entity_id][]": list(entity_ids[start : start + IDS_PER_READ])
            }
            if note_type:
                params["filter[note_type]"] = note_type
            notes += self.get_all(f"{API}/{entity}/notes", "notes", **params)
        return notes

    def add_tasks(self, items: Sequence[dict[str, Any]]) -> list[dict[str, Any] | None]:
        """Add tasks (each naming ``entity_type`` and ``entity_id``),
        :data:`WRITE_LIMIT` a call."""
        return self.write_many(
            "POST", f"{API}/tasks", items, key="tasks", chunk_size=WRITE_LIMIT
        )

    def list_tasks(
        self, entity: str, entity_ids: Sequence[int]
    ) -> list[dict[str, Any]]:
        """Every task of these ``entity`` items, :data:`IDS_PER_READ` ids per
        call."""
        tasks: list[dict[str, Any]] = []
        for start in range(0, len(entity_ids), IDS_PER_READ):
            tasks += self.get_all(
                f"{API}/tasks",
                "tasks",
                **{
                    "filter[entity_type]": entity,
                    "filter[entity_id][]": list(
                        entity_ids[start : start + IDS_PER_READ]
                    ),
                },
            )
        return tasks

    def fields(self, entity: str) -> list[dict[str, Any]]:
        """Every custom field of ``entity`` (``leads``, ``contacts``, ``companies``)."""
        return self.get_all(f"{API}/{entity}/custom_fields", "custom_fields")

    def create_field(self, entity: str, item: dict[str, Any]) -> dict[str, Any]:
        """Create one custom field of ``entity``; amoCRM's answer item (``id``)."""
        answer = self.post(f"{API}/{entity}/custom_fields", [item])
        created = answer_items(answer, "custom_fields")
        if not created:
            raise APIError(f"POST {API}/{entity}/custom_fields answered without it")
        return created[0]

    # -- the way back: webhooks and the events log -------------------------------------

    def webhooks(self, destination: str | None = None) -> list[dict[str, Any]]:
        """The account's webhooks (only the one at ``destination`` when given)."""
        params = {"filter[destination]": destination} if destination else {}
        return answer_items(self.get(f"{API}/webhooks", **params), "webhooks")

    def subscribe_webhook(
        self, destination: str, settings: Sequence[str]
    ) -> dict[str, Any]:
        """Register ``destination`` for the event codes ``settings`` (amoCRM
        replaces the codes of a destination it has already); the webhook."""
        answer = self.post(
            f"{API}/webhooks", {"destination": destination, "settings": list(settings)}
        )
        return answer if isinstance(answer, dict) else {}

    def unsubscribe_webhook(self, destination: str) -> None:
        """Remove the webhook at ``destination`` (a DELETE with a JSON body);
        :class:`~flask_amocrm.errors.NotFoundError` when there is none."""
        self.request(
            "DELETE", f"{API}/webhooks", json_body={"destination": destination}
        )

    def events(
        self, types: Sequence[str], since: int, until: int
    ) -> list[dict[str, Any]]:
        """Every events log entry of ``types`` created from ``since`` to ``until``
        (Unix seconds, both included), page by page (100 a page: amocrm.ru's
        limit)."""
        return self.get_all(
            f"{API}/events",
            "events",
            limit=EVENTS_PAGE_LIMIT,
            **{
                "filter[type]": ",".join(types),
                "filter[created_at][from]": since,
                "filter[created_at][to]": until,
            },
        )

    def find_sources(self, external_id: str) -> list[dict[str, Any]]:
        """The integration's sources whose ``external_id`` is this one."""
        return answer_items(
            self.get(f"{API}/sources", **{"filter[external_id]": external_id}),
            "sources",
        )

    def create_source(self, item: dict[str, Any]) -> dict[str, Any]:
        """Create one source (``name``, ``external_id``); amoCRM's answer item."""
        created = answer_items(
            self.post(f"{API}/sources", [dict(item, request_id="source")]), "sources"
        )
        if not created:
            raise APIError(f"POST {API}/sources answered without it")
        return created[0]

    # -- amoCRM's drive: files live on their own host (the account names it) ----------

    def drive_url(self) -> str:
        """The account's drive host (``https://drive-b.amocrm.ru``): the one the
        metadata read (:meth:`remember_drive_url`), else asked of the account once
        per client."""
        if self._drive_url is None:
            account = self.get(f"{API}/account", **{"with": "drive_url"}) or {}
            self.remember_drive_url(account.get("drive_url"))
        if self._drive_url is None:
            raise APIError(f"GET {API}/account?with=drive_url: no drive_url")
        return self._drive_url

    def remember_drive_url(self, url: Any) -> None:
        """Keep the drive host the account named (an ``http(s)`` address)."""
        if isinstance(url, str) and url.lower().startswith(("https://", "http://")):
            self._drive_url = url.rstrip("/")

    def _drive(self, method: str, url: str, **kwargs: Any) -> Any:
        """A call to an absolute drive address (the same token is sent)."""
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise APIError(f"amoCRM's drive gave an address that is not http(s): {url}")
        path = parts.path + (f"?{parts.query}" if parts.query else "")
        return self.request(
            method, path, host=f"{parts.scheme}://{parts.netloc}", **kwargs
        )

    def open_upload(
        self, name: str, size: int, content_type: str | None = None
    ) -> dict[str, Any]:
        """Open an upload session on the drive for ``size`` bytes called ``name``:
        ``{upload_url, max_file_size, max_part_size, session_id}``."""
        body: dict[str, Any] = {"file_name": name, "file_size": size}
        if content_type:
            body["content_type"] = content_type
        answer = self._drive(
            "POST", f"{self.drive_url()}/v1.0/sessions", json_body=body
        )
        if not isinstance(answer, dict) or not answer.get("upload_url"):
            raise APIError("POST /v1.0/sessions (drive) answered without upload_url")
        return answer

    def upload_part(
        self, url: str, chunk: bytes, content_type: str | None = None
    ) -> dict[str, Any]:
        """Send the next part of a file to a session's ``upload_url`` (then to each
        ``next_url``): ``{next_url}``, or the file object after the last part."""
        answer = self._drive(
            "POST",
            url,
            data=chunk,
            headers={"Content-Type": content_type or "application/octet-stream"},
        )
        if not isinstance(answer, dict):
            raise APIError("a part upload (drive) answered without a body")
        return answer

    def drive_file(self, file_uuid: str) -> dict[str, Any] | None:
        """The drive's file object of ``file_uuid``, or ``None`` if there is none."""
        try:
            answer = self._drive("GET", f"{self.drive_url()}/v1.0/files/{file_uuid}")
        except NotFoundError:
            return None
        return answer if isinstance(answer, dict) else None

    def drive_files(self, *, name: str | None = None) -> list[dict[str, Any]]:
        """The drive's files (called ``name``), newest first: the first page."""
        params = {"filter[name]": name} if name else {}
        answer = self._drive(
            "GET", f"{self.drive_url()}/v1.0/files", params=params or None
        )
        return answer_items(answer, "files")

    def download(self, url: str) -> bytes:
        """The bytes at a file's ``_links.download`` address (the same token)."""
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise APIError(f"not an http(s) download address: {url}")
        token = self.tokens.access_token()
        self.redactor.add(token)
        response = self._exchange(
            "GET",
            parts.path,
            None,
            None,
            {"Authorization": f"Bearer {token}"},
            oauth=False,
            host=f"{parts.scheme}://{parts.netloc}",
        )
        if response.status_code != 200:
            raise error_for(response.status_code, _body(response), f"GET {parts.path}")
        return response.content

    def file_links(self, file_uuid: str) -> list[dict[str, Any]]:
        """The entities a drive file is attached to (``GET /files/{uuid}/links``)."""
        answer = self.get(f"{API}/files/{file_uuid}/links")
        entities = answer.get("entities") if isinstance(answer, dict) else None
        return [e for e in entities or [] if isinstance(e, dict)]

    def attach_files(
        self, entity: str, entity_id: int, file_uuids: Sequence[str]
    ) -> Any:
        """Attach drive files to one ``entity`` item (``PUT .../files``). Not
        idempotent: read :meth:`entity_files` first after a lost answer."""
        return self.request(
            "PUT",
            f"{API}/{entity}/{entity_id}/files",
            json_body=[{"file_uuid": u} for u in file_uuids],
        )

    def entity_files(self, entity: str, entity_id: int) -> list[dict[str, Any]]:
        """Every file attached to one ``entity`` item: ``[{file_uuid, id}]``."""
        files: list[dict[str, Any]] = []
        params: dict[str, Any] = {"limit": PAGE_LIMIT}
        while True:
            page = answer_items(
                self.get(f"{API}/{entity}/{entity_id}/files", **params), "files"
            )
            files += page
            ids = [int(f["id"]) for f in page if isinstance(f.get("id"), int)]
            if len(page) < PAGE_LIMIT or not ids:
                return files
            params["before_id"] = min(ids)

    # -- batches -----------------------------------------------------------------------

    def write_many(
        self,
        method: str,
        path: str,
        items: Sequence[dict[str, Any]],
        *,
        key: str,
        chunk_size: int = BATCH_SIZE,
    ) -> list[dict[str, Any] | None]:
        """Send ``items`` in chunks of ``chunk_size``; a chunk that gets 504 is split
        in halves and sent again. Items without a ``request_id`` get their index.

        A 504 may come after amoCRM did part of the work, so a split batch can create
        an entity twice; amoCRM advises the split all the same, and
        the delivery code looks entities up before creating them again.
        """
        prepared = []
        for index, item in enumerate(items):
            rid = item.get("request_id")
            prepared.append(dict(item, request_id=str(index if rid is None else rid)))
        ids = [item["request_id"] for item in prepared]
        if len(set(ids)) != len(ids):
            raise ValueError("request_id values must be unique within one batch")
        results: dict[str, dict[str, Any]] = {}
        for start in range(0, len(prepared), chunk_size):
            self._write_chunk(
                method, path, prepared[start : start + chunk_size], key, results
            )
        return [results.get(rid) for rid in ids]

    def _write_chunk(
        self,
        method: str,
        path: str,
        chunk: list[dict[str, Any]],
        key: str,
        results: dict[str, dict[str, Any]],
    ) -> None:
        try:
            answer = self.request(method, path, json_body=chunk)
        except ServerError as exc:
            if exc.status != 504 or len(chunk) < 2:
                raise
            half = len(chunk) // 2
            log.warning(
                "%s %s: 504 on %d items; sending %d and %d",
                method,
                path,
                len(chunk),
                half,
                len(chunk) - half,
            )
            self._write_chunk(method, path, chunk[:half], key, results)
            self._write_chunk(method, path, chunk[half:], key, results)
            return
        for position, item in enumerate(answer_items(answer, key)):
            rids = item.get("request_id")
            if rids is None:
                # Some answers (PATCH) carry no request_id: they keep the order.
                rids = [chunk[position]["request_id"]] if position < len(chunk) else []
            for rid in rids if isinstance(rids, list) else [rids]:
                results[str(rid)] = item


#: Query parameters whose values may be personal data (a search for a phone).
_PERSONAL_PARAMS = frozenset({"query"})


def _log_query(params: dict[str, Any]) -> str:
    """The query string for Python logs: searched-for text replaced by its length."""
    return urlencode(
        [
            (k, f"[{len(str(v))} chars]" if k in _PERSONAL_PARAMS else v)
            for k, v in params.items()
        ],
        doseq=True,
    )


def answer_items(answer: Any, key: str) -> list[dict[str, Any]]:
    """The result items of a batch answer: a bare array (``/leads/complex``) or the
    HAL ``_embedded[key]``."""
    if isinstance(answer, list):
        return [item for item in answer if isinstance(item, dict)]
    if isinstance(answer, dict):
        return list((answer.get("_embedded") or {}).get(key) or [])
    return []


def _binary(kind: str) -> bool:
    """Whether a ``Content-Type`` is neither JSON nor text (a file's bytes)."""
    kind = kind.lower()
    return bool(kind) and "json" not in kind and not kind.startswith("text/")


def _is_html(response: requests.Response) -> bool:
    kind = response.headers.get("Content-Type", "")
    return "html" in kind or response.text.lstrip()[:1] == "<"


def _body(response: requests.Response) -> Any:
    if not response.content:
        return None
    try:
        return response.json()
    except ValueError:
        return response.text[:2000]


def _reason(exc: requests.ConnectionError) -> str:
    text = str(exc.args[0] if exc.args else exc)
    for name in (
        "RemoteDisconnected",
        "ConnectionResetError",
        "NewConnectionError",
        "ConnectionRefusedError",
        "ProtocolError",
    ):
        if name in text:
            return name
    return type(exc).__name__


def _never_connected(exc: requests.ConnectionError) -> bool:
    """Whether the connection was never made (so the request surely did not arrive)."""
    from urllib3.exceptions import MaxRetryError, NewConnectionError

    reason = exc.args[0] if exc.args else None
    if isinstance(reason, MaxRetryError):
        reason = reason.reason
    return isinstance(reason, NewConnectionError)


def error_for(status: int, body: Any, what: str, *, html: bool = False) -> APIError:
    """The exception for a non-success answer."""
    detail = ""
    if isinstance(body, dict):
        detail = str(body.get("detail") or body.get("title") or "")
        if body.get("hint"):
            detail = f"{detail} ({body['hint']})"
    message = f"{what}: HTTP {status}" + (f": {detail}" if detail else "")
    if status == 400:
        errors = body.get("validation-errors") if isinstance(body, dict) else None
        if errors:
            parts = [
                f"item {item.get('request_id')}: {err.get('path')}: {err.get('code')}"
                + (f" ({err.get('detail')})" if err.get("detail") else "")
                for item in errors
                for err in item.get("errors", [])
            ]
            message += "; " + "; ".join(parts)
        return ValidationError(message, status=status, body=body, errors=errors or [])
    if status == 403:
        if html or not isinstance(body, dict):
            return AccountBlockedError(
                message + " (the account or this IP is blocked, most likely for too "
                "many requests; only amoCRM support can lift it)",
                status=status,
                body=body,
            )
        return ForbiddenError(message, status=status, body=body)
    mapping: dict[int, type[APIError]] = {
        401: AuthError,
        402: PaymentRequiredError,
        404: NotFoundError,
        429: RateLimitError,
    }
    if status in mapping:
        return mapping[status](message, status=status, body=body)
    if status >= 500:
        return ServerError(message, status=status, body=body)
    return APIError(message, status=status, body=body)
