"""The admin blueprint, and the checks every admin view passes first.

Every request passes the site's auth hook (``@amocrm.admin_auth`` or
``AMOCRM_ADMIN_AUTH``): ``True`` admits; a response (a redirect to the site's login
page, a 401 with a challenge) is sent as it is; anything else is a 403. Every
``POST`` must then carry the CSRF token of the page it came from
(Flask-WTF's ``csrf_token``), whether or not the site runs ``CSRFProtect``.
"""

from __future__ import annotations

from typing import Any

from flask import Blueprint, abort, current_app, render_template, request
from werkzeug.wrappers import Response as BaseResponse

from ..i18n import N_, current_locale, format_datetime, gettext, ngettext
from ..state import get_state

#: The admin blueprint; registered under ``AMOCRM_ADMIN_URL_PREFIX``.
bp = Blueprint(
    "amocrm_admin",
    __name__,
    template_folder="templates",
    static_folder="static",
    static_url_path="/static",
)

#: The pages in the navigation, in order: (endpoint, label). A page appears once its
#: view is registered.
NAV = (
    ("amocrm_admin.health", N_("Health")),
    ("amocrm_admin.events", N_("Events")),
    ("amocrm_admin.api_log", N_("API log")),
    ("amocrm_admin.rules", N_("Rules")),
    ("amocrm_admin.connect", N_("Connection")),
)


def int_arg(name: str) -> int | None:
    """The query string's ``name`` as a row id (a page's keyset bound), ``None``
    when it is not one: a number a database column holds, never negative."""
    value = request.args.get(name, "")
    return int(value) if value.isdigit() and len(value) < 19 else None


@bp.before_request
def _require_admin() -> BaseResponse | None:
    hook = get_state().admin_auth
    answer = hook() if hook is not None else None
    if isinstance(answer, BaseResponse):
        return answer
    # Only ``True`` itself admits: a hook that returns a method it forgot to call
    # (``lambda: current_user.is_admin``), a string or a number refuses.
    if answer is not True:
        abort(403)
    if request.method not in ("GET", "HEAD", "OPTIONS"):
        refused = _check_csrf()
        if refused is not None:
            return refused
    return _refuse_nul()


def _refuse_nul() -> BaseResponse | None:
    """A 400 page for a query or form value with a NUL character: no database
    column holds one (PostgreSQL refuses it in any text), so a filter, a search or
    a cancel reason with it would otherwise fail the page."""
    given = [*request.args.lists()]
    if request.method == "POST":
        given += request.form.lists()
    if not any("\x00" in text for k, vs in given for text in (k, *vs)):
        return None
    page = render_template(
        "amocrm_admin/message.html",
        title=gettext("The request was refused"),
        text=gettext("A value in it holds a NUL character."),
    )
    return current_app.response_class(page, status=400)


def _check_csrf() -> BaseResponse | None:
    from flask_wtf.csrf import validate_csrf
    from wtforms import ValidationError

    try:
        validate_csrf(request.form.get("csrf_token"))
    except ValidationError:
        page = render_template(
            "amocrm_admin/message.html",
            title=gettext("The form has expired"),
            text=gettext(
                "The form did not carry a valid security token (CSRF): it is too "
                "old, or it did not come from this page. Go back, reload the page "
                "and try again."
            ),
        )
        return current_app.response_class(page, status=400)
    return None


@bp.after_request
def _page_headers(response: BaseResponse) -> BaseResponse:
    """Only this site may frame the pages (their buttons act: a page framed by
    another site could be clicked through), and no cache keeps them (they show
    visitors' data). A header set already (by a view) is kept."""
    headers = response.headers
    headers.setdefault("X-Frame-Options", "SAMEORIGIN")
    headers.setdefault("Content-Security-Policy", "frame-ancestors 'self'")
    headers.setdefault("Cache-Control", "no-store")
    return response


@bp.context_processor
def _page_helpers() -> dict[str, Any]:
    from flask_wtf.csrf import generate_csrf

    state = get_state()
    timezone = state.settings.timezone

    def when(value: Any, seconds: bool = True) -> str:
        return format_datetime(value, timezone, seconds=seconds)

    nav = [(e, label) for e, label in NAV if e in current_app.view_functions]
    return {
        "_": gettext,
        "ngettext": ngettext,
        "csrf_token": generate_csrf,
        "locale": current_locale(),
        "when": when,
        "timezone": timezone,
        "nav": nav,
        "site_name": state.settings.site_name or current_app.name,
    }
