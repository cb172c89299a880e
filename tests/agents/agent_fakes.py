"""Test doubles for the agent tests: a test catalog, an NVML-shaped module, an amdsmi-shaped module, a loopback API.

The fakes follow the real libraries' function names and return types: :class:`FakeNvml` returns the very ctypes
structures ``pynvml`` returns (``c_nvmlUtilization_t``, ``c_nvmlMemory_t``, ``nvmlPciInfo_t``), raises the real
``pynvml.NVMLError`` subclasses, and reports power in mW, energy in mJ, memory in bytes and PCIe in KB/s.
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pynvml  # type: ignore[import-untyped]

from agents.protocol import (
    HEARTBEAT_PATH,
    REGISTER_PATH,
    HeartbeatRequest,
    HeartbeatResponse,
    RegisterRequest,
    RegisterResponse,
)
from scheduler.catalog import Catalog, load_catalog, parse_catalog

# ----------------------------------------------------------------------------------------------- catalog


def _model(model: str, vendor: str, kind: str, memory: float | None, tdp: float | None, **extra: Any) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "model": model,
        "vendor": vendor,
        "family": model,
        "kind": kind,
        "memory_gib": memory,
        "tdp_w": tdp,
        "peak_tflops": {"bf16": 100.0},
        "domestic": vendor not in ("nvidia", "amd"),
        "source": {"all": "test fixture"},
    }
    entry.update(extra)
    return entry


def make_test_catalog() -> Catalog:
    """A small catalog independent of seeds/accelerators.yaml (which another team edits)."""
    nvlink = {"type": "nvlink", "domain_size": 8}
    models = [
        _model("H100", "nvidia", "gpu", 80, 700, interconnect=nvlink, aliases=["NVIDIA H100 80GB HBM3"]),
        _model("A10", "nvidia", "gpu", 24, 150, aliases=["NVIDIA A10"]),
        _model(
            "Ascend910B",
            "huawei",
            "npu",
            64,
            400,
            interconnect={"type": "hccs", "domain_size": 8},
            aliases=["Ascend 910B", "910B", "910B3", "Ascend 910B3"],
        ),
        _model("MLU370", "cambricon", "mlu", 48, 250, aliases=["MLU370-X8"]),
        _model("P800", "kunlunxin", "xpu", 96, 400, aliases=["P800 OAM"]),
        _model("K100", "hygon", "dcu", 64, 300, aliases=["K100_AI", "DCU K100", "DCU K100_AI"]),
        _model("BI-V150", "iluvatar", "gpu", 32, 350, aliases=["Iluvatar BI-V150"]),
        _model("C500", "metax", "gpu", 64, 350, aliases=["MetaX C500"]),
        _model("S4000", "moorethreads", "gpu", 48, 450, aliases=["MTT S4000"]),
        _model("MI300X", "amd", "gpu", 192, 750, aliases=["AMD Instinct MI300X"]),
        {
            "model": "Mystery",
            "vendor": "undisclosed",
            "family": "Mystery",
            "kind": "gpu",
            "domestic": True,
            "opaque": True,
            "source": {"model": "test fixture"},
        },
    ]
    # The runtime facts of each vendor are the real catalog's: these tests vary models, not vendors.
    vendors = [v.model_dump() for v in load_catalog().vendors]
    return parse_catalog({"version": 1, "reference": "H100", "vendors": vendors, "models": models}, "<test catalog>")


# -------------------------------------------------------------------------------------------------- NVML


@dataclass
class FakeMig:
    """One MIG device of a :class:`FakeGpu` (what NVML answers for its MIG device handle)."""

    uuid: str
    name: str
    gpu_instance_slices: int = 1
    mem_total: int = 9728 * 1024**2
    mem_used: int = 13 * 1024**2


@dataclass
class FakeGpu:
    name: str = "NVIDIA H100 80GB HBM3"
    uuid: str = "GPU-00000000-0000-0000-0000-000000000000"
    bus_id: str = "00000000:18:00.0"
    util_gpu: int = 0
    mem_total: int = 80 * 1024**3
    mem_used: int = 512 * 1024**2
    power_mw: int = 70_000
    temp_c: int = 33
    sm_mhz: int = 1980
    energy_mj: int = 123_456_789
    limit_mw: int = 700_000
    pcie_tx_kbps: int = 1000
    pcie_rx_kbps: int = 2000
    ecc_unc: int = 0
    ecc_cor: int = 0
    remap: tuple[int, int, int, int] = (0, 0, 0, 0)
    mig: tuple[int, int] = (0, 0)
    not_supported: set[str] = field(default_factory=set)
    lost: bool = False
    xid_capable: bool = True
    ecc_events_capable: bool = True
    throttle: int = 0  # nvmlClocksEventReason* bit mask
    nvlink_remote: list[int] = field(default_factory=list)  # remote device type of each active NVLink link
    mig_devices: list[FakeMig] = field(default_factory=list)
    max_mig_devices: int = 7


class FakeNvml:
    """An object with the ``pynvml`` functions the shim uses; constants and errors are the real ones."""

    def __init__(self, gpus: list[FakeGpu], nvlink: bool = True) -> None:
        for name in dir(pynvml):
            if name.startswith(("NVML_", "NVMLError", "nvmlEventType", "nvmlClocks")) or name == "NVMLError":
                setattr(self, name, getattr(pynvml, name))
        self.gpus = gpus
        self.nvlink = nvlink
        self.calls: dict[str, int] = {}
        self.events: list[tuple[int, ...]] = []  # (gpu index, xid[, event type]) queued in the event set
        self.registered: set[int] = set()
        self.registered_types: dict[int, int] = {}
        self.initialised = False

    def _count(self, name: str) -> None:
        self.calls[name] = self.calls.get(name, 0) + 1

    def _gpu(self, handle: Any, call: str) -> FakeGpu:
        self._count(call)
        gpu = self.gpus[handle.index]
        if getattr(handle, "mig", None) is not None and call not in _MIG_CALLS:
            raise pynvml.NVMLError(pynvml.NVML_ERROR_NOT_SUPPORTED)  # per-GPU metrics are not per MIG device
        if gpu.lost:
            raise pynvml.NVMLError(pynvml.NVML_ERROR_GPU_IS_LOST)
        if call in gpu.not_supported:
            raise pynvml.NVMLError(pynvml.NVML_ERROR_NOT_SUPPORTED)
        return gpu

    def nvmlInit(self) -> None:
        self.initialised = True

    def nvmlShutdown(self) -> None:
        self.initialised = False

    driver_version = "580.65.06"

    def nvmlSystemGetDriverVersion(self) -> str:
        return self.driver_version

    def nvmlDeviceGetCount(self) -> int:
        return len(self.gpus)

    def nvmlDeviceGetHandleByIndex(self, index: int) -> SimpleNamespace:
        return SimpleNamespace(index=index)

    def nvmlDeviceGetName(self, h: Any) -> str:
        gpu = self._gpu(h, "nvmlDeviceGetName")
        return gpu.mig_devices[h.mig].name if getattr(h, "mig", None) is not None else gpu.name

    def nvmlDeviceGetUUID(self, h: Any) -> str:
        gpu = self.gpus[h.index]
        return gpu.mig_devices[h.mig].uuid if getattr(h, "mig", None) is not None else gpu.uuid

    def nvmlDeviceGetMaxMigDeviceCount(self, h: Any) -> int:
        return self._gpu(h, "nvmlDeviceGetMaxMigDeviceCount").max_mig_devices

    def nvmlDeviceGetMigDeviceHandleByIndex(self, h: Any, index: int) -> SimpleNamespace:
        gpu = self._gpu(h, "nvmlDeviceGetMigDeviceHandleByIndex")
        if gpu.mig[0] != pynvml.NVML_DEVICE_MIG_ENABLE:
            raise pynvml.NVMLError(pynvml.NVML_ERROR_INVALID_ARGUMENT)
        if index >= len(gpu.mig_devices):
            raise pynvml.NVMLError(pynvml.NVML_ERROR_NOT_FOUND)
        return SimpleNamespace(index=h.index, mig=index)

    def nvmlDeviceGetAttributes(self, h: Any) -> Any:
        gpu = self._gpu(h, "nvmlDeviceGetAttributes")
        attrs = pynvml.c_nvmlDeviceAttributes()
        if getattr(h, "mig", None) is not None:
            mig = gpu.mig_devices[h.mig]
            attrs.gpuInstanceSliceCount = mig.gpu_instance_slices
            attrs.computeInstanceSliceCount = mig.gpu_instance_slices
            attrs.memorySizeMB = mig.mem_total // 1024**2
        return attrs

    def nvmlDeviceGetCurrentClocksEventReasons(self, h: Any) -> int:
        return self._gpu(h, "nvmlDeviceGetCurrentClocksEventReasons").throttle

    def nvmlDeviceGetNvLinkState(self, h: Any, link: int) -> int:
        gpu = self._gpu(h, "nvmlDeviceGetNvLinkState")
        if not gpu.nvlink_remote:
            raise pynvml.NVMLError(pynvml.NVML_ERROR_NOT_SUPPORTED)
        if link >= len(gpu.nvlink_remote):
            raise pynvml.NVMLError(pynvml.NVML_ERROR_INVALID_ARGUMENT)
        return pynvml.NVML_FEATURE_ENABLED

    def nvmlDeviceGetNvLinkRemoteDeviceType(self, h: Any, link: int) -> int:
        return self._gpu(h, "nvmlDeviceGetNvLinkRemoteDeviceType").nvlink_remote[link]

    def nvmlDeviceGetPciInfo(self, h: Any) -> Any:
        info = pynvml.nvmlPciInfo_t()
        info.busId = self._gpu(h, "nvmlDeviceGetPciInfo").bus_id.encode()
        return info

    def nvmlDeviceGetMemoryInfo(self, h: Any) -> Any:
        gpu = self._gpu(h, "nvmlDeviceGetMemoryInfo")
        if getattr(h, "mig", None) is not None:
            mig = gpu.mig_devices[h.mig]
            return pynvml.c_nvmlMemory_t(total=mig.mem_total, free=mig.mem_total - mig.mem_used, used=mig.mem_used)
        return pynvml.c_nvmlMemory_t(total=gpu.mem_total, free=gpu.mem_total - gpu.mem_used, used=gpu.mem_used)

    def nvmlDeviceGetUtilizationRates(self, h: Any) -> Any:
        gpu = self._gpu(h, "nvmlDeviceGetUtilizationRates")
        return pynvml.c_nvmlUtilization_t(gpu=gpu.util_gpu, memory=gpu.util_gpu // 2)

    def nvmlDeviceGetPowerUsage(self, h: Any) -> int:
        return self._gpu(h, "nvmlDeviceGetPowerUsage").power_mw

    def nvmlDeviceGetTemperature(self, h: Any, sensor: int) -> int:
        assert sensor == pynvml.NVML_TEMPERATURE_GPU
        return self._gpu(h, "nvmlDeviceGetTemperature").temp_c

    def nvmlDeviceGetClockInfo(self, h: Any, clock: int) -> int:
        assert clock == pynvml.NVML_CLOCK_SM
        return self._gpu(h, "nvmlDeviceGetClockInfo").sm_mhz

    def nvmlDeviceGetTotalEnergyConsumption(self, h: Any) -> int:
        return self._gpu(h, "nvmlDeviceGetTotalEnergyConsumption").energy_mj

    def nvmlDeviceGetEnforcedPowerLimit(self, h: Any) -> int:
        return self._gpu(h, "nvmlDeviceGetEnforcedPowerLimit").limit_mw

    def nvmlDeviceGetPcieThroughput(self, h: Any, counter: int) -> int:
        gpu = self._gpu(h, "nvmlDeviceGetPcieThroughput")
        return gpu.pcie_tx_kbps if counter == pynvml.NVML_PCIE_UTIL_TX_BYTES else gpu.pcie_rx_kbps

    def nvmlDeviceGetTotalEccErrors(self, h: Any, error_type: int, counter: int) -> int:
        gpu = self._gpu(h, "nvmlDeviceGetTotalEccErrors")
        assert counter == pynvml.NVML_VOLATILE_ECC
        return gpu.ecc_unc if error_type == pynvml.NVML_MEMORY_ERROR_TYPE_UNCORRECTED else gpu.ecc_cor

    def nvmlDeviceGetRemappedRows(self, h: Any) -> tuple[int, int, int, int]:
        return self._gpu(h, "nvmlDeviceGetRemappedRows").remap

    def nvmlDeviceGetMigMode(self, h: Any) -> list[int]:
        return list(self._gpu(h, "nvmlDeviceGetMigMode").mig)

    def nvmlDeviceGetP2PStatus(self, h1: Any, h2: Any, caps: int) -> int:
        assert caps == pynvml.NVML_P2P_CAPS_INDEX_NVLINK
        return pynvml.NVML_P2P_STATUS_OK if self.nvlink else pynvml.NVML_P2P_STATUS_NOT_SUPPORTED

    def nvmlEventSetCreate(self) -> str:
        return "event-set"

    def nvmlDeviceGetSupportedEventTypes(self, h: Any) -> int:
        gpu = self.gpus[h.index]
        ecc = pynvml.nvmlEventTypeSingleBitEccError | pynvml.nvmlEventTypeDoubleBitEccError
        return (pynvml.nvmlEventTypeXidCriticalError if gpu.xid_capable else 0) | (ecc if gpu.ecc_events_capable else 0)

    def nvmlDeviceRegisterEvents(self, h: Any, types: int, event_set: Any) -> None:
        assert types & ~self.nvmlDeviceGetSupportedEventTypes(h) == 0, "registered an unsupported event type"
        self.registered.add(h.index)
        self.registered_types[h.index] = types

    def nvmlEventSetWait(self, event_set: Any, timeout_ms: int) -> Any:
        self._count("nvmlEventSetWait")
        if not self.events:
            raise pynvml.NVMLError(pynvml.NVML_ERROR_TIMEOUT)
        event = self.events.pop(0)
        index, data = event[0], event[1]
        kind = event[2] if len(event) > 2 else pynvml.nvmlEventTypeXidCriticalError  # type: ignore[misc]
        return SimpleNamespace(device=SimpleNamespace(index=index), eventType=kind, eventData=data)

    def nvmlEventSetFree(self, event_set: Any) -> None:
        self._count("nvmlEventSetFree")


#: Calls NVML answers for a MIG device handle; every other (per-GPU) call is NotSupported on one.
_MIG_CALLS = {"nvmlDeviceGetName", "nvmlDeviceGetMemoryInfo", "nvmlDeviceGetAttributes"}


def recorded_nvml(path: str | Path) -> FakeNvml:
    """A :class:`FakeNvml` answering with the values recorded in a ``tests/fixtures/nvml/*.json`` file."""
    doc = json.loads(Path(path).read_text())
    gpus = []
    for entry in doc["gpus"]:
        migs = [
            FakeMig(
                uuid=m["uuid"],
                name=m["name"],
                gpu_instance_slices=m["gpu_instance_slices"],
                mem_total=int(m["memory_total_mib"] * 1024**2),
                mem_used=int(m["memory_used_mib"] * 1024**2),
            )
            for m in entry.get("mig_devices", [])
        ]
        gpus.append(
            FakeGpu(
                name=entry["name"],
                uuid=entry["uuid"],
                bus_id=entry["bus_id"],
                util_gpu=entry.get("utilization_gpu", 0),
                mem_total=int(entry["memory_total_mib"] * 1024**2),
                mem_used=int(entry["memory_used_mib"] * 1024**2),
                power_mw=entry["power_mw"],
                limit_mw=entry["power_limit_mw"],
                temp_c=entry["temperature_c"],
                mig=tuple(entry.get("mig", (0, 0))),  # type: ignore[arg-type]
                mig_devices=migs,
                max_mig_devices=entry.get("max_mig_devices", 7),
                not_supported=set(entry.get("not_supported", [])),
            )
        )
    fake = FakeNvml(gpus, nvlink=doc.get("nvlink", False))
    fake.driver_version = doc["driver_version"]
    return fake


class FakeAmdSmi:
    """An ``amdsmi``-shaped module: dicts with the library's keys, ``"N/A"`` where a GPU reports nothing."""

    class AmdSmiLibraryException(Exception):
        pass

    class AmdSmiTemperatureType:
        HOTSPOT = 1

    class AmdSmiTemperatureMetric:
        CURRENT = 0

    class AmdSmiClkType:
        GFX = 0

    def __init__(self, gpus: int = 2, fail_init: bool = False) -> None:
        self.gpus = gpus
        self.fail_init = fail_init
        self.shut = False

    def amdsmi_init(self) -> None:
        if self.fail_init:
            raise self.AmdSmiLibraryException("AMDSMI_STATUS_DRIVER_NOT_LOADED")

    def amdsmi_shut_down(self) -> None:
        self.shut = True

    def amdsmi_get_processor_handles(self) -> list[int]:
        return list(range(self.gpus))

    def amdsmi_get_gpu_asic_info(self, h: int) -> dict[str, Any]:
        return {"market_name": "AMD Instinct MI300X", "vendor_id": "0x1002", "device_id": "0x74a1"}

    def amdsmi_get_gpu_device_uuid(self, h: int) -> str:
        return f"amd-uuid-{h}"

    def amdsmi_get_gpu_device_bdf(self, h: int) -> str:
        return f"0000:0{h}:00.0"

    def amdsmi_get_gpu_vram_usage(self, h: int) -> dict[str, Any]:
        return {"vram_total": 196592, "vram_used": 1024 * (h + 1)}

    def amdsmi_get_gpu_activity(self, h: int) -> dict[str, Any]:
        return {"gfx_activity": 40 * h, "umc_activity": 5, "mm_activity": "N/A"}

    def amdsmi_get_power_info(self, h: int) -> dict[str, Any]:
        # MI300X reports current_socket_power; older parts only average_socket_power
        if h == 0:
            return {"current_socket_power": 345, "average_socket_power": "N/A", "power_limit": 750}
        return {"current_socket_power": "N/A", "average_socket_power": 120, "power_limit": 750}

    def amdsmi_get_temp_metric(self, h: int, kind: int, metric: int) -> int:
        return 55 + h

    def amdsmi_get_clock_info(self, h: int, kind: int) -> dict[str, Any]:
        raise self.AmdSmiLibraryException("Error code: 2 | AMDSMI_STATUS_NOT_SUPPORTED")

    def amdsmi_get_energy_count(self, h: int) -> dict[str, Any]:
        return {"energy_accumulator": 1_000_000, "counter_resolution": 15.3, "timestamp": 1}

    def amdsmi_get_gpu_total_ecc_count(self, h: int) -> dict[str, Any]:
        return {"correctable_count": 3, "uncorrectable_count": 1 if h == 1 else 0, "deferred_count": 0}


# ------------------------------------------------------------------------------------------ loopback API


class StubApi:
    """A real HTTP server on 127.0.0.1 that speaks the agent protocol (validating bodies with its models).

    ``mode`` switches behaviour: ``ok``, ``fail`` (503), ``unauthorized`` (401), ``reject`` (422 on heartbeat),
    ``forget`` (404 on the next heartbeat, then ok). ``stop()``/``start()`` make it really unreachable.
    """

    def __init__(self, token: str = "node-secret") -> None:
        self.token = token
        self.mode = "ok"
        self.fail_next = 0  # answer this many requests with 503 before behaving
        self.registrations: list[RegisterRequest] = []
        self.heartbeats: list[HeartbeatRequest] = []
        self.received_seqs: list[int] = []
        self.interval_s: float | None = None
        self.port = 0
        self._server: ThreadingHTTPServer | None = None
        self._lock = threading.Lock()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> StubApi:
        api = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:  # keep test output quiet
                pass

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                status, reply = api.handle(self.path, self.headers.get("Authorization", ""), body)
                data = json.dumps(reply).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.port = self._server.server_address[1]
        threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def handle(self, path: str, auth: str, body: bytes) -> tuple[int, dict[str, Any]]:
        with self._lock:
            if auth != f"Bearer {self.token}" or self.mode == "unauthorized":
                return 401, {"detail": "bad token"}
            if self.mode == "fail" or self.fail_next > 0:
                self.fail_next = max(0, self.fail_next - 1)
                return 503, {"detail": "maintenance"}
            if path == REGISTER_PATH:
                request = RegisterRequest.model_validate_json(body)
                self.registrations.append(request)
                reply = RegisterResponse(node_id=request.node.node_id, heartbeat_interval_s=self.interval_s)
                return 200, reply.model_dump()
            if path == HEARTBEAT_PATH:
                if self.mode == "forget":
                    self.mode = "ok"
                    return 404, {"detail": "unknown node"}
                if self.mode == "reject":
                    return 422, {"detail": "bad batch"}
                heartbeat = HeartbeatRequest.model_validate_json(body)
                self.heartbeats.append(heartbeat)
                self.received_seqs.extend(b.seq for b in heartbeat.batches)
                acked = max((b.seq for b in heartbeat.batches), default=-1)
                return 200, HeartbeatResponse(acked_seq=acked).model_dump()
            return 404, {"detail": "no such path"}
