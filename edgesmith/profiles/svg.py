"""Inline SVG plots for the HTML profile report, drawn without a plotting library.

Each function returns one ``<svg class="es-plot">`` element as a string: it has a
``<title>`` and axis labels, every string from the data is escaped, and every
coordinate is finite (empty, single-valued and all-equal data get a padded axis
instead of a division by zero). Box plots follow Tukey, *Exploratory Data
Analysis* (1977), with the whiskers at the minimum and maximum sample.
"""

from __future__ import annotations

import math
from html import escape
from typing import NamedTuple

WIDTH = 900
_LABEL_W = 240  # left margin for row labels
_RIGHT_W = 130  # right margin for value labels
_TOP = 34  # room for the plot title
_AXIS_H = 48  # tick labels and axis label below the rows
_MAX_LABEL = 34  # characters of a row label before it is shortened
_MAX_DOTS = 400  # samples drawn per strip; more would only blur together

_BLUE = "#4c78a8"
_GREY = "#9e9e9e"


class Bar(NamedTuple):
    """One bar of :func:`bar_plot`.

    Attributes:
        label: Row label (shortened on the plot, shown in full as a tooltip).
        value: Bar length in axis units (non-negative).
        text: Value label drawn after the bar.
        tooltip: Extra text for the hover tooltip.
        muted: Draw in grey (for aggregate rows such as "other").
    """

    label: str
    value: float
    text: str
    tooltip: str = ""
    muted: bool = False


def _n(x: float) -> str:
    """Format a coordinate; never emits NaN or inf."""
    return f"{x:.1f}" if math.isfinite(x) else "0"


def _short(text: str, limit: int = _MAX_LABEL) -> str:
    # cut the middle: module paths differ at both ends (encoder.layers.0 … out_proj)
    if len(text) <= limit:
        return text
    head = (limit - 1) // 2
    return text[:head] + "…" + text[len(text) - (limit - 1 - head):]


def _tick_text(v: float) -> str:
    return "0" if v == 0 else f"{v:.4g}"


def _pct(s: list[float], q: float) -> float:
    # same interpolation as LatencyStats.from_samples, so the box median equals p50
    pos = (len(s) - 1) * q
    lo = int(pos)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (pos - lo)


def _linear_axis(lo: float, hi: float) -> tuple[float, float, list[float]]:
    """Return a padded domain with round ticks covering ``[lo, hi]``."""
    if hi <= lo:
        pad = abs(lo) * 0.1 or 1.0
        lo, hi = (max(lo - pad, 0.0) if lo >= 0 else lo - pad), hi + pad
    raw = (hi - lo) / 5
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 5, 10) if m * mag >= raw)
    start, end = math.floor(lo / step) * step, math.ceil(hi / step) * step
    count = max(1, round((end - start) / step))
    return start, end, [round(start + i * step, 12) for i in range(count + 1)]


def _log_axis(lo: float, hi: float) -> tuple[float, float, list[float]]:
    """Return a padded domain with ticks at 1, 2, 5 x 10^k (10^k only over many decades)."""
    lo = max(lo, 1e-6)
    lo, hi = lo / 1.25, max(hi, lo) * 1.25
    e0, e1 = math.floor(math.log10(lo)), math.ceil(math.log10(hi))
    mults = (1, 2, 5) if e1 - e0 <= 4 else (1,)
    ticks = [m * 10.0**e for e in range(e0, e1 + 1) for m in mults if lo <= m * 10.0**e <= hi]
    return lo, hi, ticks if len(ticks) >= 2 else [lo, hi]


class _XScale:
    """Map data values to x pixels, linear or log10."""

    def __init__(self, lo: float, hi: float, x0: float, x1: float, log: bool):
        self.log = log
        self.lo, self.hi, self.ticks = (_log_axis if log else _linear_axis)(lo, hi)
        self.x0, self.x1 = x0, x1

    def __call__(self, v: float) -> float:
        if self.log:
            a, b = math.log10(self.lo), math.log10(self.hi)
            t = (math.log10(max(v, self.lo)) - a) / ((b - a) or 1.0)
        else:
            t = (v - self.lo) / ((self.hi - self.lo) or 1.0)
        return self.x0 + min(max(t, 0.0), 1.0) * (self.x1 - self.x0)


def _frame(title: str, height: float, scale: _XScale, y0: float, y1: float,
           x_label: str, y_label: str) -> list[str]:
    """Return the opening tag, title, grid, ticks and axis labels of a plot."""
    out = [
        f'<svg class="es-plot" role="img" width="{WIDTH}" '
        f'height="{_n(height)}" viewBox="0 0 {WIDTH} {_n(height)}" font-size="12">',
        f"<title>{escape(title)}</title>",
        f'<text x="{_n(WIDTH / 2)}" y="20" text-anchor="middle" font-size="14" '
        f'font-weight="600">{escape(title)}</text>',
    ]
    for t in scale.ticks:
        x = _n(scale(t))
        out.append(f'<line x1="{x}" y1="{_n(y0)}" x2="{x}" y2="{_n(y1)}" stroke="#e3e3e3"/>')
        out.append(f'<text x="{x}" y="{_n(y1 + 16)}" text-anchor="middle" fill="#444">'
                   f"{escape(_tick_text(t))}</text>")
    out.append(f'<line x1="{_n(scale.x0)}" y1="{_n(y1)}" x2="{_n(scale.x1)}" y2="{_n(y1)}" '
               'stroke="#555"/>')
    out.append(f'<text x="{_n((scale.x0 + scale.x1) / 2)}" y="{_n(y1 + 38)}" '
               f'text-anchor="middle" fill="#222">{escape(x_label)}</text>')
    ym = _n((y0 + y1) / 2)
    out.append(f'<text x="14" y="{ym}" text-anchor="middle" fill="#222" '
               f'transform="rotate(-90 14 {ym})">{escape(y_label)}</text>')
    return out


def _row_label(y: float, label: str, tooltip: str = "") -> str:
    full = f"{label}\n{tooltip}" if tooltip else label
    return (f'<text x="{_LABEL_W - 8}" y="{_n(y + 4)}" text-anchor="end" fill="#222">'
            f"<title>{escape(full)}</title>{escape(_short(label))}</text>")


def latency_plot(series: list[tuple[str, list[float]]], *, log: bool = False,
                 title: str = "Latency distribution") -> str:
    """Draw one box-and-whisker row with a strip of samples per entry, on a shared axis.

    Args:
        series: ``(label, samples_ms)`` per row; non-finite samples are dropped and
            rows left without samples are not drawn.
        log: Use a log10 millisecond axis.
        title: Plot title.

    Returns:
        The ``<svg class="es-plot">`` element.
    """
    rows = [(name, sorted(v for v in s if math.isfinite(v))) for name, s in series]
    rows = [(name, s) for name, s in rows if s] or [("(no samples)", [0.0])]
    row_h = 30
    y0, y1 = _TOP, _TOP + row_h * len(rows)
    lo, hi = min(s[0] for _, s in rows), max(s[-1] for _, s in rows)
    if not log:  # keep the extreme samples off the plot's edges
        pad = (hi - lo) * 0.05 or abs(lo) * 0.1 or 1.0
        lo, hi = (max(lo - pad, 0.0) if lo >= 0 else lo - pad), hi + pad
    scale = _XScale(lo, hi, _LABEL_W, WIDTH - _RIGHT_W, log)
    x_label = "latency per inference (ms, log scale)" if log else "latency per inference (ms)"
    out = _frame(title, y1 + _AXIS_H, scale, y0, y1, x_label, "variant")
    for i, (name, s) in enumerate(rows):
        yc = y0 + row_h * i + row_h / 2
        q1, med, q3 = _pct(s, 0.25), _pct(s, 0.5), _pct(s, 0.75)
        stats = f"n={len(s)} min={s[0]:.4g} p50={med:.4g} max={s[-1]:.4g} ms"
        out.append(_row_label(yc, name, stats))
        stride = max(1, math.ceil(len(s) / _MAX_DOTS))
        for k, v in enumerate(s[::stride]):
            jitter = ((k * 7919) % 11 - 5) * 1.1  # deterministic, so reports diff cleanly
            out.append(f'<circle cx="{_n(scale(v))}" cy="{_n(yc + jitter)}" r="1.6" '
                       f'fill="{_BLUE}" fill-opacity="0.35"/>')
        xmin, xmax, x1, xm, x3 = (scale(v) for v in (s[0], s[-1], q1, med, q3))
        out.append(f'<line x1="{_n(xmin)}" y1="{_n(yc)}" x2="{_n(xmax)}" y2="{_n(yc)}" '
                   'stroke="#333"/>')
        for x in (xmin, xmax):
            out.append(f'<line x1="{_n(x)}" y1="{_n(yc - 5)}" x2="{_n(x)}" y2="{_n(yc + 5)}" '
                       'stroke="#333"/>')
        out.append(f'<rect x="{_n(x1)}" y="{_n(yc - 8)}" width="{_n(max(x3 - x1, 1.0))}" '
                   f'height="16" fill="{_BLUE}" fill-opacity="0.25" stroke="{_BLUE}"/>')
        out.append(f'<line x1="{_n(xm)}" y1="{_n(yc - 8)}" x2="{_n(xm)}" y2="{_n(yc + 8)}" '
                   'stroke="#1b3a5c" stroke-width="2.5"/>')
        out.append(f'<text x="{WIDTH - _RIGHT_W + 8}" y="{_n(yc + 4)}" fill="#444">'
                   f"p50 {escape(f'{med:.3g}')} ms</text>")
    out.append("</svg>")
    return "\n".join(out)


def bar_plot(bars: list[Bar], *, title: str, x_label: str, y_label: str) -> str:
    """Draw a horizontal bar chart, one row per bar, top to bottom.

    Args:
        bars: The rows, in display order.
        title: Plot title.
        x_label: Label of the value axis.
        y_label: Label of the row axis.

    Returns:
        The ``<svg class="es-plot">`` element.
    """
    bars = [b._replace(value=b.value if math.isfinite(b.value) and b.value > 0 else 0.0)
            for b in bars] or [Bar("(none)", 0.0, "")]
    row_h = 22
    y0, y1 = _TOP, _TOP + row_h * len(bars)
    scale = _XScale(0.0, max(b.value for b in bars), _LABEL_W, WIDTH - _RIGHT_W, False)
    out = _frame(title, y1 + _AXIS_H, scale, y0, y1, x_label, y_label)
    for i, b in enumerate(bars):
        yc = y0 + row_h * i + row_h / 2
        x_end = scale(b.value)
        out.append(_row_label(yc, b.label, b.tooltip))
        out.append(f'<rect x="{_n(scale.x0)}" y="{_n(yc - 7)}" width="{_n(x_end - scale.x0)}" '
                   f'height="14" fill="{_GREY if b.muted else _BLUE}"/>')
        out.append(f'<text x="{_n(x_end + 6)}" y="{_n(yc + 4)}" fill="#444">'
                   f"{escape(b.text)}</text>")
    out.append("</svg>")
    return "\n".join(out)
