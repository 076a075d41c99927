"""A tiny SVG plotting module: grouped bars with error bars, scatter, line chart.

Written here so the report needs no plotting library. Each chart is a string holding one
<svg> element, meant to sit inline in HTML: there is no xmlns attribute (HTML does not need
one, and the page then holds no URL at all). Text widths are estimated from character counts
(no font metrics without a renderer), generously, so labels err on the side of space.
Every mark carries a <title>, which browsers show on hover: exact values without JavaScript.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from xml.sax.saxutils import escape, quoteattr

# Okabe–Ito, without its yellow (unreadable on white): distinguishable with common colour blindness.
PALETTE = ("#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00", "#7F7F7F", "#000000")
FONT_SIZE = 12
CHAR_WIDTH = 0.62 * FONT_SIZE  # a generous average advance for sans-serif text
AXIS_COLOUR = "#444"
GRID_COLOUR = "#e3e3e3"
MAX_LABEL_CHARS = 26


def colour(index: int) -> str:
    return PALETTE[index % len(PALETTE)]


def text_width(text: str, size: float = FONT_SIZE) -> float:
    return len(text) * CHAR_WIDTH * size / FONT_SIZE


def shorten(text: str, limit: int = MAX_LABEL_CHARS) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


@dataclass
class Bars:
    """One series of a grouped bar chart: a value (or None) and an optional interval per category."""

    name: str
    values: list
    intervals: list | None = None


@dataclass
class Line:
    name: str
    xs: list
    ys: list
    dashed: bool = False
    notes: list | None = None  # hover text per point


@dataclass
class Point:
    label: str
    x: float
    y: float
    note: str = ""


@dataclass
class _Plot:
    """Pixel geometry of one chart and the data-to-pixel maps of its axes."""

    width: float
    height: float
    left: float
    right: float
    top: float
    bottom: float
    x_range: tuple[float, float] = (0.0, 1.0)
    y_range: tuple[float, float] = (0.0, 1.0)
    parts: list[str] = field(default_factory=list)

    @property
    def inner_width(self) -> float:
        return self.width - self.left - self.right

    @property
    def inner_height(self) -> float:
        return self.height - self.top - self.bottom

    def px(self, x: float) -> float:
        lo, hi = self.x_range
        return self.left + (x - lo) / (hi - lo or 1) * self.inner_width

    def py(self, y: float) -> float:
        lo, hi = self.y_range
        return self.top + self.inner_height - (y - lo) / (hi - lo or 1) * self.inner_height

    def add(self, fragment: str) -> None:
        self.parts.append(fragment)

    def svg(self, title: str) -> str:
        body = "\n".join(self.parts)
        return (f'<svg viewBox="0 0 {self.width:.0f} {self.height:.0f}" width="{self.width:.0f}" '
                f'height="{self.height:.0f}" role="img" aria-label={quoteattr(title)} '
                f'font-family="system-ui, -apple-system, Segoe UI, Helvetica, Arial, sans-serif" '
                f'font-size="{FONT_SIZE}">\n<title>{escape(title)}</title>\n{body}\n</svg>')


# ---------------------------------------------------------------------------------- pieces
def _text(x: float, y: float, text: str, *, anchor: str = "start", size: float = FONT_SIZE, fill: str = AXIS_COLOUR,
          weight: str = "normal", rotate: float = 0.0, baseline: str = "auto", halo: bool = False) -> str:
    transform = f' transform="rotate({rotate:.1f} {x:.1f} {y:.1f})"' if rotate else ""
    outline = ' stroke="#fff" stroke-width="3" paint-order="stroke"' if halo else ""
    return (f'<text x="{x:.1f}" y="{y:.1f}" text-anchor="{anchor}" font-size="{size:.0f}" fill="{fill}" '
            f'font-weight="{weight}" dominant-baseline="{baseline}"{transform}{outline}>{escape(text)}</text>')


def nice_step(span: float, count: int) -> float:
    """The 1-2-2.5-5 × 10^k step that cuts `span` into at most about `count` intervals."""
    if span <= 0:
        return 1.0
    raw = span / count
    magnitude = 10 ** math.floor(math.log10(raw))
    return next(m * magnitude for m in (1, 2, 2.5, 5, 10) if m * magnitude >= raw)


def nice_range(lo: float, hi: float, count: int = 5) -> tuple[float, float, float]:
    """(lo, hi, step) widened to whole steps around the data."""
    if hi <= lo:
        hi = lo + (abs(lo) or 1.0)
    step = nice_step(hi - lo, count)
    return math.floor(lo / step + 1e-9) * step, math.ceil(hi / step - 1e-9) * step, step


def _tick_label(value: float, step: float, percent: bool) -> str:
    if percent:
        digits = 0 if (step * 100) >= 1 else 1
        return f"{value * 100:.{digits}f}%"
    digits = max(0, -math.floor(math.log10(step))) if step < 1 else 0
    return f"{value:.{digits}f}"


def _y_axis(plot: _Plot, step: float, percent: bool, label: str) -> None:
    lo, hi = plot.y_range
    for k in range(int(round((hi - lo) / step)) + 1):
        value = lo + k * step
        y = plot.py(value)
        plot.add(f'<line x1="{plot.left:.1f}" y1="{y:.1f}" x2="{plot.left + plot.inner_width:.1f}" y2="{y:.1f}" '
                 f'stroke="{GRID_COLOUR}"/>')
        plot.add(_text(plot.left - 6, y, _tick_label(value, step, percent), anchor="end", baseline="middle"))
    plot.add(f'<line x1="{plot.left:.1f}" y1="{plot.top:.1f}" x2="{plot.left:.1f}" '
             f'y2="{plot.top + plot.inner_height:.1f}" stroke="{AXIS_COLOUR}"/>')
    middle = plot.top + plot.inner_height / 2
    plot.add(_text(16, middle, label, anchor="middle", rotate=-90, baseline="middle"))


def _x_axis_numeric(plot: _Plot, step: float, percent: bool, label: str) -> None:
    lo, hi = plot.x_range
    base = plot.top + plot.inner_height
    for k in range(int(round((hi - lo) / step)) + 1):
        value = lo + k * step
        x = plot.px(value)
        plot.add(f'<line x1="{x:.1f}" y1="{plot.top:.1f}" x2="{x:.1f}" y2="{base:.1f}" stroke="{GRID_COLOUR}"/>')
        plot.add(_text(x, base + 16, _tick_label(value, step, percent), anchor="middle"))
    plot.add(f'<line x1="{plot.left:.1f}" y1="{base:.1f}" x2="{plot.left + plot.inner_width:.1f}" y2="{base:.1f}" '
             f'stroke="{AXIS_COLOUR}"/>')
    plot.add(_text(plot.left + plot.inner_width / 2, base + 36, label, anchor="middle"))


def _legend_rows(names: list[str], width: float) -> list[list[tuple[int, str]]]:
    """Legend entries packed into rows that fit `width`."""
    rows: list[list[tuple[int, str]]] = [[]]
    used = 0.0
    for index, name in enumerate(names):
        need = 22 + text_width(shorten(name)) + 18
        if rows[-1] and used + need > width:
            rows.append([])
            used = 0.0
        rows[-1].append((index, name))
        used += need
    return rows


def _legend(plot: _Plot, names: list[str], y: float, kinds: list[str]) -> None:
    for row_number, row in enumerate(_legend_rows(names, plot.width - plot.left - 10)):
        x = plot.left
        row_y = y + row_number * 18
        for index, name in row:
            if kinds[index] == "dashed":
                plot.add(f'<line x1="{x:.1f}" y1="{row_y:.1f}" x2="{x + 16:.1f}" y2="{row_y:.1f}" '
                         f'stroke="{colour(index)}" stroke-width="2" stroke-dasharray="4 3"/>')
            elif kinds[index] == "line":
                plot.add(f'<line x1="{x:.1f}" y1="{row_y:.1f}" x2="{x + 16:.1f}" y2="{row_y:.1f}" '
                         f'stroke="{colour(index)}" stroke-width="2"/>')
            else:
                plot.add(f'<rect x="{x:.1f}" y="{row_y - 6:.1f}" width="12" height="12" fill="{colour(index)}"/>')
            plot.add(_text(x + 20, row_y, shorten(name), baseline="middle"))
            x += 22 + text_width(shorten(name)) + 18


def _legend_height(names: list[str], width: float, left: float) -> float:
    return 18 * len(_legend_rows(names, width - left - 10)) if names else 0


def _title(plot: _Plot, title: str) -> None:
    # A title longer than the chart is cut (the full one is the <svg>'s <title>).
    fits = int((plot.width - plot.left - 6) / text_width("x", 14))
    plot.add(_text(plot.left, 18, shorten(title, fits), size=14, weight="bold", fill="#222"))


def _horizontal_reference(plot: _Plot, value: float, label: str) -> None:
    y = plot.py(value)
    x_end = plot.left + plot.inner_width
    plot.add(f'<line x1="{plot.left:.1f}" y1="{y:.1f}" x2="{x_end:.1f}" y2="{y:.1f}" stroke="#B22222" '
             f'stroke-width="1.5" stroke-dasharray="6 4"><title>{escape(label)}</title></line>')
    # A white halo keeps the label readable where it crosses a bar or a line.
    plot.add(_text(x_end - 4, y - 5, label, anchor="end", fill="#B22222", size=11, halo=True))


# ---------------------------------------------------------------------------------- charts
def bar_chart(categories: list[str], series: list[Bars], *, title: str, y_label: str, percent: bool = True,
              reference: tuple[float, str] | None = None, width: float = 900, height: float = 240) -> str:
    """Grouped bars: one group per category, one bar per series, whiskers for intervals.
    `height` is the data area's; titles, legend and labels add to it."""
    names = [s.name for s in series]
    group = (width - 80 - 20) / max(len(categories), 1)
    labels = [_two_lines(shorten(c), group - 6) for c in categories]
    label_width = max((text_width(line) for lines in labels for line in lines), default=0)
    rotate = label_width > group - 6
    if rotate:
        labels = [[shorten(c)] for c in categories]
        label_width = max(text_width(lines[0]) for lines in labels)
    rows = max((len(lines) for lines in labels), default=1)
    bottom = 30 + (label_width * math.sin(math.radians(35)) if rotate else 12 + 14 * (rows - 1))
    legend = _legend_height(names, width, 80) if len(series) > 1 else 0
    plot = _Plot(width, 34 + legend + height + bottom, 80, 20, 34 + legend, bottom)

    highest = [v for s in series for v in s.values if _finite(v)]
    highest += [ci[1] for s in series for ci in (s.intervals or []) if ci]
    highest += [reference[0]] if reference else []
    lo, hi, step = nice_range(0.0, _headroom(max(highest, default=1.0), percent))
    plot.y_range = (lo, hi)
    _title(plot, title)
    if len(series) > 1:
        _legend(plot, names, 34, ["box"] * len(names))
    _y_axis(plot, step, percent, y_label)

    base = plot.py(0.0)
    bar = min(group * 0.8 / max(len(series), 1), 64)  # a few categories get bars, not slabs
    inner = bar * len(series)
    for c, category in enumerate(categories):
        x0 = plot.left + c * group + (group - inner) / 2
        for s, one in enumerate(series):
            value = one.values[c] if c < len(one.values) else None
            if not _finite(value):
                continue
            x, y = x0 + s * bar, plot.py(value)
            interval = one.intervals[c] if one.intervals and c < len(one.intervals) else None
            shown = _tick_value(value, percent) + (f" [{_tick_value(interval[0], percent)}, "
                                                   f"{_tick_value(interval[1], percent)}]" if interval else "")
            plot.add(f'<rect x="{x + 1:.1f}" y="{min(y, base):.1f}" width="{max(bar - 2, 1):.1f}" '
                     f'height="{max(abs(base - y), 0.5):.1f}" fill="{colour(s)}">'
                     f'<title>{escape(f"{one.name} · {category}: {shown}")}</title></rect>')
            if interval:
                middle, y_lo, y_hi = x + bar / 2, plot.py(interval[0]), plot.py(interval[1])
                cap = min(bar / 4, 5)
                plot.add(f'<path d="M{middle:.1f},{y_lo:.1f}V{y_hi:.1f}M{middle - cap:.1f},{y_lo:.1f}'
                         f'h{2 * cap:.1f}M{middle - cap:.1f},{y_hi:.1f}h{2 * cap:.1f}" stroke="#222" '
                         f'stroke-width="1.2" fill="none"/>')
        label_x, label_y = plot.left + c * group + group / 2, base + 16
        if rotate:
            plot.add(_text(label_x + 4, label_y - 4, labels[c][0], anchor="end", rotate=-35))
        else:
            for row, line in enumerate(labels[c]):
                plot.add(_text(label_x, label_y + 14 * row, line, anchor="middle"))
    plot.add(f'<line x1="{plot.left:.1f}" y1="{base:.1f}" x2="{plot.left + plot.inner_width:.1f}" y2="{base:.1f}" '
             f'stroke="{AXIS_COLOUR}"/>')
    if reference:
        _horizontal_reference(plot, *reference)
    return plot.svg(title)


def _two_lines(label: str, width: float) -> list[str]:
    """The label on one line if it fits, else split at its last space when both halves fit."""
    if text_width(label) <= width or " " not in label:
        return [label]
    head, tail = label.rsplit(" ", 1)
    return [head, tail] if max(text_width(head), text_width(tail)) <= width else [label]


def scatter_chart(points: list[Point], *, title: str, x_label: str, y_label: str, percent: bool = True,
                  width: float = 620, height: float = 320) -> str:
    """One labelled dot per point; labels are nudged so that none overlaps another or a dot."""
    plot = _Plot(width, 34 + height + 50, 80, 30, 34, 50)
    xs = [p.x for p in points if _finite(p.x) and _finite(p.y)]
    ys = [p.y for p in points if _finite(p.x) and _finite(p.y)]
    x_lo, x_hi, x_step = nice_range(0.0, _headroom(max(xs, default=1.0), percent))
    y_lo, y_hi, y_step = nice_range(0.0, _headroom(max(ys, default=1.0), percent))
    plot.x_range, plot.y_range = (x_lo, x_hi), (y_lo, y_hi)
    _title(plot, title)
    _y_axis(plot, y_step, percent, y_label)
    _x_axis_numeric(plot, x_step, percent, x_label)

    shown = [(i, p) for i, p in enumerate(points) if _finite(p.x) and _finite(p.y)]
    dots = [(plot.px(p.x), plot.py(p.y)) for _, p in shown]
    taken = [(x - 5, y - 5, x + 5, y + 5) for x, y in dots]
    for (index, point), (x, y) in zip(shown, dots):
        plot.add(f'<circle cx="{x:.1f}" cy="{y:.1f}" r="5" fill="{colour(index)}" stroke="#fff">'
                 f'<title>{escape(point.note or point.label)}</title></circle>')
        label = shorten(point.label)
        box = _free_label_box(plot, x, y, text_width(label), taken)
        taken.append(box)
        middle = (box[1] + box[3]) / 2
        if abs(middle - y) > FONT_SIZE:  # a label nudged away from its dot gets a leader line back to it
            edge = box[0] if box[0] > x else box[2]
            plot.add(f'<line x1="{x:.1f}" y1="{y:.1f}" x2="{edge:.1f}" y2="{middle:.1f}" stroke="{colour(index)}" '
                     f'stroke-width="1"/>')
        # Anchored at the edge nearest the dot, so the estimated width never leaves a gap there.
        # Dark text: the lighter palette colours read badly as text.
        if box[0] > x:
            plot.add(_text(box[0], box[3] - 3, label, fill="#222"))
        else:
            plot.add(_text(box[2], box[3] - 3, label, fill="#222", anchor="end"))
    return plot.svg(title)


def _free_label_box(plot: _Plot, x: float, y: float, w: float, taken: list) -> tuple:
    """The first candidate box beside (x, y) inside the plot that overlaps nothing placed yet."""
    h = FONT_SIZE + 2
    candidates = []
    for distance in (0, 1, 2, 3, 4):
        shift = distance * (h + 1)
        candidates += [(x + 8, y - h / 2 + s) for s in (shift, -shift)]
        candidates += [(x - 8 - w, y - h / 2 + s) for s in (shift, -shift)]
    bottom = plot.top + plot.inner_height
    inside = [(cx, cy, cx + w, cy + h) for cx, cy in candidates
              if cx >= plot.left and cx + w <= plot.width - 4 and cy >= plot.top and cy + h <= bottom]
    for box in inside or [(x + 8, y - h / 2, x + 8 + w, y + h / 2)]:
        if not any(box[0] < t[2] and t[0] < box[2] and box[1] < t[3] and t[1] < box[3] for t in taken):
            return box
    return (inside or [(x + 8, y - h / 2, x + 8 + w, y + h / 2)])[0]


def line_chart(lines: list[Line], *, title: str, x_label: str, y_label: str,
               y_range: tuple[float, float] | None = None, x_range: tuple[float, float] | None = None,
               percent: bool = False, reference: tuple[float, str] | None = None, diagonal: bool = False,
               width: float = 620, height: float = 220) -> str:
    """Lines with a dot per point; an optional dashed reference level and y = x diagonal."""
    names = [line.name for line in lines]
    legend = _legend_height(names, width, 70)
    plot = _Plot(width, 34 + legend + height + 50, 70, 24, 34 + legend, 50)
    xs = [x for line in lines for x in line.xs if _finite(x)]
    ys = [y for line in lines for y in line.ys if _finite(y)]
    x_lo, x_hi, x_step = nice_range(*(x_range or (min(xs, default=0.0), max(xs, default=1.0))))
    y_lo, y_hi, y_step = nice_range(*(y_range or (min(ys, default=0.0), max(ys, default=1.0))))
    plot.x_range, plot.y_range = (x_lo, x_hi), (y_lo, y_hi)
    _title(plot, title)
    _legend(plot, names, 34, ["dashed" if line.dashed else "line" for line in lines])
    _y_axis(plot, y_step, percent, y_label)
    _x_axis_numeric(plot, x_step, percent, x_label)
    if diagonal:
        low, high = max(x_lo, y_lo), min(x_hi, y_hi)
        plot.add(f'<line x1="{plot.px(low):.1f}" y1="{plot.py(low):.1f}" x2="{plot.px(high):.1f}" '
                 f'y2="{plot.py(high):.1f}" stroke="#999" stroke-dasharray="4 4"><title>perfect calibration'
                 f'</title></line>')
    if reference:
        _horizontal_reference(plot, *reference)
    for index, line in enumerate(lines):
        pairs = [(x, y, (line.notes or [None] * len(line.xs))[k])
                 for k, (x, y) in enumerate(zip(line.xs, line.ys)) if _finite(x) and _finite(y)]
        if not pairs:
            continue
        path = " ".join(f"{'L' if k else 'M'}{plot.px(x):.1f},{plot.py(y):.1f}" for k, (x, y, _) in enumerate(pairs))
        dash = ' stroke-dasharray="5 3"' if line.dashed else ""
        plot.add(f'<path d="{path}" stroke="{colour(index)}" stroke-width="2" fill="none"{dash}/>')
        for x, y, note in pairs:
            hover = note or f"{line.name}: {x:g}, {y:.3g}"
            plot.add(f'<circle cx="{plot.px(x):.1f}" cy="{plot.py(y):.1f}" r="3" fill="{colour(index)}">'
                     f'<title>{escape(hover)}</title></circle>')
    return plot.svg(title)


def _headroom(highest: float, percent: bool) -> float:
    """The axis top: 10% above the data, but never past 100% for rates (a rate cannot exceed it)."""
    top = highest * 1.1 or 0.1
    return min(top, 1.0) if percent and highest <= 1.0 else top


def _finite(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _tick_value(value: float, percent: bool) -> str:
    return f"{value * 100:.1f}%" if percent else f"{value:.3g}"
