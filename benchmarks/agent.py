"""Node-agent benchmark: cost of one sampling tick per device, and the agent's CPU share at 1 Hz.

Prints one JSON object:

* ``emulated``: µs per device per tick for the emulated shim (fast and slow ticks), and for a whole agent tick
  (sampling + health rules + buffering) of an 8-device node;
* ``agent_cpu``: the agent process's CPU time over ``--duration`` seconds of ``Agent.run`` at 1 Hz with 8 emulated
  devices, heartbeating to a stub API on 127.0.0.1 and scraped by Prometheus-style GETs every 15 s (the stub and the
  scraper live in a child process, so only the agent's own CPU is counted), as a share of one core;
* ``nvml``: the same per-device tick cost through the NVIDIA shim when NVML finds GPUs, else why not.

    .venv/bin/python benchmarks/agent.py                 # 20 s CPU measurement
    .venv/bin/python benchmarks/agent.py --duration 60

Targets (issue 7): ≤ 80 µs per device per fast tick with NVML on an H100 (the NVML floor is ~40 µs), ≤ 0.5 % of
one core at 1 Hz for an 8-device node.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import threading
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from agents.agent import Agent, AgentConfig, export_to
from agents.exporter import TelemetryStore, start_exporter
from agents.shims.base import Shim
from agents.shims.emulated import EmulatedShim
from agents.shims.nvml import NvmlShim

DEVICES = 8


def per_device_us(shim: Shim, fast: bool, ticks: int) -> dict[str, float]:
    """Median and p99 of one ``sample()`` call divided by the device count, in µs."""
    n = max(1, len(shim.devices))
    shim.sample(fast=fast)  # warm caches (NVML "not supported" memo, first-call costs)
    times = []
    for _ in range(ticks):
        start = time.perf_counter()
        shim.sample(fast=fast)
        times.append((time.perf_counter() - start) / n * 1e6)
    times.sort()
    return {"median_us": round(statistics.median(times), 2), "p99_us": round(times[int(len(times) * 0.99) - 1], 2)}


def emulated_costs(ticks: int) -> dict[str, Any]:
    shim = EmulatedShim("H100", devices=DEVICES, noise_pct=1.0)
    shim.discover()
    for i in range(DEVICES):
        shim.set_load(i, 10 * i, 4096 * i)
    agent = Agent(AgentConfig(api_url="http://127.0.0.1:9", node_token="x", node_id="bench"), [shim])
    agent.discover()
    agent.tick()
    tick_times = []
    for _ in range(ticks):
        start = time.perf_counter()
        agent.tick()
        tick_times.append((time.perf_counter() - start) / DEVICES * 1e6)
    agent.close()
    return {
        "devices": DEVICES,
        "fast_tick_per_device": per_device_us(shim, True, ticks),
        "slow_tick_per_device": per_device_us(shim, False, ticks),
        "agent_tick_per_device": {"median_us": round(statistics.median(tick_times), 2)},
    }


def nvml_costs(ticks: int) -> dict[str, Any]:
    shim = NvmlShim(catalog="default")
    devices = shim.discover()
    if not devices:
        return {"available": False, "reason": shim.status.reason}
    out = {
        "available": True,
        "devices": len(devices),
        "models": sorted({d.model or d.name for d in devices}),
        "driver": shim.status.tool_version,
        "fast_tick_per_device": per_device_us(shim, True, ticks),
        "slow_tick_per_device": per_device_us(shim, False, max(5, ticks // 50)),
        "target_fast_us": 80,
    }
    shim.close()
    return out


# ------------------------------------------------------------------------------- stub API (child process)


def serve_stub(exporter_port: int, port_file: str) -> None:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:
            pass

        def do_POST(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", "0"))) or b"{}")
            if self.path.endswith("/register"):
                reply: dict[str, Any] = {"node_id": body["node"]["node_id"]}
            else:
                reply = {"acked_seq": max((b["seq"] for b in body.get("batches", [])), default=-1)}
            data = json.dumps(reply).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    Path(port_file).write_text(str(server.server_address[1]))

    def scrape() -> None:
        while True:
            time.sleep(15)
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{exporter_port}/metrics", timeout=5).read()
            except OSError:
                return

    threading.Thread(target=scrape, daemon=True).start()
    server.serve_forever()


def agent_cpu(duration_s: float, tmp: Path) -> dict[str, Any]:
    shim = EmulatedShim("H100", devices=DEVICES, noise_pct=1.0, node="bench")
    store = TelemetryStore(node="bench")
    exporter, _thread, _registry = start_exporter(store, port=0, addr="127.0.0.1")
    port_file = tmp / f"stub-port-{os.getpid()}"
    child = subprocess.Popen(
        [sys.executable, __file__, "--serve-stub", str(exporter.server_port), str(port_file)],
        stdout=subprocess.DEVNULL,
    )
    try:
        for _ in range(100):
            if port_file.exists() and port_file.read_text():
                break
            time.sleep(0.05)
        api_url = f"http://127.0.0.1:{port_file.read_text()}"
        config = AgentConfig(api_url=api_url, node_token="bench", node_id="bench", interval_s=1.0, slow_every=30)
        agent = Agent(config, [shim], on_tick=export_to(store))
        agent.discover()
        for i in range(DEVICES):
            shim.set_load(i, 12.5 * i, 8192)
        stop = threading.Event()
        timer = threading.Timer(duration_s, stop.set)
        wall0, cpu0 = time.monotonic(), time.process_time()
        timer.start()
        agent.run(stop=stop)
        wall, cpu = time.monotonic() - wall0, time.process_time() - cpu0
        result = {
            "devices": DEVICES,
            "interval_s": 1.0,
            "duration_s": round(wall, 2),
            "cpu_s": round(cpu, 4),
            "cpu_share_of_one_core_pct": round(100 * cpu / wall, 3),
            "target_pct": 0.5,
            "heartbeats_acked": agent.heartbeats_ok,
            "heartbeat_failures": agent.heartbeat_failures,
            "ticks": agent.ticks,
        }
        agent.close()
        return result
    finally:
        child.terminate()
        child.wait(timeout=10)
        exporter.shutdown()
        port_file.unlink(missing_ok=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=20.0, help="seconds of the 1 Hz CPU measurement")
    parser.add_argument("--ticks", type=int, default=2000, help="ticks timed for the per-device costs")
    parser.add_argument("--serve-stub", nargs=2, metavar=("EXPORTER_PORT", "PORT_FILE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_stub:
        serve_stub(int(args.serve_stub[0]), args.serve_stub[1])
        return
    tmp = Path(os.environ.get("TMPDIR", "/tmp"))
    result = {
        "benchmark": "agent",
        "emulated": emulated_costs(args.ticks),
        "nvml": nvml_costs(args.ticks),
        "agent_cpu": agent_cpu(args.duration, tmp),
        "python": sys.version.split()[0],
        "cpu_count": os.cpu_count(),
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
