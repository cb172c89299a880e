"""What a job placed by Zhisuan sees of its GPU: printed as one ``PROBE {...}`` JSON line (``cuda_probe.yaml``).

``benchmarks/gpu_check.sh`` submits it through the API after the training example and compares what it prints
with what NVML discovery found: the CUDA device the job gets must be the physical device the scheduler chose
(same UUID), and it must be the only one the job sees. A bf16 matrix product shows the device really computes.
On a machine without a GPU it prints the same line with ``cuda_available: false``::

    python benchmarks/gpu_check/cuda_probe.py
"""

from __future__ import annotations

import json
import os
import time
import warnings
from typing import Any

warnings.filterwarnings("ignore", message="Failed to initialize NumPy")  # the CPU wheel runs without numpy


def nvml_uuid(index_text: str) -> dict[str, Any]:
    """The NVML view of the device with this NVML index (NVML ignores CUDA_VISIBLE_DEVICES and counts all)."""
    try:
        import pynvml  # type: ignore[import-untyped]

        pynvml.nvmlInit()
        try:
            count = int(pynvml.nvmlDeviceGetCount())
            handle = pynvml.nvmlDeviceGetHandleByIndex(int(index_text))
            uuid = pynvml.nvmlDeviceGetUUID(handle)
            return {"nvml_count": count, "nvml_uuid": uuid.decode() if isinstance(uuid, bytes) else str(uuid)}
        finally:
            pynvml.nvmlShutdown()
    except Exception as err:  # no driver, no such index: say so in the probe's line
        return {"nvml_error": f"{type(err).__name__}: {err}"}


def cuda_facts() -> dict[str, Any]:
    import torch

    out: dict[str, Any] = {
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "cuda_available": torch.cuda.is_available(),
        "device_count": torch.cuda.device_count() if torch.cuda.is_available() else 0,
    }
    if not out["cuda_available"]:
        return out
    props = torch.cuda.get_device_properties(0)
    out.update(
        name=props.name,
        uuid=str(props.uuid),
        total_memory_mib=round(props.total_memory / 2**20),
        capability=f"{props.major}.{props.minor}",
        multiprocessors=props.multi_processor_count,
    )
    n = 4096
    a = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    for _ in range(3):  # cuBLAS initialisation and clock ramp-up
        a @ b
    start = torch.cuda.Event(enable_timing=True)  # type: ignore[no-untyped-call]
    end = torch.cuda.Event(enable_timing=True)  # type: ignore[no-untyped-call]
    reps = 50
    start.record()
    for _ in range(reps):
        a @ b
    end.record()
    torch.cuda.synchronize()
    seconds = start.elapsed_time(end) / 1000 / reps
    out["bf16_matmul_4096_tflops"] = round(2 * n**3 / seconds / 1e12, 1)
    out["memory_allocated_mib"] = round(torch.cuda.memory_allocated(0) / 2**20)
    return out


def main() -> int:
    began = time.monotonic()
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    facts: dict[str, Any] = {
        "CUDA_VISIBLE_DEVICES": visible,
        "CUDA_DEVICE_ORDER": os.environ.get("CUDA_DEVICE_ORDER"),
        "ZHISUAN_VISIBLE_DEVICES": os.environ.get("ZHISUAN_VISIBLE_DEVICES"),
        "ZHISUAN_NODE": os.environ.get("ZHISUAN_NODE"),
        "ZHISUAN_MODEL": os.environ.get("ZHISUAN_MODEL"),
        "ZHISUAN_DEVICE_MILLI": os.environ.get("ZHISUAN_DEVICE_MILLI"),
    }
    facts.update(cuda_facts())
    if visible and visible.split(",")[0].strip().isdigit():
        facts.update(nvml_uuid(visible.split(",")[0].strip()))
    facts["seconds"] = round(time.monotonic() - began, 3)
    print("PROBE " + json.dumps(facts, sort_keys=True), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
