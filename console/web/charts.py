"""Chart geometry for the pages: pure data, drawn as inline SVG by templates/_charts.html.

Nothing here formats markup: a chart is a plan (coordinates, paths, tick labels) and the
template renders it with Jinja's escaping, so a label can never become markup.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

# Plot area inside the SVG's viewBox (left room for y labels, bottom room for x labels).
WIDTH, HEIGHT = 640, 220
LEFT, RIGHT, TOP, BOTTOM = 32, 12, 12, 28  # LEFT grows with the y labels
BAR_HEIGHT, BAR_GAP, BAR_LABEL = 22, 8, 130
BAR_LABEL_CHARS = 18
# Candidate x-tick steps in seconds; the smallest that gives at most MAX_X_TICKS wins.
X_STEPS = (10, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 10800, 21600)
MAX_X_TICKS = 6


@dataclass(frozen=True)
class Point:
    x: float
    y: float
    t: int
    value: float
    label: str  # the tooltip: time and value


@dataclass(frozen=True)
class Series:
    name: str
    css: str  # a class name the stylesheet colours
    points: tuple[Point, ...]
    path: str  # SVG path data through the points ("" when there are none)


@dataclass(frozen=True)
class Tick:
    pos: float
    label: str


@dataclass(frozen=True)
class LineChart:
    id: str
    title: str
    width: int
    height: int
    left: int
    right: int  # x of the plot's right edge
    top: int
    bottom: int  # y of the plot's bottom edge (the zero line)
    series: tuple[Series, ...]
    x_ticks: tuple[Tick, ...]
    y_ticks: tuple[Tick, ...]

    @property
    def empty(self) -> bool:
        return not any(s.points for s in self.series)

    @property
    def point_count(self) -> int:
        return sum(len(s.points) for s in self.series)


@dataclass(frozen=True)
class Bar:
    label: str
    short: str  # the label as drawn (long ones cut; the full one is in the tooltip)
    value: float
    text: str  # the value as shown
    y: float
    length: float


@dataclass(frozen=True)
class BarChart:
    id: str
    title: str
    width: int
    height: int
    label_width: int
    bar_height: int
    bars: tuple[Bar, ...]

    @property
    def empty(self) -> bool:
        return not self.bars


def nice_step(value: float) -> float:
    """The smallest 1, 2 or 5 times a power of ten at or above `value` (1 for nothing)."""
    if value <= 0:
        return 1.0
    power = 10.0 ** math.floor(math.log10(value))
    for factor in (1, 2, 5):
        if value <= factor * power * (1 + 1e-9):
            return factor * power
    return 10 * power


def y_scale(peak: float, *, integer: bool) -> list[float]:
    """At most five round tick values from 0 to at or above `peak` (whole ones for counts)."""
    step = nice_step(peak / 4)
    if integer:
        step = max(step, 1.0)
    steps = max(1, math.ceil(peak / step - 1e-9))
    return [round(step * i, 10) for i in range(steps + 1)]


def _number(value: float) -> str:
    return f"{value:g}" if value < 1e6 else f"{value:.3g}"


def _clock(t: int, step: int) -> str:
    stamp = datetime.fromtimestamp(t, UTC)
    return stamp.strftime("%H:%M:%S" if step < 60 else "%H:%M")


def line_chart(
    id: str,
    title: str,
    series: Mapping[str, Sequence[tuple[int, float]]],
    start: int,
    end: int,
    *,
    css: Mapping[str, str] | None = None,
    unit: str = "",
    integer: bool = False,
) -> LineChart:
    """Lines over time: `series` maps a name to its (unix time, value) points; x spans
    [start, end] (the window asked for), y spans [0, a round number at or above the largest];
    `integer` charts (counts) get whole-number ticks only."""
    right, bottom = WIDTH - RIGHT, HEIGHT - BOTTOM
    span = max(end - start, 1)
    peak = max((v for points in series.values() for _, v in points), default=0.0)
    levels = y_scale(peak, integer=integer)
    top_value = levels[-1]
    labels = [_number(v) + unit for v in levels]
    # Room for the longest y label (about 6.5 px a character at the chart's font size).
    left = max(LEFT, round(10 + 6.5 * max(len(label) for label in labels)))

    def x_of(t: int) -> float:
        return round(left + (min(max(t, start), end) - start) / span * (right - left), 1)

    def y_of(value: float) -> float:
        return round(bottom - value / top_value * (bottom - TOP), 1)

    drawn = []
    for name, points in series.items():
        placed = tuple(
            Point(
                x_of(t),
                y_of(v),
                t,
                v,
                f"{_clock(t, 1)} UTC: {name} {_number(v)}{unit}",
            )
            for t, v in sorted(points)
        )
        path = " ".join(f"{'M' if i == 0 else 'L'}{p.x},{p.y}" for i, p in enumerate(placed))
        drawn.append(Series(name, (css or {}).get(name, "s0"), placed, path))

    step = next((s for s in X_STEPS if span / s <= MAX_X_TICKS), X_STEPS[-1])
    first = start - start % step + (step if start % step else 0)
    x_ticks = tuple(Tick(x_of(t), _clock(t, step)) for t in range(first, end + 1, step))
    y_ticks = tuple(Tick(y_of(v), label) for v, label in zip(levels, labels, strict=True))
    return LineChart(
        id, title, WIDTH, HEIGHT, left, right, TOP, bottom, tuple(drawn), x_ticks, y_ticks
    )


def bar_chart(
    id: str,
    title: str,
    rows: Sequence[tuple[str, float]],
    fmt: Callable[[float], str] = _number,
    *,
    width: int = 420,
) -> BarChart:
    """Horizontal bars, one per (label, value), longest for the largest value."""
    peak = max((v for _, v in rows), default=0.0) or 1.0
    room = width - BAR_LABEL - 70  # the value text sits right of the bar
    bars = tuple(
        Bar(
            label,
            label if len(label) <= BAR_LABEL_CHARS else label[: BAR_LABEL_CHARS - 1] + "\u2026",
            value,
            fmt(value),
            i * (BAR_HEIGHT + BAR_GAP),
            round(max(value / peak * room, 1.0 if value else 0.0), 1),
        )
        for i, (label, value) in enumerate(rows)
    )
    height = max(len(bars) * (BAR_HEIGHT + BAR_GAP) - BAR_GAP, BAR_HEIGHT)
    return BarChart(id, title, width, height, BAR_LABEL, BAR_HEIGHT, bars)
