"""The metrics in Prometheus' text format (``AMOCRM_METRICS_PATH``), with
``prometheus-client`` (the ``metrics`` extra). Registered only when the key is set.

The counters are what every process of the site wrote to the shared store as it
happened (:mod:`flask_amocrm.meter`); the gauges are read at scrape time from the
database and Redis, through the same health check as ``flask amocrm health``
(:func:`flask_amocrm.worker.health.check_health`). So any web process of any node
gives the whole site's figures, however many workers on however many machines did the
work. docs/operations.md lists every metric.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from flask import Blueprint, Flask, Response

from . import meter
from .config import Settings
from .state import AppState, get_state
from .worker.health import check_health

if TYPE_CHECKING:
    from prometheus_client.registry import Collector

#: The endpoint's blueprint (``url_for("amocrm_metrics.metrics")``).
BLUEPRINT = "amocrm_metrics"


def collector(state: AppState) -> Collector:
    """A ``prometheus_client`` collector of the site's metrics (docs/operations.md)."""
    from prometheus_client.core import (
        CounterMetricFamily,
        HistogramMetricFamily,
    )
    from prometheus_client.registry import Collector

    class AmoCRMCollector(Collector):
        def collect(self) -> Iterator[Any]:
            counts = meter.read(state)
            events = CounterMetricFamily(
                "amocrm_events",
                "Delivery attempts of events, by the outcome they ended in.",
                labels=["outcome"],
            )
            for outcome, n in sorted(counts.events.items()):
                events.add_metric([outcome], n)
            yield events
            yield HistogramMetricFamily(
                "amocrm_delivery_delay_seconds",
                "Seconds from capturing an event to its delivery to amoCRM.",
                buckets=counts.delay_buckets,
                sum_value=counts.delay_seconds,
            )
            calls = CounterMetricFamily(
                "amocrm_api_calls",
                "Requests sent to amoCRM, by method, endpoint (ids taken out) and "
                "HTTP status ('none': no answer).",
                labels=["method", "endpoint", "status"],
            )
            for labels, n in sorted(counts.api_calls.items()):
                calls.add_metric(list(labels), n)
            yield calls
            yield CounterMetricFamily(
                "amocrm_rate_limit_waits",
                "Requests that waited for their slot in the shared rate limit.",
                value=counts.rate_limit_waits,
            )
            yield CounterMetricFamily(
                "amocrm_rate_limit_wait_seconds",
                "Seconds requests waited for their slot in the shared rate limit.",
                value=counts.rate_limit_wait_seconds,
            )
            yield CounterMetricFamily(
                "amocrm_outages",
                "Outages of amoCRM that began (each one mailed to the admins).",
                value=counts.outages,
            )
            yield from _gauges(state)

    return AmoCRMCollector()


def _gauges(state: AppState) -> Iterator[Any]:
    from prometheus_client.core import GaugeMetricFamily

    report = check_health(state)

    def gauge(name: str, text: str, value: float | None) -> Iterator[Any]:
        if value is not None:
            yield GaugeMetricFamily(name, text, value=value)

    yield from gauge(
        "amocrm_healthy",
        "1 when 'flask amocrm health' finds no problem, else 0.",
        float(report.healthy),
    )
    yield from gauge(
        "amocrm_outage",
        "1 while amoCRM is unreachable (an outage going on), else 0.",
        float(report.outage is not None),
    )
    yield from gauge(
        "amocrm_paused",
        "1 while requests are paused after amoCRM blocked the account, else 0.",
        float(report.pause is not None),
    )
    waiting = GaugeMetricFamily(
        "amocrm_events_open",
        "Events not finished, by status (failed ones wait for a person).",
        labels=["status"],
    )
    for status, n in report.events.items():
        waiting.add_metric([status], n)
    yield waiting
    yield from gauge(
        "amocrm_oldest_due_age_seconds",
        "Seconds the oldest due event has waited (0: nothing is due).",
        None if not report.events else (report.oldest_due_age or 0.0),
    )
    yield from gauge(
        "amocrm_queue_jobs", "Jobs waiting on the RQ queue.", report.queue_depth
    )
    yield from gauge(
        "amocrm_workers",
        "RQ workers listening on the queue.",
        None if report.workers is None else len(report.workers),
    )


def register_metrics(app: Flask, settings: Settings) -> None:
    """Add the metrics endpoint to ``app`` when ``AMOCRM_METRICS_PATH`` is set; a
    missing ``prometheus-client`` fails here, naming the extra to install."""
    if settings.metrics_path is None:
        return
    try:
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
        from prometheus_client.registry import CollectorRegistry
    except ImportError:
        raise RuntimeError(
            "AMOCRM_METRICS_PATH is set but prometheus-client is not installed: "
            "pip install 'flask-amocrm[metrics]'."
        ) from None
    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector(get_state(app)))

    def metrics() -> Response:
        """The site's metrics in Prometheus' text format."""
        response = Response(generate_latest(registry), mimetype=None)
        response.headers["Content-Type"] = CONTENT_TYPE_LATEST
        response.headers["Cache-Control"] = "no-store"
        return response

    bp = Blueprint(BLUEPRINT, __name__)
    bp.add_url_rule(settings.metrics_path, "metrics", metrics)
    app.register_blueprint(bp)
