"""Vendor shims: one adapter per accelerator vendor behind the interface in :mod:`agents.shims.base`.

:func:`all_shims` builds every real shim; vendors whose tool or library is missing report themselves absent at
discovery, so an agent can simply try them all::

    >>> sorted(s.vendor for s in all_shims(catalog=None))[:3]
    ['amd', 'cambricon', 'huawei']
"""

from __future__ import annotations

from agents.shims.base import Shim
from scheduler.catalog import Catalog

VENDORS = ("nvidia", "huawei", "cambricon", "amd", "hygon", "kunlunxin", "iluvatar", "metax", "moorethreads")


def make_shim(vendor: str, catalog: Catalog | str | None = "default", timeout_s: float = 5.0) -> Shim:
    """The shim for one vendor name (see :data:`VENDORS`)."""
    from agents.shims.amd import AmdShim
    from agents.shims.ascend import AscendShim
    from agents.shims.cambricon import CambriconShim
    from agents.shims.hygon import HygonShim
    from agents.shims.iluvatar import IluvatarShim
    from agents.shims.kunlunxin import KunlunxinShim
    from agents.shims.metax import MetaxShim
    from agents.shims.moorethreads import MooreThreadsShim
    from agents.shims.nvml import NvmlShim

    if vendor == "nvidia":
        return NvmlShim(catalog=catalog)
    if vendor == "amd":
        return AmdShim(catalog=catalog, timeout_s=timeout_s)
    cli = {
        "huawei": AscendShim,
        "cambricon": CambriconShim,
        "hygon": HygonShim,
        "kunlunxin": KunlunxinShim,
        "iluvatar": IluvatarShim,
        "metax": MetaxShim,
        "moorethreads": MooreThreadsShim,
    }
    if vendor not in cli:
        raise ValueError(f"unknown vendor {vendor!r} (known: {', '.join(VENDORS)})")
    shim: Shim = cli[vendor](catalog=catalog, timeout_s=timeout_s)
    return shim


def all_shims(catalog: Catalog | str | None = "default", timeout_s: float = 5.0) -> list[Shim]:
    return [make_shim(v, catalog, timeout_s) for v in VENDORS]
