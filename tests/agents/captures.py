"""The real captures of vendor tools kept under ``tests/fixtures/<vendor>/``, and what each one shows.

Each :class:`Capture` names the output files (keyed by the arguments the tool was run with), where they come from,
the tool version and board they show, and what a reader of the capture sees in it: how many devices, which catalog
model each is (``None`` for parts the catalog does not have), and the values printed for the first device. The
tests replay every capture through its shim with a real subprocess (:func:`write_replay_tool`) and compare; the
same list drives ``benchmarks/shim_coverage.py``. Sources are cited in each vendor folder's README.
"""

from __future__ import annotations

import shlex
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"


@dataclass(frozen=True)
class Capture:
    vendor: str
    shim: str  # a key of make_capture_shim's table: "ascend", "cambricon", ..., "amd-cli", "rocm-smi"
    responses: dict[str, str]  # tool arguments as one string ("" for none) -> fixture path under tests/fixtures
    source: str
    tool_version: str | None
    board: str
    devices: int
    model: str | None  # catalog model of every device the capture shows (None: not in the catalog)
    first: dict[str, float | None] = field(default_factory=dict)  # printed values of the first device
    not_printed: tuple[str, ...] = ()  # metrics the capture shows as N/A or lacks for the first device

    @property
    def main(self) -> str:
        return next(iter(self.responses.values()))

    @property
    def name(self) -> str:
        return Path(self.main).name


def _ascend(path: str, m: str | None = None) -> dict[str, str]:
    return {"info": f"ascend/{path}", **({"info -m": f"ascend/{m}"} if m else {})}


_FIRST_910 = ("power_w", "temperature_c", "utilization_pct", "memory_used_mib", "memory_total_mib")


def _values(*numbers: float | None, keys: tuple[str, ...] = _FIRST_910) -> dict[str, float | None]:
    return dict(zip(keys, numbers, strict=True))


CAPTURES: list[Capture] = [
    # ------------------------------------------------------------------------------------------------ Ascend
    Capture(
        "huawei",
        "ascend",
        _ascend("gpustack-20.2.0-atlas800-3000-info.txt", "gpustack-20.2.0-atlas800-3000-info-m.txt"),
        "gpustack/gpustack tests/detectors/npu_smi/data (Huawei docs EDOC1100115618)",
        "20.2.0",
        "Atlas 800 inference server 3000, one Atlas 300 card (4 x Ascend 310)",
        4,
        None,
        _values(12.8, 56, 0, 2703, 8192),
    ),
    Capture(
        "huawei",
        "ascend",
        _ascend("gpustack-21.0.4-atlas800-3000-info.txt", "gpustack-21.0.4-atlas800-3000-info-m.txt"),
        "gpustack/gpustack tests/detectors/npu_smi/data (Huawei docs EDOC1100115618)",
        "21.0.4",
        "Atlas 800 inference server 3000, Ascend 310 x 4",
        4,
        None,
        _values(12.8, 73, 0, 2703, 8192),
    ),
    Capture(
        "huawei",
        "ascend",
        _ascend("gpustack-22.0.3.1-atlas800-9010-info.txt", "gpustack-22.0.3.1-atlas800-9010-info-m.txt"),
        "gpustack/gpustack tests/detectors/npu_smi/data (Huawei docs EDOC1100275086)",
        "22.0.3.1",
        "Atlas 800 training server 9010, 8 x Ascend 910A",
        8,
        "Ascend910",
        _values(67.2, 43, 0, 0, 32768),
    ),
    Capture(
        "huawei",
        "ascend",
        _ascend("gpustack-24.1.RC2-atlas800-9010-info.txt", "gpustack-24.1.RC2-atlas800-9010-info-m.txt"),
        "gpustack/gpustack tests/detectors/npu_smi/data (Huawei docs EDOC1100388860)",
        "24.1.RC2",
        "Atlas 800 training server 9010, 8 x Ascend 910A (table name anonymised to 'xxx')",
        8,
        "Ascend910",
        _values(70.5, 42, 0, 0, 32768),
    ),
    Capture(
        "huawei",
        "ascend",
        _ascend("paddle-docs-23.0.rc3-910b2c-info.txt"),
        "PaddlePaddle/docs docs/guides/hardware_support/npu/install_cn.md",
        "23.0.rc3",
        "2 x Ascend 910B2C",
        2,
        "Ascend910B",
        _values(83.4, 35, 0, 4302, 65536),
    ),
    Capture(
        "huawei",
        "ascend",
        _ascend("vllm-ascend-1767-24.1.0.3-910b2.excerpt.txt"),
        "vllm-project/vllm-ascend issue 1767",
        "24.1.0.3",
        "Ascend 910B2 (first 2 of 8 NPUs)",
        2,
        "Ascend910B",
        _values(96.4, 37, 0, 3397, 65536),
    ),
    Capture(
        "huawei",
        "ascend",
        _ascend("1panel-9472-24.1.1-910b4.excerpt.txt"),
        "1Panel-dev/1Panel issue 9472",
        "24.1.1",
        "Ascend 910B4, 32 GB HBM (first 2 NPUs)",
        2,
        "Ascend910B",
        _values(88.2, 30, 0, 26838, 32768),
    ),
    Capture(
        "huawei",
        "ascend",
        _ascend("vllm-ascend-1047-24.1.0-910prob.excerpt.txt"),
        "vllm-project/vllm-ascend issue 1047",
        "24.1.0",
        "Ascend 910ProB (first 2 NPUs)",
        2,
        "Ascend910",
        _values(78.0, 38, 0, 18, 32768),
    ),
    Capture(
        "huawei",
        "ascend",
        _ascend("vllm-ascend-2035-24.1.rc3.7-a3.excerpt.txt"),
        "vllm-project/vllm-ascend issue 2035",
        "24.1.rc3.7",
        "Atlas A3, the two dies of NPU 0",
        2,
        "Ascend910C",
        _values(178.8, 36, 0, 3397, 65536),
    ),
    Capture(
        "huawei",
        "ascend",
        _ascend("vllm-ascend-5588-25.3.rc1-a3.excerpt.txt"),
        "vllm-project/vllm-ascend issue 5588",
        "25.3.rc1",
        "Atlas A3, the two dies of NPU 0",
        2,
        "Ascend910C",
        _values(163.6, 30, 0, 3180, 65536),
    ),
    Capture(
        "huawei",
        "ascend",
        _ascend("vllm-omni-3597-25.5.0-a3.excerpt.txt"),
        "vllm-project/vllm-omni issue 3597",
        "25.5.0",
        "Atlas A3, the two dies of NPU 0",
        2,
        "Ascend910C",
        _values(172.1, 36, 0, 56152, 65536),
    ),
    Capture(
        "huawei",
        "ascend",
        _ascend("vllm-ascend-12980-26.0.rc2-a3.excerpt.txt"),
        "vllm-project/vllm-ascend issue 12980",
        "26.0.rc2",
        "Atlas A3 (wide 26.x table), dies of NPU 0",
        2,
        "Ascend910C",
        _values(162.6, 34, 0, 3419, 65536),
    ),
    # --------------------------------------------------------------------------------------------- Cambricon
    Capture(
        "cambricon",
        "cambricon",
        {"": "cambricon/paddle-docs-cnmon-4.20.11-mlu370-x4.txt"},
        "PaddlePaddle/docs hardware_support/mlu_docs/paddle_install_cn.md @4e0eb53",
        "4.20.11",
        "3 x MLU370-X4",
        3,
        None,
        _values(30, 32, 0, 0, 23308) | {"power_limit_w": 150},
        ("ecc_uncorrectable_total",),
    ),
    Capture(
        "cambricon",
        "cambricon",
        {"": "cambricon/paddle-docs-cnmon-5.10.10-mlu370-x4.txt"},
        "PaddlePaddle/docs hardware_support/mlu_docs/paddle_install_cn.md",
        "5.10.10",
        "2 x MLU370-X4",
        2,
        None,
        _values(27, 41, 0, 0, 23308) | {"power_limit_w": 150},
        ("ecc_uncorrectable_total",),
    ),
    Capture(
        "cambricon",
        "cambricon",
        {"": "cambricon/paddle-docs-cnmon-5.10.13-mlu370-x8.txt"},
        "PaddlePaddle/docs hardware_support/mlu/install_cn.md",
        "5.10.13",
        "MLU370-X8 (2 devices)",
        2,
        "MLU370",
        _values(106, 32, 0, 0, 23374) | {"power_limit_w": 250},
        ("ecc_uncorrectable_total",),
    ),
    # ------------------------------------------------------------------------------------------------ Hygon
    Capture(
        "hygon",
        "hygon",
        {"HYSMI": "hygon/gpustack-dtk24.04.3-rocm-smi.json"},
        "gpustack/gpustack tests/detectors/rocm_smi/data",
        None,
        "K100_AI per GPUStack (Card Series anonymised)",
        1,
        None,
        _values(80, 39, 0, 2, 65520),
    ),
    Capture(
        "hygon",
        "hygon",
        {"": "hygon/paddle-docs-dtk23.10-rocm-smi.txt"},
        "PaddlePaddle/docs hardware_support/dcu/install_cn.md",
        None,
        "Z100 series, DTK 23.10 rocm-smi",
        4,
        None,
        {"power_w": 38, "temperature_c": 30, "utilization_pct": 0, "power_limit_w": 280},
        ("memory_used_mib",),
    ),
    Capture(
        "hygon",
        "hygon",
        {"": "hygon/flagperf-dtk23.10.1-rocm-smi-z100l.txt"},
        "FlagOpen/FlagPerf training/dcu/README.md",
        None,
        "8 x Z100L, DTK 23.10.1",
        8,
        None,
        {"power_w": 39, "temperature_c": 31, "utilization_pct": 0, "power_limit_w": 280},
        ("memory_used_mib",),
    ),
    # -------------------------------------------------------------------------------------------- Kunlunxin
    Capture(
        "kunlunxin",
        "kunlunxin",
        {"": "kunlunxin/paddle-docs-xpu_smi-r300.txt"},
        "PaddlePaddle/docs hardware_support/xpu/install_cn.md",
        "4.31",
        "2 x R300 (XRE 4.31, driver 4.0)",
        2,
        None,
        {"utilization_pct": 0, "memory_used_mib": 0, "memory_total_mib": 32768},
        ("power_w", "temperature_c"),
    ),
    Capture(
        "kunlunxin",
        "kunlunxin",
        {"": "kunlunxin/ernie-docs-xpu_smi-5.0.21.21-p800.txt"},
        "PaddlePaddle/ERNIE docs/devices/README_XPU.md",
        "5.0.21",
        "8 x P800 OAM, driver 5.0.21.21",
        8,
        "P800",
        _values(88, 37, 0, 0, 98304) | {"power_limit_w": 400},
    ),
    # --------------------------------------------------------------------------------------------- Iluvatar
    Capture(
        "iluvatar",
        "iluvatar",
        {"": "iluvatar/ernie-docs-ixsmi-4.3.0-bi-v150.txt"},
        "PaddlePaddle/ERNIE docs/devices/README_ILUVATAR_GPU.md",
        "4.3.0",
        "8 x BI150 boards (16 BI-V150 chips)",
        16,
        "BI-V150",
        {
            "temperature_c": 35,
            "utilization_pct": 0,
            "memory_used_mib": 64,
            "memory_total_mib": 32768,
            "sm_clock_mhz": 1500,
        },
        ("power_w",),
    ),
    # ------------------------------------------------------------------------------------------------- MetaX
    Capture(
        "metax",
        "metax",
        {"": "metax/ernie-docs-mx-smi-2.2.4-c550.txt"},
        "PaddlePaddle/ERNIE docs/devices/README_METAX_GPU.md",
        "2.2.4",
        "8 x MetaX C550",
        8,
        None,
        _values(53, 29, 0, 858, 65536) | {"power_limit_w": 450},
    ),
    # ------------------------------------------------------------------------------------------ Moore Threads
    Capture(
        "moorethreads",
        "moorethreads",
        {"": "moorethreads/gpustack-3511-mthreads-gmi-2.2.0-s4000.excerpt.txt"},
        "gpustack/gpustack issue 3511",
        "2.2.0",
        "MTT S4000 (first 2 of 8)",
        2,
        "S4000",
        {"utilization_pct": 0, "memory_used_mib": 0, "memory_total_mib": 49152, "temperature_c": 44},
        ("power_w",),
    ),
    Capture(
        "moorethreads",
        "moorethreads",
        {"": "moorethreads/vllm-omni-2337-mthreads-gmi-2.3.2-s5000.excerpt.txt"},
        "vllm-project/vllm-omni pull request 2337",
        "2.3.2",
        "MTT S5000 (first 2 of 8)",
        2,
        None,
        {"utilization_pct": 0, "memory_used_mib": 66641, "memory_total_mib": 81920, "temperature_c": 52},
        ("power_w",),
    ),
    # --------------------------------------------------------------------------------------------------- AMD
    Capture(
        "amd",
        "rocm-smi",
        {"ROCMSMI": "amd/gpustack-rocm6.2.4-rocm-smi-rx7800xt.json"},
        "gpustack/gpustack tests/detectors/rocm_smi/data",
        None,
        "Radeon RX 7800 XT (Navi 32), ROCm 6.2.4",
        1,
        None,
        _values(53, 51, 100, 11615076352 / 2**20, 17163091968 / 2**20),
    ),
    Capture(
        "amd",
        "amd-cli",
        {
            "static": "amd/rocm-blogs-amd-smi-static-mi300x.excerpt.txt",
            "monitor -putm": "amd/rocm-blogs-amd-smi-monitor-putm-mi300x.txt",
        },
        "ROCm/rocm-blogs blogs/software-tools-optimization/amd-smi-overview/README.md",
        None,
        "MI300X-O (static shows GPU 0 of 8)",
        1,
        "MI300X",
        {"power_w": 182, "temperature_c": 42, "utilization_pct": 83, "sm_clock_mhz": 1613},
        ("memory_used_mib",),
    ),
]


def write_replay_tool(directory: Path, name: str, capture: Capture) -> str:
    """An executable that prints the capture for the arguments it was recorded with and fails, as an old tool
    would, for anything else. Keys ``HYSMI``/``ROCMSMI`` stand for the shims' full JSON argument lists."""
    from agents.shims.amd_cli import ROCM_SMI_ARGS
    from agents.shims.hygon import HY_SMI_ARGS

    aliases = {"HYSMI": " ".join(HY_SMI_ARGS), "ROCMSMI": " ".join(ROCM_SMI_ARGS)}
    cases = "\n".join(
        f"  {shlex.quote(aliases.get(args, args))}) cat {shlex.quote(str(FIXTURES / path))} ;;"
        for args, path in capture.responses.items()
    )
    script = directory / name
    script.write_text(
        f'#!/bin/sh\ncase "$*" in\n{cases}\n  *) echo "{name}: unrecognized option \'$*\'" >&2; exit 2 ;;\nesac\n'
    )
    script.chmod(script.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return str(script)


def make_capture_shim(capture: Capture, directory: Path, catalog: Any = "default") -> Any:
    """The shim for a capture, pointed at a replay of it."""
    from agents.shims.amd_cli import AmdSmiCliShim, RocmSmiShim
    from agents.shims.ascend import AscendShim
    from agents.shims.cambricon import CambriconShim
    from agents.shims.hygon import HygonShim
    from agents.shims.iluvatar import IluvatarShim
    from agents.shims.kunlunxin import KunlunxinShim
    from agents.shims.metax import MetaxShim
    from agents.shims.moorethreads import MooreThreadsShim

    classes: dict[str, Any] = {
        "ascend": AscendShim,
        "cambricon": CambriconShim,
        "hygon": HygonShim,
        "kunlunxin": KunlunxinShim,
        "iluvatar": IluvatarShim,
        "metax": MetaxShim,
        "moorethreads": MooreThreadsShim,
        "amd-cli": AmdSmiCliShim,
        "rocm-smi": RocmSmiShim,
    }
    cls = classes[capture.shim]
    binary = write_replay_tool(directory, f"{capture.shim}-replay", capture)
    return cls(binary=binary, catalog=catalog, timeout_s=10)
