"""Server-side SVG charts (pygal) for the dashboard; no script, no web font, no CDN."""

from __future__ import annotations

from collections.abc import Sequence

import pygal
from markupsafe import Markup
from pygal.style import Style

STYLE = Style(
    background="white",
    plot_background="white",
    foreground="#1a1f24",
    foreground_strong="#1a1f24",
    foreground_subtle="#4f5a64",
    colors=("#0b5cad", "#c2410c", "#11692f", "#7c3aed", "#a3131b", "#0e7490", "#7a4b00"),
    font_family="system-ui, sans-serif",
    label_font_size=13,
    major_label_font_size=13,
    legend_font_size=13,
    title_font_size=15,
    value_font_size=12,
)


def _config(chart: pygal.graph.graph.Graph, title: str) -> None:
    chart.config.js = []  # pygal links its tooltip script from a CDN by default: not here
    chart.config.disable_xml_declaration = True
    chart.config.style = STYLE
    chart.config.width = 640
    chart.config.height = 320
    chart.config.explicit_size = False
    chart.config.legend_at_bottom = True
    chart.config.print_values = False
    chart.config.truncate_label = -1  # month labels whole, never "2026…"
    chart.config.x_label_rotation = 30
    chart.config.title = title


def _svg(chart: pygal.graph.graph.Graph) -> Markup:
    return Markup(chart.render(is_unicode=True))


def bars(
    title: str,
    labels: Sequence[str],
    series: Sequence[tuple[str, Sequence[float | None]]],
    *,
    stacked: bool = False,
) -> Markup:
    chart = pygal.StackedBar() if stacked else pygal.Bar()
    _config(chart, title)
    chart.x_labels = list(labels)
    for name, values in series:
        chart.add(name, list(values))
    return _svg(chart)


def line_and_bars(
    title: str,
    labels: Sequence[str],
    bars_: Sequence[tuple[str, Sequence[float]]],
) -> Markup:
    chart = pygal.Bar()
    _config(chart, title)
    chart.x_labels = list(labels)
    for name, values in bars_:
        chart.add(name, list(values))
    return _svg(chart)


def pie(title: str, parts: Sequence[tuple[str, float]]) -> Markup:
    chart = pygal.Pie(inner_radius=0.45)
    _config(chart, title)
    for name, value in parts:
        chart.add(name, value)
    return _svg(chart)


def gauge(title: str, label: str, value: float | None) -> Markup:
    chart = pygal.SolidGauge(inner_radius=0.7, half_pie=True)
    _config(chart, title)
    chart.config.height = 240
    chart.add(label, [{"value": value or 0, "max_value": 100}])
    chart.value_formatter = lambda x: f"{x:.1f}%"
    return _svg(chart)
