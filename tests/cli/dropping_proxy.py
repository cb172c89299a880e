"""A TCP proxy in front of the real server that can drop a connection after the server has answered.

``DroppingProxy(port, drop=1)`` forwards the first ``drop`` connections' requests to the server, waits until
the server starts answering (so the request took effect), then closes the client's connection without passing
anything on: to the client, the connection dropped before the answer, exactly the case an idempotency key is
for. Later connections are forwarded both ways untouched.
"""

from __future__ import annotations

import contextlib
import selectors
import socket
import threading


class DroppingProxy:
    def __init__(self, upstream_port: int, drop: int = 0) -> None:
        self.upstream = ("127.0.0.1", upstream_port)
        self.drop = drop
        self.dropped = 0
        self.connections = 0
        self._lock = threading.Lock()
        self._sock = socket.socket()
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind(("127.0.0.1", 0))
        self._sock.listen(64)
        self._sock.settimeout(0.2)
        self.port: int = self._sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="dropping-proxy", daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self._sock.close()

    def __enter__(self) -> DroppingProxy:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                client, _ = self._sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            with self._lock:
                self.connections += 1
                dropping = self.dropped < self.drop
                if dropping:
                    self.dropped += 1
            threading.Thread(target=self._pump, args=(client, dropping), daemon=True).start()

    def _pump(self, client: socket.socket, dropping: bool) -> None:
        upstream = socket.create_connection(self.upstream, timeout=10)
        selector = selectors.DefaultSelector()
        selector.register(client, selectors.EVENT_READ, upstream)
        selector.register(upstream, selectors.EVENT_READ, client)
        try:
            while not self._stop.is_set():
                for key, _ in selector.select(timeout=0.2):
                    source: socket.socket = key.fileobj  # type: ignore[assignment]
                    target: socket.socket = key.data
                    data = source.recv(65536)
                    if not data:
                        return
                    if dropping and source is upstream:
                        return  # the server answered: drop the connection without passing the answer on
                    target.sendall(data)
        except OSError:
            return
        finally:
            selector.close()
            for s in (client, upstream):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)
                s.close()
