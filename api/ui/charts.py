"""Charts as server-rendered SVG: no script, no inline style (the CSP forbids both), colours by CSS class, every
text escaped. A chart is readable without JavaScript and testable without a browser.

    >>> svg = quota_bar(usage=40, guarantee=16, deserved=32, limit=64, unit="H100")
    >>> 'class="bar-borrowed"' in svg and "<title>" in svg
    True
    >>> "&lt;b&gt;" in columns(["<b>"], [1.0], unit="jobs")
    True
"""

from __future__ import annotations

from collections.abc import Sequence

from markupsafe import Markup, escape

from api.ui.fmt import devices as fmt_devices
from api.ui.fmt import number

PALETTE = 8


def _num(value: float) -> str:
    return f"{value:.2f}".rstrip("0").rstrip(".")


def quota_bar(
    usage: float,
    guarantee: float,
    deserved: float | None,
    limit: float | None,
    unit: str,
    labels: dict[str, str] | None = None,
) -> Markup:
    """One queue's use of one flavor: the used part up to its nominal share solid, the borrowed part (above
    deserved) hatched, and marks at guarantee, deserved and limit."""
    words = {
        "usage": "usage",
        "guarantee": "guarantee",
        "deserved": "deserved",
        "limit": "limit",
        "borrowed": "borrowed",
    }
    words.update(labels or {})
    nominal = deserved if deserved is not None else (guarantee or None)
    top = max(v for v in (usage, guarantee, deserved or 0.0, limit or 0.0, 1e-9))
    width = 300.0

    def x(value: float) -> float:
        return width * min(value, top) / top

    own = min(usage, nominal) if nominal is not None else usage
    borrowed = max(0.0, usage - nominal) if nominal is not None else 0.0
    parts = [
        # Stretches to its cell (app.css): a fixed 300 px overflowed the quota panel of a narrow column.
        f'<svg class="chart quota" viewBox="0 0 {width:.0f} 22" width="{width:.0f}" height="22" '
        'preserveAspectRatio="none" role="img">',
        f"<title>{escape(words['usage'])} {escape(fmt_devices(usage))} {escape(unit)}</title>",
        f'<rect class="bar-track" x="0" y="4" width="{width:.0f}" height="14"/>',
        f'<rect class="bar-use" x="0" y="4" width="{x(own):.1f}" height="14"/>',
    ]
    if borrowed > 0:
        parts.append(f'<rect class="bar-borrowed" x="{x(own):.1f}" y="4" width="{x(usage) - x(own):.1f}" height="14"/>')
    for name, value in (("guarantee", guarantee), ("deserved", deserved), ("limit", limit)):
        if value is None or (name == "guarantee" and value == 0):
            continue
        pos = min(x(value), width - 1)
        parts.append(
            f'<line class="mark mark-{name}" x1="{pos:.1f}" x2="{pos:.1f}" y1="0" y2="22">'
            f"<title>{escape(words[name])} {escape(fmt_devices(value))}</title></line>"
        )
    parts.append("</svg>")
    return Markup("".join(parts))


def columns(labels: Sequence[str], values: Sequence[float], unit: str, height: int = 120) -> Markup:
    """A column chart (one value per label), e.g. nodes by free whole devices."""
    n = max(1, len(values))
    top = max([*values, 1e-9])
    width = max(160, 36 * n)
    step = width / n
    parts = [f'<svg class="chart columns" viewBox="0 0 {width} {height + 30}" width="{width}" role="img">']
    for i, (label, value) in enumerate(zip(labels, values, strict=True)):
        h = height * value / top
        parts.append(
            f'<rect class="s0" x="{i * step + 4:.1f}" y="{height - h + 10:.1f}" '
            f'width="{step - 8:.1f}" height="{h:.1f}"><title>{escape(label)}: {escape(number(value))} '
            f"{escape(unit)}</title></rect>"
            f'<text x="{i * step + step / 2:.1f}" y="{height + 26}" text-anchor="middle">{escape(label)}</text>'
            f'<text x="{i * step + step / 2:.1f}" y="{height - h + 6:.1f}" text-anchor="middle">'
            f"{escape(number(value))}</text>"
        )
    parts.append("</svg>")
    return Markup("".join(parts))


def stacked(
    times: Sequence[float],
    series: dict[str, Sequence[float]],
    unit: str,
    label_time: str = "",
    height: int = 140,
) -> Markup:
    """Stacked columns over time (one column per bucket, one colour per key), with a legend and the maximum."""
    buckets = len(times)
    width = 600
    keys = sorted(series)
    totals = [sum(series[k][i] for k in keys) for i in range(buckets)]
    top = max([*totals, 1.0])  # a scale of at least one unit: a blip must not fill the chart
    step = width / max(1, buckets)
    parts = [
        f'<svg class="chart stacked" viewBox="0 0 {width} {height + 24}" width="100%" role="img">',
        f'<text class="axis" x="2" y="10">{escape(number(top))} {escape(unit)}</text>',
        f'<line class="axis" x1="0" x2="{width}" y1="{height + 4}" y2="{height + 4}"/>',
    ]
    for i in range(buckets):
        y = float(height + 4)
        for k_index, key in enumerate(keys):
            value = series[key][i]
            if value <= 0:
                continue
            h = (height - 12) * value / top
            y -= h
            parts.append(
                f'<rect class="s{k_index % PALETTE}" x="{i * step + 0.5:.1f}" y="{y:.1f}" '
                f'width="{max(step - 1, 1):.1f}" height="{h:.1f}">'
                f"<title>{escape(key)}: {escape(_num(value))} {escape(unit)}</title></rect>"
            )
    parts.append(f'<text class="axis" x="{width - 2}" y="{height + 20}" text-anchor="end">{escape(label_time)}</text>')
    parts.append("</svg>")
    legend = "".join(
        f'<span class="key"><svg width="10" height="10"><rect class="s{i % PALETTE}" width="10" height="10"/></svg>'
        f" {escape(key)}</span>"
        for i, key in enumerate(keys)
    )
    return Markup("".join(parts) + f'<div class="legend">{legend}</div>')
