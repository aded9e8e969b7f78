"""The admin blueprint, and the check every admin view passes first."""

from __future__ import annotations

from flask import Blueprint, abort

from ..state import get_state

#: The admin blueprint; every view on it passes ``AMOCRM_ADMIN_AUTH`` first.
bp = Blueprint("amocrm_admin", __name__, url_prefix="/amocrm/admin")


@bp.before_request
def _require_admin() -> None:
    allowed = get_state().settings.admin_auth
    # Only ``True`` itself admits: a hook that returns a method it forgot to call
    # (``lambda: current_user.is_admin``), a string or a number refuses.
    if allowed is None or allowed() is not True:
        abort(403)
