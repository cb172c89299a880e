"""``zhisuan server`` stops cleanly on SIGTERM (how Kubernetes, systemd and docker stop it), as on Ctrl-C: a real
process on 127.0.0.1 with SQLite, stopped by the signal, exits 0 having said so."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

BIN = Path(sys.executable).parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def test_sigterm_stops_the_server_the_way_ctrl_c_does(tmp_path: Path) -> None:
    port = _free_port()
    env = {
        **os.environ,
        "XDG_CONFIG_HOME": str(tmp_path),
        "ZHISUAN_DATABASE_URL": f"sqlite:///{tmp_path}/zhisuan.db",
        "ZHISUAN_ADMIN_TOKEN_FILE": str(tmp_path / "admin-token"),
    }
    proc = subprocess.Popen(
        [str(BIN / "zhisuan"), "server", "--port", str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, proc.communicate()[0]
            try:
                if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "the server did not answer within 60 s"
            time.sleep(0.2)
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, out
    assert out.rstrip().endswith("stopped"), out
