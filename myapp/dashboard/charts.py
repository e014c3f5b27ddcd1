"""Server-side SVG charts for the dashboard: no JavaScript, no CDN, every label escaped.

:func:`stacked_bars` draws bookings per day, one colour per status;
:func:`horizontal_bars` draws each driver's load. Both return
:class:`markupsafe.Markup` (inline SVG) sized by a ``viewBox``, so they scale
with the page; bars carry ``<title>`` tooltips and ``data-`` attributes that
the tests read.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import date

from markupsafe import Markup, escape

#: the dashboard's status colours (dashboard.css uses the same)
COLOURS = {
    "pending": "#d98a00",
    "assigned": "#2456d6",
    "completed": "#1f9d55",
    "cancelled": "#9aa1ad",
}


def _nice_max(value: int) -> int:
    """A round axis maximum at or above ``value`` (1, 2 or 5 times a power of 10)."""
    if value <= 0:
        return 1
    step = 1
    while True:
        for factor in (1, 2, 5):
            if step * factor >= value:
                return step * factor
        step *= 10


def stacked_bars(
    days: Sequence[date],
    counts: Mapping[str, Sequence[int]],
    *,
    today: date | None = None,
    title: str,
    width: int = 720,
    height: int = 240,
) -> Markup:
    """Bars per day, stacked by status (``counts[status][i]`` is day ``i``'s count)."""
    left, right, top, bottom = 36, 8, 12, 34
    plot_w, plot_h = width - left - right, height - top - bottom
    totals = [sum(series[i] for series in counts.values()) for i in range(len(days))]
    ymax = _nice_max(max(totals, default=0))
    slot = plot_w / max(len(days), 1)
    bar_w = max(slot * 0.7, 1)
    parts = [
        f'<svg class="chart" data-chart="bookings-per-day" viewBox="0 0 {width} {height}" '
        f'role="img" aria-label="{escape(title)}" xmlns="http://www.w3.org/2000/svg">',
        f"<title>{escape(title)}</title>",
    ]
    for tick in (0, ymax // 2, ymax):
        y = top + plot_h - plot_h * tick / ymax
        parts.append(
            f'<line x1="{left}" x2="{width - right}" y1="{y:.1f}" y2="{y:.1f}" '
            'stroke="#e3e7ee"/>'
            f'<text x="{left - 6}" y="{y + 4:.1f}" text-anchor="end" font-size="11" '
            f'fill="#6b7385">{tick}</text>'
        )
    for i, day in enumerate(days):
        x = left + i * slot + (slot - bar_w) / 2
        y = top + plot_h
        if today is not None and day == today:
            parts.append(
                f'<rect x="{left + i * slot:.1f}" y="{top}" width="{slot:.1f}" '
                f'height="{plot_h}" fill="#eef3ff" data-today="{day.isoformat()}"/>'
            )
        for status, series in counts.items():
            n = series[i]
            if not n:
                continue
            h = plot_h * n / ymax
            y -= h
            parts.append(
                f'<rect x="{x:.1f}" y="{y:.1f}" width="{bar_w:.1f}" height="{h:.1f}" '
                f'fill="{COLOURS.get(status, "#888")}" data-day="{day.isoformat()}" '
                f'data-status="{escape(status)}" data-count="{n}">'
                f"<title>{day:%a %d %b}: {n} {escape(status)}</title></rect>"
            )
        if len(days) <= 14 or i % 2 == 0:
            parts.append(
                f'<text x="{left + i * slot + slot / 2:.1f}" y="{height - bottom + 14}" '
                f'text-anchor="middle" font-size="10" fill="#6b7385">{day:%d}</text>'
            )
    if days:
        parts.append(
            f'<text x="{left}" y="{height - 4}" font-size="11" fill="#6b7385">'
            f"{days[0]:%d %b} to {days[-1]:%d %b}</text>"
        )
    legend_x = width - right
    for status in reversed(list(counts)):
        label = escape(status)
        legend_x -= 12 + 7 * len(status) + 14
        parts.append(
            f'<rect x="{legend_x}" y="{height - 13}" width="10" height="10" '
            f'fill="{COLOURS.get(status, "#888")}"/>'
            f'<text x="{legend_x + 14}" y="{height - 4}" font-size="11" fill="#1d2433">'
            f"{label}</text>"
        )
    parts.append("</svg>")
    return Markup("".join(parts))


def horizontal_bars(
    rows: Sequence[tuple[str, Mapping[str, int]]],
    *,
    title: str,
    width: int = 420,
    row_height: int = 26,
) -> Markup:
    """One bar per row (a driver), stacked by the statuses of ``rows[i][1]``."""
    left, right, top = 130, 40, 6
    height = top * 2 + row_height * max(len(rows), 1)
    totals = [sum(values.values()) for _, values in rows]
    xmax = _nice_max(max(totals, default=0))
    plot_w = width - left - right
    parts = [
        f'<svg class="chart" data-chart="driver-load" viewBox="0 0 {width} {height}" '
        f'role="img" aria-label="{escape(title)}" xmlns="http://www.w3.org/2000/svg">',
        f"<title>{escape(title)}</title>",
    ]
    for i, (name, values) in enumerate(rows):
        y = top + i * row_height
        shown = name if len(name) <= 18 else name[:17] + "…"
        parts.append(
            f'<text x="{left - 8}" y="{y + row_height * 0.65:.1f}" text-anchor="end" '
            f'font-size="12" fill="#1d2433">{escape(shown)}</text>'
        )
        x = float(left)
        for status, n in values.items():
            if not n:
                continue
            w = plot_w * n / xmax
            parts.append(
                f'<rect x="{x:.1f}" y="{y + 4}" width="{w:.1f}" height="{row_height - 8}" '
                f'fill="{COLOURS.get(status, "#888")}" data-driver="{escape(name)}" '
                f'data-status="{escape(status)}" data-count="{n}">'
                f"<title>{escape(name)}: {n} {escape(status)}</title></rect>"
            )
            x += w
        parts.append(
            f'<text x="{x + 6:.1f}" y="{y + row_height * 0.65:.1f}" font-size="12" '
            f'fill="#6b7385">{totals[i]}</text>'
        )
    parts.append("</svg>")
    return Markup("".join(parts))
