"""The chart plans behind the pages' inline SVG (console/web/charts.py): pure geometry,
checked without a browser (marked `browser` with the rest of this folder)."""

from __future__ import annotations

import pytest

from console.web import charts, fmt

pytestmark = pytest.mark.browser


@pytest.mark.parametrize(
    ("peak", "integer", "levels"),
    [
        (0, True, [0, 1]),
        (2, True, [0, 1, 2]),
        (3, True, [0, 1, 2, 3]),
        (7, True, [0, 2, 4, 6, 8]),
        (184, True, [0, 50, 100, 150, 200]),
        (0.3, False, [0, 0.1, 0.2, 0.3]),
        (21.739, False, [0, 10, 20, 30]),
    ],
)
def test_y_scale_is_round_and_covers_the_peak(
    peak: float, integer: bool, levels: list[float]
) -> None:
    assert charts.y_scale(peak, integer=integer) == levels


def test_line_chart_places_points_in_the_plot() -> None:
    chart = charts.line_chart(
        "c", "t", {"a": [(1060, 2), (1000, 0)], "b": []}, 1000, 1300, integer=True
    )
    a, b = chart.series
    assert [p.t for p in a.points] == [1000, 1060]  # sorted by time
    first, second = a.points
    assert (first.x, first.y) == (chart.left, chart.bottom)
    assert second.y == chart.top  # 2 is the top of a 0..2 scale
    assert chart.left < second.x < chart.right
    assert a.path == f"M{first.x},{first.y} L{second.x},{second.y}"
    assert b.points == () and b.path == ""
    assert chart.point_count == 2 and not chart.empty
    assert [t.label for t in chart.y_ticks] == ["0", "1", "2"]
    # Five-minute window: a tick a minute, on whole minutes.
    assert [t.label for t in chart.x_ticks] == ["00:17", "00:18", "00:19", "00:20", "00:21"]


def test_points_outside_the_window_stay_on_its_edge() -> None:
    chart = charts.line_chart("c", "t", {"a": [(900, 1), (2000, 1)]}, 1000, 1300)
    xs = [p.x for p in chart.series[0].points]
    assert xs == [chart.left, chart.right]


def test_bar_chart_lengths_and_labels() -> None:
    chart = charts.bar_chart("b", "t", [("web", 184.0), ("a" * 30, 2.0), ("idle", 0.0)])
    web, long, idle = chart.bars
    assert web.length > long.length > idle.length == 0
    assert long.short.endswith("\u2026") and len(long.short) == charts.BAR_LABEL_CHARS
    assert long.label == "a" * 30
    assert charts.bar_chart("b", "t", []).empty


def test_formats() -> None:
    assert fmt.size(1000) == "1000 B"
    assert fmt.size(192_000) == "187.5 KiB"
    assert fmt.percent(40 / 920) == "4.35 %"
    assert fmt.number(184.0) == "184"
    assert fmt.number(21.7391) == "21.739"
    assert fmt.limit(0) == "unlimited"
    assert fmt.limit(2147483647) == "2,147,483,647"
    assert fmt.when(None) == "\u2014"
