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


class Point(NamedTuple):
    """One row of :func:`range_plot`: a value with an optional range.

    Attributes:
        label: Row label.
        value: The point (ms).
        low: Low end of the range (None: no range).
        high: High end of the range.
        filled: Filled dot (measured) or hollow (predicted).
        group: Rows of one group are drawn together under a group heading.
    """

    label: str
    value: float
    low: float | None
    high: float | None
    filled: bool
    group: str


def range_plot(points: list[Point], *, title: str, x_label: str, log: bool = False,
               css: str = "es-devices", unit: str = "ms") -> str:
    """Draw one dot per row with its range as an error bar, rows grouped under headings.

    Args:
        points: The rows; groups keep their first appearance's order.
        title: Plot title.
        x_label: Label of the value axis.
        log: Use a log10 axis.
        css: Extra class of the ``<svg>`` (besides ``es-plot``).
        unit: The values' unit, written after each value label.

    Returns:
        The ``<svg class="es-plot ...">`` element; the legend tells filled from hollow dots.
    """
    points = [p for p in points if math.isfinite(p.value) and p.value > 0] or [
        Point("(none)", 1.0, None, None, True, "")]
    groups: dict[str, list[Point]] = {}
    for p in points:
        groups.setdefault(p.group, []).append(p)
    row_h, head_h = 20, 20
    height_rows = sum(head_h + row_h * len(g) for g in groups.values())
    y0, y1 = _TOP + 16, _TOP + 16 + height_rows
    values = [v for p in points for v in (p.value, p.low, p.high) if v is not None and math.isfinite(v) and v > 0]
    lo, hi = min(values), max(values)
    if not log:
        lo, hi = 0.0, hi * 1.05
    scale = _XScale(lo, hi, _LABEL_W, WIDTH - _RIGHT_W, log)
    out = _frame(title, y1 + _AXIS_H, scale, y0, y1, x_label, "")
    out[0] = out[0].replace('class="es-plot"', f'class="es-plot {escape(css)}"')
    out.append(f'<circle cx="{_LABEL_W + 10}" cy="{_TOP + 4}" r="4" fill="{_BLUE}"/>'
               f'<text x="{_LABEL_W + 20}" y="{_TOP + 8}" fill="#444">measured</text>'
               f'<circle cx="{_LABEL_W + 110}" cy="{_TOP + 4}" r="4" fill="#fff" stroke="{_ORANGE}" '
               f'stroke-width="2"/><text x="{_LABEL_W + 120}" y="{_TOP + 8}" fill="#444">predicted, '
               "with its band</text>")
    y = y0
    for group, rows in groups.items():
        out.append(f'<text x="8" y="{_n(y + 14)}" font-weight="600" fill="#222">{escape(_short(group, 60))}</text>')
        y += head_h
        for p in rows:
            yc = y + row_h / 2
            out.append(_row_label(yc, p.label))
            if p.low is not None and p.high is not None:
                xl, xh = scale(p.low), scale(p.high)
                out.append(f'<line class="band" x1="{_n(xl)}" y1="{_n(yc)}" x2="{_n(xh)}" y2="{_n(yc)}" '
                           f'stroke="{_ORANGE}" stroke-width="2"/>')
                for x in (xl, xh):
                    out.append(f'<line x1="{_n(x)}" y1="{_n(yc - 4)}" x2="{_n(x)}" y2="{_n(yc + 4)}" '
                               f'stroke="{_ORANGE}"/>')
            x = scale(p.value)
            style = f'fill="{_BLUE}"' if p.filled else f'fill="#fff" stroke="{_ORANGE}" stroke-width="2"'
            out.append(f'<circle class="{"measured" if p.filled else "predicted"}" cx="{_n(x)}" cy="{_n(yc)}" '
                       f'r="4.5" {style}><title>{escape(p.label)}: {escape(f"{p.value:.4g}")} {escape(unit)}</title></circle>')
            out.append(f'<text x="{WIDTH - _RIGHT_W + 8}" y="{_n(yc + 4)}" fill="#444">'
                       f"{'' if p.filled else '≈'}{escape(f'{p.value:.3g}')} {escape(unit)}</text>")
            y += row_h
    out.append("</svg>")
    return "\n".join(out)


class Dot(NamedTuple):
    """One variant of :func:`scatter_plot`.

    Attributes:
        label: Variant label (tooltip and, on the front, a text label).
        x: Model size (bytes).
        y: Latency (ms).
        quality: Quality in 0..1 for the colour (None: unknown, grey).
        front: On the Pareto front.
    """

    label: str
    x: float
    y: float
    quality: float | None
    front: bool


_SCATTER_H = 300
_ORANGE = "#e45756"


def scatter_plot(dots: list[Dot], *, title: str, x_label: str, y_label: str, quality_label: str) -> str:
    """Draw size (x) against latency (y), both log10, with the Pareto front joined by a line.

    Args:
        dots: The variants.
        title: Plot title.
        x_label: Label of the x axis.
        y_label: Label of the y axis.
        quality_label: What the colour shows (the legend).

    Returns:
        The ``<svg class="es-plot es-pareto">`` element.
    """
    dots = [d for d in dots if d.x > 0 and d.y > 0 and math.isfinite(d.x) and math.isfinite(d.y)] or [
        Dot("(none)", 1.0, 1.0, None, False)]
    left, right, top, bottom = 90, WIDTH - 200, _TOP + 10, _TOP + 10 + _SCATTER_H
    xs = _XScale(min(d.x for d in dots), max(d.x for d in dots), left, right, True)
    ys = _XScale(min(d.y for d in dots), max(d.y for d in dots), bottom, top, True)  # up is slower
    height = bottom + _AXIS_H
    out = [f'<svg class="es-plot es-pareto" role="img" width="{WIDTH}" height="{height}" '
           f'viewBox="0 0 {WIDTH} {height}" font-size="12">', f"<title>{escape(title)}</title>",
           f'<text x="{_n(WIDTH / 2)}" y="20" text-anchor="middle" font-size="14" '
           f'font-weight="600">{escape(title)}</text>']
    for t in xs.ticks:
        x = _n(xs(t))
        out.append(f'<line x1="{x}" y1="{top}" x2="{x}" y2="{bottom}" stroke="#e3e3e3"/>')
        out.append(f'<text x="{x}" y="{bottom + 16}" text-anchor="middle" fill="#444">{escape(_size_text(t))}</text>')
    for t in ys.ticks:
        y = _n(ys(t))
        out.append(f'<line x1="{left}" y1="{y}" x2="{right}" y2="{y}" stroke="#e3e3e3"/>')
        out.append(f'<text x="{left - 6}" y="{_n(ys(t) + 4)}" text-anchor="end" fill="#444">'
                   f"{escape(_tick_text(t))}</text>")
    out.append(f'<text x="{_n((left + right) / 2)}" y="{bottom + 38}" text-anchor="middle" fill="#222">'
               f"{escape(x_label)}</text>")
    ym = _n((top + bottom) / 2)
    out.append(f'<text x="14" y="{ym}" text-anchor="middle" fill="#222" transform="rotate(-90 14 {ym})">'
               f"{escape(y_label)}</text>")
    front = sorted((d for d in dots if d.front), key=lambda d: d.x)
    if len(front) > 1:
        path = " ".join(f"{_n(xs(d.x))},{_n(ys(d.y))}" for d in front)
        out.append(f'<polyline class="front" points="{path}" fill="none" stroke="{_ORANGE}" stroke-width="1.5"/>')
    for d in dots:
        colour = _GREY if d.quality is None else _blend(min(max(d.quality, 0.0), 1.0))
        ring = f' stroke="{_ORANGE}" stroke-width="2.5"' if d.front else ' stroke="#333"'
        q = "unknown" if d.quality is None else f"{d.quality:.4g}"
        out.append(f'<circle class="variant{" front" if d.front else ""}" cx="{_n(xs(d.x))}" cy="{_n(ys(d.y))}" '
                   f'r="6" fill="{colour}"{ring}><title>{escape(d.label)}: {escape(_size_text(d.x))}, '
                   f"{escape(f'{d.y:.4g}')} ms, quality {escape(q)}</title></circle>")
        if d.front:
            out.append(f'<text x="{_n(xs(d.x) + 9)}" y="{_n(ys(d.y) - 7)}" fill="#222">'
                       f"{escape(_short(d.label, 28))}</text>")
    lx = right + 20
    out.append(f'<text x="{lx}" y="{top + 12}" fill="#222">colour: {escape(_short(quality_label, 24))}</text>')
    for i, q in enumerate((0.0, 0.5, 1.0)):
        out.append(f'<circle cx="{lx + 6}" cy="{top + 30 + 18 * i}" r="5" fill="{_blend(q)}" stroke="#333"/>'
                   f'<text x="{lx + 16}" y="{top + 34 + 18 * i}" fill="#444">{q:g}</text>')
    out.append(f'<circle cx="{lx + 6}" cy="{top + 94}" r="5" fill="#fff" stroke="{_ORANGE}" stroke-width="2.5"/>'
               f'<text x="{lx + 16}" y="{top + 98}" fill="#444">Pareto front</text>')
    out.append("</svg>")
    return "\n".join(out)


def _blend(q: float) -> str:
    """Light grey (0) to the report's blue (1)."""
    a, b = (0xd9, 0xd9, 0xd9), (0x4c, 0x78, 0xa8)
    return "#" + "".join(f"{round(x + (y - x) * q):02x}" for x, y in zip(a, b))


def _size_text(n: float) -> str:
    from edgesmith.units import format_bytes

    return format_bytes(n)
