"""The web dashboard, served by the API process under ``/ui`` (see ``api/ui/README.md``).

``api.app.create_app`` includes :data:`router`; ``ZHISUAN_UI=0`` turns every ``/ui`` path into a 404.
"""

from __future__ import annotations

from fastapi import APIRouter, Depends

from api.problems import Problem
from api.ui import admin, entry, pages
from api.ui.config import UiConfig


def _enabled() -> None:
    if not UiConfig.from_env().enabled:
        raise Problem("not-found", "the dashboard is turned off on this server (ZHISUAN_UI=0)")


router = APIRouter(prefix="/ui", include_in_schema=False, dependencies=[Depends(_enabled)])
router.include_router(entry.router)
router.include_router(admin.router)
router.include_router(pages.router)

__all__ = ["router"]
