"""A small inference replica: a text generator behind an HTTP API, with streaming, a health route and a clean drain.

Each replica of ``inference-service.yaml`` runs one of these (Starlette on uvicorn, no model download: the
"model" is a word-bigram table built at start from the short text below, and each generated token costs
``--token-ms`` of simulated device time, ``--slots`` tokens' worth at once — like a device that batches a few
sequences and makes the rest wait)::

    python seeds/examples/inference_server.py --port 0     # 0: any free port; the URL is announced on stdout

    GET  /healthz         -> "ok" (503 "draining" once it was asked to stop)
    GET  /info            -> {"replica": 0, "node": "...", "visible_devices": {...}, "device_milli": "250", ...}
    POST /v1/completions  {"prompt": "the scheduler", "max_tokens": 16}
                          -> {"choices": [{"text": "..."}], "usage": {"prompt_tokens": 2, "completion_tokens": 16}}
    POST /v1/completions  {..., "stream": true} -> text/event-stream: one "data: {...}" event per token, then one
                          with "usage", then "data: [DONE]"
    POST /predict         {"inputs": [[1, 2, 3], [4, 5]]} -> {"outputs": [6.0, 9.0], "replica": 0, "latency_ms": ...}

Its first lines say where it listens (``ZHISUAN_ENDPOINT=http://host:port``, read by the serving controller,
and ``replica N serving on http://host:port``). Every answer carries ``x-zhisuan-replica`` (the job id) and
non-streamed completions ``x-zhisuan-tokens``. On SIGTERM it answers 503 on /healthz, finishes the requests in
flight, then exits ("stopped after N requests").
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import random
import socket
import time
from collections.abc import AsyncIterator
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route

STARTED = time.time()
STATE: dict[str, Any] = {"requests": 0, "tokens": 0, "draining": False}

# The corpus of the toy model (written for this example): the generator walks word pairs seen in it.
CORPUS = """
the scheduler places every job on the devices that suit it best and the core decides in one pure step .
a service answers requests through one endpoint and the router sends each request to the replica with the
fewest requests in flight . when the load grows the service adds replicas and when it falls they drain and stop .
the device runs the model and the model writes one token after another until the answer is complete .
a tenant hands keys to its users and every key may call one service and nothing else .
the cluster has nodes in many sites and each node has accelerators of one model .
"""


class BigramModel:
    """Next word from the words that followed the last one in :data:`CORPUS` (seeded: the same prompt gives the
    same text on every replica, so a retried request gets the same answer)."""

    def __init__(self, text: str) -> None:
        words = text.split()
        self.follow: dict[str, list[str]] = {}
        for a, b in itertools.pairwise(words):
            self.follow.setdefault(a, []).append(b)
        self.words = sorted(self.follow)

    def generate(self, prompt: str, max_tokens: int) -> list[str]:
        rng = random.Random(prompt)
        last = prompt.split()[-1].lower() if prompt.split() else "the"
        out: list[str] = []
        for _ in range(max_tokens):
            choices = self.follow.get(last) or self.words
            last = rng.choice(choices)
            out.append(last)
        return out


MODEL = BigramModel(CORPUS)


class Device:
    """Simulated device time: ``slots`` tokens at once, each ``token_ms``; more concurrent work waits."""

    def __init__(self, token_ms: float, slots: int) -> None:
        self.token_s = token_ms / 1000
        self.slots = asyncio.Semaphore(slots)

    async def token(self) -> None:
        async with self.slots:
            await asyncio.sleep(self.token_s)


DEVICE: Device | None = None


def device() -> Device:
    global DEVICE
    if DEVICE is None:
        args = ARGS
        DEVICE = Device(args.token_ms, args.slots)
    return DEVICE


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
        "requests": STATE["requests"],
        "tokens": STATE["tokens"],
    }


def _headers(tokens: int | None = None) -> dict[str, str]:
    out = {"x-zhisuan-replica": os.environ.get("ZHISUAN_JOB_ID") or f"pid-{os.getpid()}"}
    if tokens is not None:
        out["x-zhisuan-tokens"] = str(tokens)
    return out


async def healthz(_: Request) -> Response:
    if STATE["draining"]:
        return PlainTextResponse("draining", status_code=503, headers=_headers())
    return PlainTextResponse("ok", headers=_headers())


async def info_route(_: Request) -> Response:
    return JSONResponse(info(), headers=_headers())


async def _body(request: Request) -> dict[str, Any]:
    raw = await request.body()
    data = json.loads(raw or b"{}")
    if not isinstance(data, dict):
        raise ValueError("the body must be a JSON object")
    return data


async def predict(request: Request) -> Response:
    began = time.perf_counter()
    try:
        rows = (await _body(request)).get("inputs", [])
        outputs = [float(sum(row)) for row in rows]  # the "model"
    except (ValueError, TypeError, AttributeError) as err:
        return JSONResponse({"error": f"bad request: {err}"}, status_code=400, headers=_headers())
    await device().token()
    STATE["requests"] += 1
    latency_ms = (time.perf_counter() - began) * 1000
    return JSONResponse(
        {"outputs": outputs, "replica": info()["replica"], "latency_ms": round(latency_ms, 3)}, headers=_headers()
    )


async def completions(request: Request) -> Response:
    try:
        body = await _body(request)
        prompt = str(body.get("prompt", ""))
        max_tokens = int(body.get("max_tokens", 16))
        stream = bool(body.get("stream", False))
        if not 1 <= max_tokens <= 4096:
            raise ValueError("max_tokens must be between 1 and 4096")
    except (ValueError, TypeError) as err:
        return JSONResponse({"error": f"bad request: {err}"}, status_code=400, headers=_headers())
    words = MODEL.generate(prompt, max_tokens)
    usage = {"prompt_tokens": len(prompt.split()), "completion_tokens": len(words)}
    STATE["requests"] += 1
    dev = device()
    await asyncio.sleep(ARGS.prefill_ms / 1000)
    if not stream:
        for _ in words:
            await dev.token()
        STATE["tokens"] += len(words)
        answer = {"object": "text_completion", "choices": [{"text": " ".join(words)}], "usage": usage}
        return JSONResponse(answer, headers=_headers(len(words)))

    async def events() -> AsyncIterator[bytes]:
        for index, word in enumerate(words):
            await dev.token()
            STATE["tokens"] += 1
            chunk = {"object": "text_completion", "choices": [{"index": 0, "text": word, "token": index}]}
            yield f"data: {json.dumps(chunk)}\n\n".encode()
        yield f"data: {json.dumps({'object': 'text_completion', 'choices': [], 'usage': usage})}\n\n".encode()
        yield b"data: [DONE]\n\n"

    return StreamingResponse(events(), media_type="text/event-stream", headers=_headers())


app = Starlette(
    routes=[
        Route("/healthz", healthz),
        Route("/", info_route),
        Route("/info", info_route),
        Route("/predict", predict, methods=["POST"]),
        Route("/v1/completions", completions, methods=["POST"]),
    ]
)


class _Server(uvicorn.Server):
    def handle_exit(self, sig: int, frame: Any) -> None:
        # Say "draining" on the health route at once; uvicorn then stops accepting and finishes what is in flight.
        if not STATE["draining"]:
            STATE["draining"] = True
            print("SIGTERM: draining and stopping", flush=True)
        super().handle_exit(sig, frame)

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        await super().shutdown(sockets)
        # Printed here: uvicorn re-raises the signal once it has shut down, so nothing after run() would run.
        print(f"stopped after {STATE['requests']} requests", flush=True)


def _parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="small inference replica")
    parser.add_argument("--host", default="0.0.0.0")
    parser.add_argument("--port", type=int, default=int(os.environ.get("PORT", "0")), help="0: any free port")
    parser.add_argument("--token-ms", type=float, default=2.0, help="simulated device time per generated token")
    parser.add_argument("--prefill-ms", type=float, default=2.0, help="simulated device time per request")
    parser.add_argument("--slots", type=int, default=8, help="tokens the simulated device computes at once")
    return parser.parse_args()


ARGS = argparse.Namespace(token_ms=2.0, prefill_ms=2.0, slots=8)


def main() -> int:
    global ARGS
    ARGS = _parse()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((ARGS.host, ARGS.port))
    port = sock.getsockname()[1]
    host = os.environ.get("ZHISUAN_NODE_IP", "127.0.0.1") if ARGS.host == "0.0.0.0" else ARGS.host
    url = f"http://{host}:{port}"
    config = uvicorn.Config(app, log_level="warning", access_log=False, timeout_graceful_shutdown=30, lifespan="off")
    server = _Server(config)
    print(f"ZHISUAN_ENDPOINT={url}", flush=True)
    print(f"replica {info()['replica']} serving on {url}", flush=True)
    print("INFO " + json.dumps(info(), sort_keys=True), flush=True)
    server.run(sockets=[sock])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
