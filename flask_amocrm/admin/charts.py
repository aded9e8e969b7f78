"""Small charts drawn on the server as inline SVG: data in, markup out.

No JavaScript and nothing fetched from elsewhere. Every text that goes into the
markup (titles, labels, series names, tooltips) is escaped here; the caller passes
plain strings. The drawing scales to the width of its box (``viewBox``), so it reads
on a phone; the legend is HTML below the drawing, so it wraps as text does.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from markupsafe import Markup, escape

#: The drawing's own units; the SVG scales to its box.
WIDTH = 360
HEIGHT = 180
_LEFT = 40  # room for the value axis
_RIGHT = 6
_TOP = 8
_BOTTOM = 22  # room for the labels below
#: The most labels written under the bars (the rest are in the tooltips).
MAX_LABELS = 8


@dataclass(frozen=True)
class Series:
    """One series: its name (in the legend), its colour, a value per label."""

    name: str
    color: str
    values: Sequence[float | None]


def _number(value: float) -> str:
    """A value as the axis and tooltips write it: whole numbers without a point."""
    if value == int(value):
        return str(int(value))
    if abs(value) >= 10:
        return f"{value:.1f}".removesuffix(".0")
    return f"{value:.2f}".rstrip("0").rstrip(".")


def _top(values: Sequence[float]) -> float:
    """A round number at or above the largest value, for the value axis."""
    peak = max(values, default=0.0)
    if peak <= 0:
        return 1.0
    step = 1.0
    while step * 10 < peak:
        step *= 10
    for factor in (1, 2, 2.5, 5, 10):
        if step * factor >= peak:
            return step * factor
    return peak  # pragma: no cover - the loop above always returns


def _frame(top: float, unit: str) -> list[str]:
    """The value axis: lines at 0, half and the top, with their numbers."""
    out = []
    plot = HEIGHT - _TOP - _BOTTOM
    for share in (0.0, 0.5, 1.0):
        y = _TOP + plot * (1 - share)
        out.append(
            f'<line x1="{_LEFT}" y1="{y:.1f}" x2="{WIDTH - _RIGHT}" y2="{y:.1f}" '
            f'class="am-chart-grid"/>'
        )
        text = escape(_number(top * share) + unit)
        out.append(
            f'<text x="{_LEFT - 3}" y="{y + 3:.1f}" text-anchor="end">{text}</text>'
        )
    return out


def _labels(labels: Sequence[str], slot: float) -> list[str]:
    every = max(1, -(-len(labels) // MAX_LABELS))
    out = []
    for i, label in enumerate(labels):
        if i % every:
            continue
        x = _LEFT + slot * (i + 0.5)
        out.append(
            f'<text x="{x:.1f}" y="{HEIGHT - 6}" text-anchor="middle">'
            f"{escape(label)}</text>"
        )
    return out


def _figure(
    title: str, body: list[str], series: Sequence[Series], empty: str
) -> Markup:
    legend = "".join(
        f'<li><span class="am-swatch" style="background:{escape(s.color)}"></span>'
        f"{escape(s.name)}</li>"
        for s in series
    )
    note = f'<p class="am-muted am-chart-empty">{escape(empty)}</p>' if empty else ""
    return Markup(
        f'<figure class="am-chart"><figcaption>{escape(title)}</figcaption>'
        f'<svg viewBox="0 0 {WIDTH} {HEIGHT}" role="img" aria-label="{escape(title)}" '
        f'xmlns="http://www.w3.org/2000/svg">{"".join(body)}</svg>'
        f'{note}<ul class="am-legend">{legend}</ul></figure>'
    )


def bar_chart(
    title: str,
    labels: Sequence[str],
    series: Sequence[Series],
    *,
    unit: str = "",
    empty: str = "",
) -> Markup:
    """Stacked bars: one bar per label, one segment per series. ``empty`` is said
    under the drawing when every value is zero or missing."""
    totals = [sum(s.values[i] or 0.0 for s in series) for i in range(len(labels))]
    top = _top(totals)
    plot = HEIGHT - _TOP - _BOTTOM
    slot = (WIDTH - _LEFT - _RIGHT) / max(1, len(labels))
    body = _frame(top, unit)
    for i, label in enumerate(labels):
        base = 0.0
        x = _LEFT + slot * i + slot * 0.12
        for s in series:
            value = s.values[i] or 0.0
            if value <= 0:
                continue
            h = plot * value / top
            y = _TOP + plot - plot * (base + value) / top
            tip = escape(f"{label} · {s.name}: {_number(value)}{unit}")
            body.append(
                f'<rect x="{x:.1f}" y="{y:.1f}" width="{slot * 0.76:.1f}" '
                f'height="{h:.1f}" fill="{escape(s.color)}"><title>{tip}</title></rect>'
            )
            base += value
    body += _labels(labels, slot)
    return _figure(title, body, series, empty if not any(totals) else "")


def line_chart(
    title: str,
    labels: Sequence[str],
    series: Sequence[Series],
    *,
    unit: str = "",
    empty: str = "",
) -> Markup:
    """One line per series, a dot on each value; a missing value breaks the line."""
    values = [v for s in series for v in s.values if v is not None]
    top = _top(values)
    plot = HEIGHT - _TOP - _BOTTOM
    slot = (WIDTH - _LEFT - _RIGHT) / max(1, len(labels))
    body = _frame(top, unit)
    for s in series:
        runs: list[list[str]] = [[]]
        dots = []
        for i, value in enumerate(s.values):
            if value is None:
                runs.append([])
                continue
            x = _LEFT + slot * (i + 0.5)
            y = _TOP + plot - plot * value / top
            runs[-1].append(f"{x:.1f},{y:.1f}")
            tip = escape(f"{labels[i]} · {s.name}: {_number(value)}{unit}")
            dots.append(
                f'<circle cx="{x:.1f}" cy="{y:.1f}" r="2.5" fill="{escape(s.color)}">'
                f"<title>{tip}</title></circle>"
            )
        for run in runs:
            if len(run) > 1:
                body.append(
                    f'<polyline points="{" ".join(run)}" fill="none" '
                    f'stroke="{escape(s.color)}" stroke-width="1.5"/>'
                )
        body += dots
    body += _labels(labels, slot)
    return _figure(title, body, series, empty if not values else "")
