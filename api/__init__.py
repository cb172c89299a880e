"""The tenant REST API (FastAPI + SQLModel), its SDK and the ``zhisuan`` command line::

    from api import ZhisuanClient
    with ZhisuanClient("http://127.0.0.1:8000", token="zs_...") as zs:
        print([job.name for job in zs.list_jobs(state="running")])

The names below are the public surface; they load on first use (the SDK needs neither FastAPI nor SQLModel).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from api.app import create_app
    from api.client import ApiError, Unreachable, ZhisuanClient
    from api.models import JobOut, NodeOut, QueueOut, UsageOut
    from api.settings import Settings

_EXPORTS = {
    "ZhisuanClient": "api.client",
    "ApiError": "api.client",
    "Unreachable": "api.client",
    "JobOut": "api.models",
    "QueueOut": "api.models",
    "NodeOut": "api.models",
    "UsageOut": "api.models",
    "create_app": "api.app",
    "Settings": "api.settings",
}
__all__ = [
    "ApiError",
    "JobOut",
    "NodeOut",
    "QueueOut",
    "Settings",
    "Unreachable",
    "UsageOut",
    "ZhisuanClient",
    "create_app",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'api' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
