"""``zhisuan submit --wait`` on the real deployment, as ``sbatch --wait`` and ``ray job submit`` behave: it waits
for the end, prints rank 0's log as it is written, and exits with the job's status."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import yaml
from e2e_support import Deployment, probe_cmd, spec

from api.up import developer_login

ZHISUAN = Path(sys.executable).with_name("zhisuan")


def _submit(deployment: Deployment, tmp_path: Path, *args: str, **fields: object) -> subprocess.CompletedProcess[str]:
    body = spec(str(fields.pop("name")), str(fields.pop("entrypoint")), **fields)
    path = tmp_path / f"{body['name']}.yaml"
    path.write_text(yaml.safe_dump(body))
    assert deployment.run.admin_token is not None
    token = developer_login(deployment.run.url, deployment.run.admin_token, tenant="acme", user="carol")
    env = {**os.environ, "ZHISUAN_URL": deployment.run.url, "ZHISUAN_TOKEN": token, "XDG_CONFIG_HOME": str(tmp_path)}
    return subprocess.run(
        [str(ZHISUAN), "submit", str(path), *args], capture_output=True, text=True, env=env, timeout=180, check=False
    )


def test_submit_wait_streams_rank_0_and_exits_0_when_the_job_succeeds(deployment: Deployment, tmp_path: Path) -> None:
    entry = "sh -c 'echo first line; sleep 1; echo second line from rank $RANK'"
    done = _submit(deployment, tmp_path, "--wait", name="wait-ok", entrypoint=entry, workers=2, devices_per_worker=1)
    assert done.returncode == 0, done.stderr
    assert "first line" in done.stdout and "second line from rank 0" in done.stdout
    assert "rank 1" not in done.stdout  # rank 0's log only
    assert "succeeded" in done.stderr.splitlines()[-1]


def test_submit_wait_exits_with_the_job_exit_code_when_it_fails(deployment: Deployment, tmp_path: Path) -> None:
    done = _submit(deployment, tmp_path, "--wait", name="wait-fail", entrypoint=probe_cmd(exit_rank=0, code=7))
    assert done.returncode == 7, (done.stdout, done.stderr)
    assert "failed" in done.stderr and "exit code 7" in done.stderr


def test_submit_wait_until_running_returns_while_the_job_runs(deployment: Deployment, tmp_path: Path) -> None:
    done = _submit(
        deployment, tmp_path, "--wait", "--until", "running", "-o", "json", name="wait-run",
        entrypoint=probe_cmd(sleep=120),
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert yaml.safe_load(done.stdout)["state"] in ("running", "starting")
