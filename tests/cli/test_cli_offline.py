"""CLI behaviour that needs no server: local spec validation, exit codes, human times, option parsing."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from api.cli import app
from api.commands.admin import parse_duration
from api.commands.jobs import eta_text
from api.commands.render import duration, relative
from api.commands.views import month_range
from api.models import EtaOut

runner = CliRunner()
SEEDS = Path(__file__).resolve().parents[2] / "seeds"


@pytest.fixture(autouse=True)
def _isolated_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    for name in ("ZHISUAN_URL", "ZHISUAN_TOKEN", "ZHISUAN_PROFILE"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def listener() -> Iterator[socket.socket]:
    """A port that accepts TCP connections but never answers; tells whether anything connected."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(8)
    sock.setblocking(False)
    yield sock
    sock.close()


def connected(sock: socket.socket) -> bool:
    try:
        conn, _ = sock.accept()
    except BlockingIOError:
        return False
    conn.close()
    return True


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("name: x\nentrypoint: echo\nworkers: 0\n", "workers: Input should be greater than or equal to 1"),
        ("name: x\nentrypoint: echo\ngpus: 8\n", "gpus: unknown field"),
        ("name: x\nentrypoint: echo\ndevices_per_worker: 0.5\n", "training workers take whole devices"),
        ("name: [x\n", "malformed YAML"),
        ('{"name": "x", "entrypoint": "echo", "kind": "batch"}', "kind"),
    ],
)
def test_bad_spec_exits_2_before_any_request(tmp_path: Path, listener: socket.socket, text: str, message: str) -> None:
    spec = tmp_path / "job.yaml"
    spec.write_text(text)
    url = f"http://127.0.0.1:{listener.getsockname()[1]}"
    result = runner.invoke(app, ["submit", str(spec), "--url", url, "--token", "zs_x_y"])
    assert result.exit_code == 2, result.output
    assert message in result.stderr and str(spec) in result.stderr
    assert result.stdout == ""
    assert not connected(listener)


def test_queue_option_is_validated_locally_too(tmp_path: Path, listener: socket.socket) -> None:
    spec = tmp_path / "job.yaml"
    spec.write_text("name: x\nentrypoint: echo\n")
    url = f"http://127.0.0.1:{listener.getsockname()[1]}"
    result = runner.invoke(app, ["submit", str(spec), "--queue", "", "--url", url, "--token", "zs_x_y"])
    assert result.exit_code == 2 and "queue" in result.stderr
    assert not connected(listener)


def test_missing_spec_file_exits_2(tmp_path: Path) -> None:
    result = runner.invoke(app, ["submit", str(tmp_path / "nope.yaml"), "--token", "zs_x_y"])
    assert result.exit_code == 2 and "cannot read file" in result.stderr


def test_unreachable_server_exits_3(tmp_path: Path) -> None:
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    result = runner.invoke(app, ["list", "--url", f"http://127.0.0.1:{port}", "--token", "zs_x_y"])
    assert result.exit_code == 3
    assert f"cannot reach the Zhisuan API at http://127.0.0.1:{port}" in result.stderr
    assert "\n" not in result.stderr.strip()


def test_no_token_exits_2_with_a_hint() -> None:
    result = runner.invoke(app, ["status", "j1"])
    assert result.exit_code == 2 and "zhisuan login" in result.stderr


def test_broken_config_file_exits_2(tmp_path: Path) -> None:
    path = tmp_path / "xdg" / "zhisuan" / "config.toml"
    path.parent.mkdir(parents=True)
    path.write_text("[profiles.default\n")
    result = runner.invoke(app, ["list"])
    assert result.exit_code == 2 and "not valid TOML" in result.stderr


def test_existing_commands_still_work() -> None:
    result = runner.invoke(app, ["place", "-o", "json"])
    assert result.exit_code == 0, result.output
    assert '"decision"' in result.stdout
    for command in (["simulate", "--help"], ["agent", "--help"], ["admin", "quota", "set", "--help"]):
        assert runner.invoke(app, command).exit_code == 0


def eta(state: str, start: float | None = None) -> EtaOut:
    return EtaOut.from_api(
        {"job_id": "j", "state": state, "estimated_start": start, "estimated_finish": None, "computed_at": None}
    )


def test_human_times() -> None:
    assert [duration(s) for s in (5, 59, 60, 720, 3600, 7500, 90000, 86400)] == [
        "5 s", "59 s", "1 min", "12 min", "1 h", "2 h 5 min", "1 d 1 h", "1 d",
    ]  # fmt: skip
    assert relative(1_000_720.0, now=1_000_000.0).startswith("in 12 min (")
    assert relative(1_000_000.0, now=1_010_800.0).startswith("3 h ago (")
    assert eta_text(eta("pending", 1_000_720.0), now=1_000_000.0).startswith("starts in 12 min (")
    assert "UTC)" in eta_text(eta("pending", 1_000_720.0), now=1_000_000.0)
    assert eta_text(eta("pending")).startswith("no estimate yet")
    assert eta_text(eta("succeeded")) == "succeeded: nothing to estimate"


def test_month_and_duration_options() -> None:
    assert month_range("2026-11") == (1793491200.0, 1796083200.0)
    assert month_range("2026-12")[1] == 1798761600.0  # 2027-01-01
    with pytest.raises(typer.BadParameter):
        month_range("2026-13")
    assert [parse_duration(t) for t in ("3600", "90s", "30m", "12h", "30d", "1w")] == [
        3600, 90, 1800, 43200, 2592000, 604800,
    ]  # fmt: skip
    with pytest.raises(typer.BadParameter):
        parse_duration("soon")


def test_bad_month_is_a_usage_error() -> None:
    result = runner.invoke(app, ["usage", "--month", "november", "--token", "zs_x_y"])
    assert result.exit_code == 2 and "--month" in result.output
