"""Charts as inline SVG, drawn on the server for the dashboard: no JavaScript, no external
assets (inline SVG in HTML needs no namespace URL). Every text that reaches the SVG is
escaped; hover text uses SVG `<title>`."""

from __future__ import annotations

import math
from collections.abc import Sequence
from html import escape

# (name, colour, values): one stacked layer of a column chart.
Layer = tuple[str, str, Sequence[float]]
# (name, colour, value): one bar of a group in a bar chart.
Bar = tuple[str, str, "float | None"]

FONT = "font-family:system-ui,sans-serif;font-size:11px;fill:#555"


def format_number(value: float | None, unit: str = "") -> str:
    if value is None:
        return "-"
    magnitude = abs(value)
    if magnitude >= 1e9:
        text = f"{value / 1e9:.1f}G"
    elif magnitude >= 1e6:
        text = f"{value / 1e6:.1f}M"
    elif magnitude >= 1e4:
        text = f"{value / 1e3:.1f}k"
    elif magnitude >= 100 or float(value).is_integer():
        text = f"{value:.0f}"
    else:
        text = f"{value:.1f}"
    return f"{text} {unit}".strip()


def nice_ceiling(value: float) -> float:
    """The smallest 1, 2 or 5 times a power of ten that is >= value (1 for empty charts)."""
    if value <= 0:
        return 1.0
    power = 10 ** math.floor(math.log10(value))
    for step in (1, 2, 5, 10):
        if step * power >= value:
            return float(step * power)
    return float(10 * power)


def _legend(items: Sequence[tuple[str, str]], x: float, y: float) -> str:
    parts = []
    for name, colour in items:
        parts.append(
            f'<rect x="{x:.1f}" y="{y - 9:.1f}" width="10" height="10" fill="{escape(colour)}"/>'
            f'<text x="{x + 14:.1f}" y="{y:.1f}" style="{FONT}">{escape(name)}</text>'
        )
        x += 22 + 7 * len(name)
    return "".join(parts)


def column_chart(
    labels: Sequence[str],
    layers: Sequence[Layer],
    *,
    title: str,
    width: int = 720,
    height: int = 220,
    unit: str = "",
) -> str:
    """Stacked columns, one per label (e.g. one per time bucket), with a y axis."""
    left, right, top, bottom = 52, 10, 28, 26
    plot_w, plot_h = width - left - right, height - top - bottom
    count = max(1, len(labels))
    totals = [sum(layer[2][i] for layer in layers) for i in range(len(labels))]
    ceiling = nice_ceiling(max(totals, default=0))
    slot = plot_w / count
    bar_w = max(1.0, slot * 0.8)
    out = [
        f'<svg width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" role="img" aria-label="{escape(title)}">',
        f'<text x="{left}" y="14" style="{FONT};font-weight:600;fill:#222">{escape(title)}</text>',
        _legend([(name, colour) for name, colour, _ in layers], left + 8 + 7 * len(title), 14),
    ]
    for i in range(5):
        value = ceiling * i / 4
        y = top + plot_h - plot_h * i / 4
        out.append(
            f'<line x1="{left}" y1="{y:.1f}" x2="{width - right}" y2="{y:.1f}" '
            f'stroke="#e5e5e5"/><text x="{left - 6}" y="{y + 4:.1f}" text-anchor="end" '
            f'style="{FONT}">{escape(format_number(value))}</text>'
        )
    for i, label in enumerate(labels):
        x = left + slot * i + (slot - bar_w) / 2
        base = top + plot_h
        tip = [f"{label}"] + [
            f"{name}: {format_number(values[i], unit)}" for name, _, values in layers
        ]
        out.append(f"<g><title>{escape(chr(10).join(tip))}</title>")
        for _name, colour, values in layers:
            h = plot_h * values[i] / ceiling
            if h > 0:
                base -= h
                out.append(
                    f'<rect x="{x:.1f}" y="{base:.1f}" width="{bar_w:.1f}" height="{h:.1f}" '
                    f'fill="{escape(colour)}"/>'
                )
        out.append("</g>")
    step = max(1, math.ceil(len(labels) / 8))
    for i in range(0, len(labels), step):
        x = left + slot * i + slot / 2
        out.append(
            f'<text x="{x:.1f}" y="{height - 8}" text-anchor="middle" style="{FONT}">'
            f"{escape(labels[i])}</text>"
        )
    out.append(
        f'<line x1="{left}" y1="{top + plot_h}" x2="{width - right}" y2="{top + plot_h}" '
        f'stroke="#999"/></svg>'
    )
    return "".join(out)


def bar_chart(
    groups: Sequence[tuple[str, Sequence[Bar]]],
    *,
    title: str,
    width: int = 720,
    unit: str = "",
) -> str:
    """Horizontal bars, a few per group (e.g. p50 and p95 latency per model)."""
    label_w, right, top, bar_h, gap = 200, 70, 28, 12, 10
    bars_per_group = max((len(bars) for _, bars in groups), default=1)
    group_h = bars_per_group * (bar_h + 2) + gap
    height = top + max(1, len(groups)) * group_h + 6
    plot_w = width - label_w - right
    values = [v for _, bars in groups for _, _, v in bars if v is not None]
    ceiling = nice_ceiling(max(values, default=0))
    legend_items = list(dict.fromkeys((n, c) for _, bars in groups for n, c, _ in bars))
    out = [
        f'<svg width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" role="img" aria-label="{escape(title)}">',
        f'<text x="4" y="14" style="{FONT};font-weight:600;fill:#222">{escape(title)}</text>',
        _legend(legend_items, 16 + 7 * len(title), 14),
    ]
    if not groups:
        out.append(f'<text x="4" y="{top + 12}" style="{FONT}">no requests</text>')
    for g, (label, bars) in enumerate(groups):
        y = top + g * group_h
        short = label if len(label) <= 30 else label[:29] + "…"
        out.append(
            f'<text x="{label_w - 6}" y="{y + bar_h:.1f}" text-anchor="end" style="{FONT}">'
            f"<title>{escape(label)}</title>{escape(short)}</text>"
        )
        for b, (name, colour, value) in enumerate(bars):
            by = y + b * (bar_h + 2)
            w = 0.0 if value is None else plot_w * value / ceiling
            out.append(
                f"<g><title>{escape(f'{label} {name}: {format_number(value, unit)}')}</title>"
                f'<rect x="{label_w}" y="{by:.1f}" width="{max(w, 0.5):.1f}" height="{bar_h}" '
                f'fill="{escape(colour)}"/>'
                f'<text x="{label_w + w + 4:.1f}" y="{by + bar_h - 2:.1f}" '
                f'style="{FONT}">{escape(format_number(value, unit))}</text></g>'
            )
    out.append("</svg>")
    return "".join(out)
