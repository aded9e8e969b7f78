"""The health endpoint (``AMOCRM_HEALTH_PATH``), for uptime monitors and load
balancers. Registered only when the key is set.

``GET {path}`` answers the question of :func:`flask_amocrm.worker.health.check_health`,
"does the site deliver its events?": 200 when it does, 503 when it does not, with the
report as JSON either way (:meth:`~flask_amocrm.worker.health.Health.as_json`: codes,
counts and times; no token, no address, no reason quoted from amoCRM or a visitor).
That is the address for an uptime monitor: an amoCRM outage, a dead worker or a revoked
token are worth a page.

``GET {path}/ready`` answers "may this web node take visitors?": 200 when its events
database answers, 503 when not. That is the address for a load balancer. An amoCRM
outage makes every node fail ``{path}`` at once, while each still stores its forms and
loses nothing: a load balancer probing ``{path}`` would take the whole site down for
an outage of amoCRM's.

Both are cheap: a few indexed queries and Redis reads, never a request to amoCRM.
"""

from __future__ import annotations

import logging

from flask import Blueprint, Flask, Response, json
from sqlalchemy import text
from sqlalchemy.exc import SQLAlchemyError

from .config import Settings
from .state import get_state
from .worker.health import check_health

log = logging.getLogger("flask_amocrm")

#: The endpoints' blueprint (``url_for("amocrm_health.health")``).
BLUEPRINT = "amocrm_health"


def _answer(body: dict[str, object], healthy: bool) -> Response:
    response = Response(
        json.dumps(body, sort_keys=True) + "\n",
        status=200 if healthy else 503,
        mimetype="application/json",
    )
    response.headers["Cache-Control"] = "no-store"
    return response


def health() -> Response:
    """The site's health: 200 healthy, 503 not; the report as JSON."""
    report = check_health(get_state())
    return _answer(report.as_json(), report.healthy)


def ready() -> Response:
    """This node can store events: 200 when the events database answers, else 503."""
    try:
        with get_state().engine.connect() as connection:
            connection.execute(text("SELECT 1"))
    except SQLAlchemyError as exc:
        log.warning("Health: the events database does not answer (%s)",
                    type(exc).__name__)  # fmt: skip
        return _answer({"status": "failing", "problems": ["database"]}, False)
    return _answer({"status": "ok", "problems": []}, True)


def register_health(app: Flask, settings: Settings) -> None:
    """Add the health endpoints to ``app`` when ``AMOCRM_HEALTH_PATH`` is set."""
    if settings.health_path is None:
        return
    bp = Blueprint(BLUEPRINT, __name__)
    bp.add_url_rule(settings.health_path, "health", health)
    bp.add_url_rule(f"{settings.health_path}/ready", "ready", ready)
    app.register_blueprint(bp)
