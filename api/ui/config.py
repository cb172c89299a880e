"""Settings of the dashboard, read from ``ZHISUAN_UI_*`` environment variables (per request: cheap, and tests
can change them without rebuilding the app).

    >>> c = UiConfig.from_env({"ZHISUAN_UI_SESSION_S": "600", "ZHISUAN_UI": "0"})
    >>> (c.enabled, c.session_s, c.max_streams)
    (False, 600.0, 3)

=================================  ==================================================================
``ZHISUAN_UI``                      ``0`` turns the dashboard off (every ``/ui`` path answers 404)
``ZHISUAN_UI_SESSION_S``            lifetime of a browser session token (default 8 h)
``ZHISUAN_UI_REPORTS_DIR``          folder of simulator HTML reports listed on the admin reports page
``ZHISUAN_UI_GRAFANA_URL``          link to the devices dashboard in Grafana (admin pages), if set
``ZHISUAN_UI_RAY_DASHBOARD_URL``    link to the Ray dashboard (admin pages, loopback only), if set
=================================  ==================================================================
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

DEFAULT_SESSION_S = 8 * 3600.0


@dataclass(frozen=True)
class UiConfig:
    enabled: bool = True
    session_s: float = DEFAULT_SESSION_S
    reports_dir: Path | None = None
    grafana_url: str | None = None
    ray_dashboard_url: str | None = None
    #: event streams one session may hold open at once (tabs); one more is refused with 429
    max_streams: int = 3

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> UiConfig:
        env = os.environ if env is None else env
        raw = env.get("ZHISUAN_UI_SESSION_S", "").strip()
        try:
            session_s = float(raw) if raw else DEFAULT_SESSION_S
        except ValueError:
            raise ValueError(f"ZHISUAN_UI_SESSION_S={raw!r} is not a number of seconds") from None
        if session_s <= 0:
            raise ValueError(f"ZHISUAN_UI_SESSION_S={raw!r} must be positive")
        reports = env.get("ZHISUAN_UI_REPORTS_DIR", "").strip()
        return cls(
            enabled=env.get("ZHISUAN_UI", "1").strip().lower() not in ("0", "false", "no", "off"),
            session_s=session_s,
            reports_dir=Path(reports) if reports else None,
            grafana_url=env.get("ZHISUAN_UI_GRAFANA_URL", "").strip() or None,
            ray_dashboard_url=env.get("ZHISUAN_UI_RAY_DASHBOARD_URL", "").strip() or None,
        )
