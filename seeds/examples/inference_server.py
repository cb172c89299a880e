"""A tiny inference replica: an HTTP server that answers predictions and reports the devices it was given.

Each replica of ``inference-service.yaml`` runs one of these (standard library only, so it starts in well under a
second)::

    python seeds/examples/inference_server.py --port 0      # 0: any free port; the chosen URL is printed

    GET  /healthz   -> "ok"
    GET  /info      -> {"replica": 0, "node": "...", "visible_devices": {...}, "device_milli": "250", ...}
    POST /predict   {"inputs": [[1, 2, 3], [4, 5]]} -> {"outputs": [6.0, 9.0], "replica": 0, "latency_ms": 0.01}

It exits cleanly on SIGTERM (the executor's stop) after finishing the requests in flight.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

STARTED = time.time()
SERVED = {"requests": 0}


def info() -> dict[str, Any]:
    return {
        "replica": int(os.environ.get("RANK", "0")),
        "replicas": int(os.environ.get("WORLD_SIZE", "1")),
        "job": os.environ.get("ZHISUAN_JOB_ID"),
        "attempt": os.environ.get("ZHISUAN_ATTEMPT"),
        "node": os.environ.get("ZHISUAN_NODE"),
        "model": os.environ.get("ZHISUAN_MODEL"),
        "device_milli": os.environ.get("ZHISUAN_DEVICE_MILLI"),
        "visible_devices": {k: v for k, v in sorted(os.environ.items()) if k.endswith("VISIBLE_DEVICES")},
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "uptime_s": round(time.time() - STARTED, 3),
        "requests": SERVED["requests"],
    }


class Handler(BaseHTTPRequestHandler):
    server_version = "zhisuan-example/1"

    def _send(self, code: int, body: object) -> None:
        data = (body if isinstance(body, str) else json.dumps(body)).encode()
        self.send_response(code)
        self.send_header("Content-Type", "text/plain" if isinstance(body, str) else "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        if self.path == "/healthz":
            self._send(200, "ok")
        elif self.path in ("/", "/info"):
            self._send(200, info())
        else:
            self._send(404, {"error": f"no route {self.path}"})

    def do_POST(self) -> None:
        if self.path != "/predict":
            self._send(404, {"error": f"no route {self.path}"})
            return
        began = time.perf_counter()
        try:
            length = int(self.headers.get("Content-Length", "0"))
            inputs = json.loads(self.rfile.read(length) or b"{}").get("inputs", [])
            outputs = [float(sum(row)) for row in inputs]  # the "model"
        except (ValueError, TypeError, AttributeError) as err:
            self._send(400, {"error": f"bad request: {err}"})
            return
        SERVED["requests"] += 1
        latency_ms = (time.perf_counter() - began) * 1000
        self._send(200, {"outputs": outputs, "replica": info()["replica"], "latency_ms": round(latency_ms, 3)})

    def log_message(self, format: str, *args: Any) -> None:  # one short line per request
        print(f"{self.address_string()} {format % args}", flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description="tiny inference replica")
    parser.add_argument("--host", default="0.0.0.0")
    parser.add_argument("--port", type=int, default=int(os.environ.get("PORT", "0")), help="0: any free port")
    args = parser.parse_args()
    server = ThreadingHTTPServer((args.host, args.port), Handler)
    host = os.environ.get("ZHISUAN_NODE_IP", "127.0.0.1") if args.host == "0.0.0.0" else args.host
    print(f"replica {info()['replica']} serving on http://{host}:{server.server_port}", flush=True)
    print("INFO " + json.dumps(info(), sort_keys=True), flush=True)

    def shutdown(*_: object) -> None:
        print("SIGTERM: draining and stopping", flush=True)
        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, shutdown)
    server.serve_forever()
    server.server_close()
    print(f"stopped after {SERVED['requests']} requests", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
