"""How the dashboard writes numbers and times: NCU to 0.1, devices to the milli-device, money with its currency,
times relative with the UTC time beside them. A value nobody knows is never written as 0: the templates show
"—" with the reason (:class:`Unknown`).

    >>> ncu(12.345), devices(1.5), devices(0.125), devices(8.0)
    ('12.3', '1.5', '0.125', '8')
    >>> money(1234.5, "CNY")
    '1,234.50 CNY'
    >>> pct(0.4251)
    '42.5 %'
    >>> duration(59), duration(3600 * 5 + 60 * 7), duration(86400 * 2 + 3600)
    ('59 s', '5 h 7 min', '2 d 1 h')
    >>> utc(0.0)
    '1970-01-01 00:00:00 UTC'
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime


@dataclass(frozen=True)
class Unknown:
    """A value that is not known, and why (rendered as "—" with the reason as its tooltip and text)."""

    reason: str

    def __bool__(self) -> bool:
        return False


def ncu(value: float) -> str:
    return f"{value:.1f}"


def devices(value: float) -> str:
    """Devices to the milli-device: 0.125 of a device is a real allocation, 0.1251 is not."""
    text = f"{value:.3f}".rstrip("0").rstrip(".")
    return text if text not in ("", "-0") else "0"


def money(value: float, currency: str) -> str:
    return f"{value:,.2f} {currency}"


def pct(share: float) -> str:
    """A share (0..1) as a percentage."""
    return f"{share * 100:.1f} %"


def number(value: float) -> str:
    """Integers without a fraction, others to 0.1."""
    return f"{value:.0f}" if float(value).is_integer() else f"{value:.1f}"


def duration(seconds: float) -> str:
    seconds = max(0.0, seconds)
    if seconds < 60:
        return f"{seconds:.0f} s"
    minutes = int(seconds // 60)
    if minutes < 60:
        return f"{minutes} min"
    hours, minutes = divmod(minutes, 60)
    if hours < 24:
        return f"{hours} h {minutes} min" if minutes else f"{hours} h"
    days, hours = divmod(hours, 24)
    return f"{days} d {hours} h" if hours else f"{days} d"


def utc(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def month_label(ts: float) -> str:
    """``YYYY-MM`` of a time (UTC)."""
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m")


def parse_month(text: str) -> float | None:
    """The start (UTC epoch seconds) of month ``YYYY-MM``; None when ``text`` is not one.

    >>> parse_month("2026-02"), parse_month("2026-13"), parse_month("<x>")
    (1769904000.0, None, None)
    """
    try:
        day = datetime.strptime(text.strip(), "%Y-%m").replace(tzinfo=UTC)
    except ValueError:
        return None
    return day.timestamp()
