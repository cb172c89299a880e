"""A replay Kubernetes API server on 127.0.0.1 for the tests: recorded objects served in the API's wire shape.

It is a real HTTP/1.1 server (``http.server``), so the real ``kubernetes`` client does the HTTP, the chunked
watch streams and the error decoding. What it serves is scripted by the test:

* ``GET /api/v1/nodes``: a NodeList in pages of ``limit`` with ``continue`` tokens (list items carry no
  ``kind``/``apiVersion``, as the API server sends them); a token listed in ``expire_tokens`` answers 410;
* ``GET /api/v1/nodes?watch=true``: the next scripted :class:`Stream` — events as newline-delimited JSON in a
  chunked HTTP 200 response, then an end: ``close`` (the stream ends at once, silently), ``hold`` (kept open
  until the request's ``timeoutSeconds``, as the API server does), or ``reset`` (the connection is cut mid-chunk);
* ``GET /api/v1/namespaces/<ns>/pods``: a PodList of ``pods`` filtered by ``labelSelector`` (equality only);
* ``GET|PUT|PATCH /apis/ray.io/v1/namespaces/<ns>/rayclusters/<name>``: one stored object with
  ``metadata.resourceVersion`` checks — a PUT whose version is not the stored one answers 409 Conflict, and
  ``interfere`` lets the test play another controller that writes between our read and our write;
* ``fail_next``: answer the next requests with a scripted status (503 while "down", 403 for RBAC) and a Status.
"""

from __future__ import annotations

import contextlib
import copy
import json
import socket
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlparse


def status_object(code: int, reason: str, message: str, **details: Any) -> dict[str, Any]:
    """A ``Status`` as the API server sends it with an error (also inside a watch ERROR event)."""
    body: dict[str, Any] = {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code,
    }
    if details:
        body["details"] = details
    return body


def expired_event(rv: str = "1", current: str = "3406") -> dict[str, Any]:
    """The 410 ERROR event an expired watch gets inside its HTTP 200 stream."""
    return {"type": "ERROR", "object": status_object(410, "Expired", f"too old resource version: {rv} ({current})")}


def bookmark(rv: str) -> dict[str, Any]:
    """A BOOKMARK event: only the resourceVersion is meaningful."""
    return {"type": "BOOKMARK", "object": {"kind": "Node", "apiVersion": "v1", "metadata": {"resourceVersion": rv}}}


@dataclass
class Stream:
    """One scripted watch response."""

    events: list[dict[str, Any]]
    end: str = "close"  # close | hold | reset
    #: Seconds to wait before each event (lets a test observe the state in between).
    delay_s: float = 0.0


@dataclass
class Recorded:
    method: str
    path: str
    query: dict[str, str]
    body: Any = None


@dataclass
class ReplayState:
    nodes: list[dict[str, Any]] = field(default_factory=list)
    list_rv: str = "1000"
    max_page: int | None = None
    expire_tokens: set[str] = field(default_factory=set)
    streams: deque[Stream] = field(default_factory=deque)
    pods: list[dict[str, Any]] = field(default_factory=list)
    rayclusters: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)
    fail_next: deque[tuple[int, dict[str, Any]]] = field(default_factory=deque)
    #: Called with the stored RayCluster right after each GET of it (another controller editing under us); it
    #: returns whether it wrote (then the stored version moves on).
    interfere: Callable[[dict[str, Any]], bool] | None = None
    requests: list[Recorded] = field(default_factory=list)
    rv_counter: int = 5000


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        return None

    def setup(self) -> None:
        super().setup()
        with self.server.lock:
            self.server.connections.add(self.connection)

    def finish(self) -> None:
        with self.server.lock:
            self.server.connections.discard(self.connection)
        super().finish()

    # ------------------------------------------------------------------ plumbing

    def _send_json(self, status: int, body: Any) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _chunk(self, data: bytes) -> None:
        self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
        self.wfile.flush()

    def _cut(self) -> None:
        """The connection goes away mid-conversation, as with an API server that went down."""
        with contextlib.suppress(OSError):
            self.connection.shutdown(socket.SHUT_RDWR)
        self.close_connection = True

    def _route(self, method: str) -> None:
        if self.server.closing.is_set():
            self._cut()
            return
        url = urlparse(self.path)
        query = {k: v[-1] for k, v in parse_qs(url.query, keep_blank_values=True).items()}
        body = None
        length = int(self.headers.get("Content-Length") or 0)
        if length:
            body = json.loads(self.rfile.read(length))
        state = self.server.state
        with self.server.lock:
            state.requests.append(Recorded(method, url.path, query, body))
            failure = state.fail_next.popleft() if state.fail_next else None
        if failure is not None:
            self._send_json(failure[0], failure[1])
            return
        parts = url.path.strip("/").split("/")
        if url.path == "/api/v1/nodes" and method == "GET":
            if query.get("watch") in ("true", "1"):
                self._watch(query)
            else:
                self._list_nodes(query)
        elif len(parts) == 5 and parts[:3] == ["api", "v1", "namespaces"] and parts[4] == "pods":
            self._list_pods(parts[3], query)
        elif len(parts) == 7 and parts[:3] == ["apis", "ray.io", "v1"] and parts[5] == "rayclusters":
            self._raycluster(method, parts[4], parts[6], body)
        else:
            self._send_json(404, status_object(404, "NotFound", f"the server could not find {url.path}"))

    def do_GET(self) -> None:
        self._route("GET")

    def do_PUT(self) -> None:
        self._route("PUT")

    def do_PATCH(self) -> None:
        self._route("PATCH")

    # ------------------------------------------------------------------ nodes

    def _list_nodes(self, query: dict[str, str]) -> None:
        state = self.server.state
        token = query.get("continue", "")
        if token in state.expire_tokens:
            state.expire_tokens.discard(token)
            self._send_json(
                410,
                status_object(
                    410,
                    "Expired",
                    "The provided continue parameter is too old to display a consistent list result. You can "
                    "start a new list without the continue parameter.",
                ),
            )
            return
        start = int(token.removeprefix("page-")) if token else 0
        limit = int(query.get("limit") or 0) or len(state.nodes) or 1
        if state.max_page:
            limit = min(limit, state.max_page)
        items = []
        for node in state.nodes[start : start + limit]:
            item = copy.deepcopy(node)
            # The API server drops kind/apiVersion from list items.
            item.pop("kind", None)
            item.pop("apiVersion", None)
            items.append(item)
        meta: dict[str, Any] = {"resourceVersion": state.list_rv}
        if start + limit < len(state.nodes):
            meta["continue"] = f"page-{start + limit}"
            meta["remainingItemCount"] = len(state.nodes) - start - limit
        self._send_json(200, {"kind": "NodeList", "apiVersion": "v1", "metadata": meta, "items": items})

    def _watch(self, query: dict[str, str]) -> None:
        state = self.server.state
        with self.server.lock:
            stream = state.streams.popleft() if state.streams else Stream([], end="hold")
        timeout = float(query.get("timeoutSeconds") or 1800)
        began = time.monotonic()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        try:
            for event in stream.events:
                if stream.delay_s:
                    time.sleep(stream.delay_s)
                self._chunk(json.dumps(event).encode() + b"\n")
            if stream.end == "reset":
                # Half a chunk, then the socket goes away: the client sees a broken stream, not an end.
                self.wfile.write(b'40\r\n{"type":')
                self.wfile.flush()
                self.connection.shutdown(socket.SHUT_RDWR)
                self.close_connection = True
                return
            if stream.end == "hold":
                while time.monotonic() - began < timeout and not self.server.closing.is_set():
                    time.sleep(0.02)
                if self.server.closing.is_set():
                    self._cut()
                    return
            self.wfile.write(b"0\r\n\r\n")
            self.wfile.flush()
        except (BrokenPipeError, ConnectionResetError, OSError):
            self.close_connection = True

    # ------------------------------------------------------------------ pods

    def _list_pods(self, namespace: str, query: dict[str, str]) -> None:
        wanted = dict(p.split("=", 1) for p in query.get("labelSelector", "").split(",") if "=" in p)
        items = []
        for pod in self.server.state.pods:
            meta = pod.get("metadata", {})
            labels = meta.get("labels", {})
            if meta.get("namespace", namespace) == namespace and all(labels.get(k) == v for k, v in wanted.items()):
                item = copy.deepcopy(pod)
                item.pop("kind", None)
                item.pop("apiVersion", None)
                items.append(item)
        meta = {"resourceVersion": self.server.state.list_rv}
        self._send_json(200, {"kind": "PodList", "apiVersion": "v1", "metadata": meta, "items": items})

    # ------------------------------------------------------------------ rayclusters

    def _raycluster(self, method: str, namespace: str, name: str, body: Any) -> None:
        state = self.server.state
        key = (namespace, name)
        with self.server.lock:
            stored = state.rayclusters.get(key)
            if stored is None:
                self._send_json(404, status_object(404, "NotFound", f'rayclusters.ray.io "{name}" not found'))
                return
            if method == "GET":
                answer = copy.deepcopy(stored)
                if state.interfere is not None and state.interfere(stored):
                    state.rv_counter += 1
                    stored["metadata"]["resourceVersion"] = str(state.rv_counter)
                self._send_json(200, answer)
                return
            sent_rv = (body or {}).get("metadata", {}).get("resourceVersion")
            if sent_rv is not None and sent_rv != stored["metadata"]["resourceVersion"]:
                self._send_json(
                    409,
                    status_object(
                        409,
                        "Conflict",
                        f'Operation cannot be fulfilled on rayclusters.ray.io "{name}": the object has been '
                        "modified; please apply your changes to the latest version and try again",
                        name=name,
                        group="ray.io",
                        kind="rayclusters",
                    ),
                )
                return
            if method == "PUT":
                updated = copy.deepcopy(body)
            else:
                return self._send_json(415, status_object(415, "UnsupportedMediaType", "PATCH is not scripted"))
            state.rv_counter += 1
            updated["metadata"]["resourceVersion"] = str(state.rv_counter)
            updated["metadata"]["generation"] = int(stored["metadata"].get("generation", 1)) + 1
            updated["status"] = stored.get("status", {})
            state.rayclusters[key] = updated
            self._send_json(200, copy.deepcopy(updated))


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, state: ReplayState) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.state = state
        self.lock = threading.Lock()
        self.closing = threading.Event()
        #: Open client connections: a stopped server cuts them (kept-alive ones too), as a dead API server does.
        self.connections: set[socket.socket] = set()


class ReplayServer:
    """Start with ``with ReplayServer() as server:``; ``server.url`` is its base URL, ``server.state`` its script."""

    def __init__(self, state: ReplayState | None = None) -> None:
        self.state = state or ReplayState()
        self._server = _Server(self.state)
        self._thread = threading.Thread(target=self._server.serve_forever, name="kube-replay", daemon=True)

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    @property
    def lock(self) -> threading.Lock:
        """Held while a request reads or writes the script: a test playing a controller takes it too."""
        return self._server.lock

    def start(self) -> ReplayServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop as an API server that goes down: no new connections, and every open one cut."""
        self._server.closing.set()
        self._server.shutdown()
        self._server.server_close()
        with self._server.lock:
            open_connections = list(self._server.connections)
        for connection in open_connections:
            with contextlib.suppress(OSError):
                connection.shutdown(socket.SHUT_RDWR)

    def __enter__(self) -> ReplayServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def requests(self, path: str, **query: str) -> list[Recorded]:
        with self._server.lock:
            return [
                r for r in self.state.requests if r.path == path and all(r.query.get(k) == v for k, v in query.items())
            ]


def api_client(server: ReplayServer) -> Any:
    """A real ``kubernetes.client.ApiClient`` pointed at the replay server (no retries: tests see each failure)."""
    from kubernetes import client

    configuration = client.Configuration(host=server.url)
    configuration.retries = 0
    return client.ApiClient(configuration)
