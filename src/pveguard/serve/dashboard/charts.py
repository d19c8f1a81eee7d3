"""History charts as inline SVG, drawn on the server: no charting library, no JS, readable without
both, and small (one polyline per series)."""

from __future__ import annotations

import time
from collections.abc import Sequence
from datetime import UTC, datetime

from markupsafe import Markup, escape

from pveguard.monitor.series import Point

WIDTH, HEIGHT = 420, 150
PAD_L, PAD_R, PAD_T, PAD_B = 52, 10, 10, 20


def _fmt(value: float, unit: str) -> str:
    if unit == "%":
        return f"{value:.0f}%"
    for div, suffix in ((1 << 30, "G"), (1 << 20, "M"), (1 << 10, "k")):
        if abs(value) >= div:
            scaled = value / div
            return f"{scaled:.0f}{suffix}{unit}" if abs(scaled) >= 10 else f"{scaled:.1f}{suffix}{unit}"
    return f"{value:.0f}{unit}"


def _hhmm(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%H:%M")


def svg_chart(title: str, points: Sequence[Point], unit: str, since: float, until: float | None = None) -> Markup:
    """An SVG line chart of one series from `since` to `until` (now), with its min/max band for
    5-minute buckets; an empty chart says so."""
    until = time.time() if until is None else until
    span = max(until - since, 1.0)
    top = 100.0 if unit == "%" else max((p.max if p.max is not None else p.value) for p in points) if points else 1.0
    if unit == "%" and points:
        top = max(100.0, max(p.value for p in points))
    top = top or 1.0
    plot_w, plot_h = WIDTH - PAD_L - PAD_R, HEIGHT - PAD_T - PAD_B

    def xy(ts: float, v: float) -> str:
        x = PAD_L + (ts - since) / span * plot_w
        y = PAD_T + plot_h - (v / top) * plot_h
        return f"{x:.1f},{y:.1f}"

    last = points[-1].value if points else None
    label = f"{title}: " + (f"latest {_fmt(last, unit)}, {len(points)} points" if last is not None else "no data yet")
    parts = [f'<svg class="chart" viewBox="0 0 {WIDTH} {HEIGHT}" role="img" aria-label="{escape(label)}" '
             'preserveAspectRatio="xMidYMid meet">']
    for frac in (0.0, 0.5, 1.0):
        y = PAD_T + plot_h - frac * plot_h
        parts.append(f'<line class="grid" x1="{PAD_L}" y1="{y:.1f}" x2="{WIDTH - PAD_R}" y2="{y:.1f}"/>')
        parts.append(f'<text class="axis" x="{PAD_L - 4}" y="{y + 4:.1f}" text-anchor="end">'
                     f'{escape(_fmt(top * frac, unit))}</text>')
    for frac, anchor in ((0.0, "start"), (0.5, "middle"), (1.0, "end")):
        parts.append(f'<text class="axis" x="{PAD_L + frac * plot_w:.1f}" y="{HEIGHT - 6}" text-anchor="{anchor}">'
                     f'{_hhmm(since + frac * span)}</text>')
    if points:
        if any(p.min is not None for p in points):
            upper = [xy(p.ts, p.max if p.max is not None else p.value) for p in points]
            lower = [xy(p.ts, p.min if p.min is not None else p.value) for p in reversed(points)]
            parts.append(f'<polygon class="band" points="{" ".join(upper + lower)}"/>')
        parts.append(f'<polyline class="line" points="{" ".join(xy(p.ts, p.value) for p in points)}"/>')
    else:
        parts.append(f'<text class="empty" x="{WIDTH / 2:.0f}" y="{HEIGHT / 2:.0f}" text-anchor="middle">'
                     "no data in this range yet</text>")
    parts.append("</svg>")
    return Markup("".join(parts))
