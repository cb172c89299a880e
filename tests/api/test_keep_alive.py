"""The API keeps an idle connection longer than its clients do (httpx drops one idle for 5 s), so no client sends
on a connection the server is closing at that moment. Both at 5 s, an agent heartbeating every 5 s now and then
got "Server disconnected without sending a response" and warned "API unreachable" (seen stopping zhisuan up).
A real server through :func:`api.up.running`, one raw HTTP/1.1 connection left idle past httpx's expiry."""

from __future__ import annotations

import socket
import time
from pathlib import Path

import httpx
from api_stack import free_port, make_settings

from api.app import KEEP_ALIVE_S
from api.up import running


def _get(conn: socket.socket) -> bytes:
    conn.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
    answer = b""
    while b"\r\n\r\n" not in answer or not answer.rstrip().endswith(b"}"):
        chunk = conn.recv(4096)
        if not chunk:
            break
        answer += chunk
    return answer


def test_an_idle_connection_outlives_the_clients_expiry(tmp_path: Path) -> None:
    client_expiry = httpx.Limits(max_connections=1).keepalive_expiry
    assert client_expiry is not None and client_expiry < KEEP_ALIVE_S
    settings = make_settings(f"sqlite:///{tmp_path / 'zhisuan.db'}", tmp_path, cluster_file=None)
    port = free_port()
    with (
        running(settings, port=port, agents=False, scheduler=False),
        socket.create_connection(("127.0.0.1", port)) as c,
    ):
        assert _get(c).startswith(b"HTTP/1.1 200")
        time.sleep(client_expiry + 1.0)
        # Still open on the server's side: the same connection answers.
        assert _get(c).startswith(b"HTTP/1.1 200")
