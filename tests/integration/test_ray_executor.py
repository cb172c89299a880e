"""RayExecutor on a real local multi-node Ray cluster (head + 3 emulated nodes), placements from the real core.

Workers report where they ran from inside: a probe entrypoint prints its environment, whose ``ZHISUAN_NODE``
the node supervisor (or, in launch mode ``actor``, the worker actor) took from the Ray node label of the node
it runs on, and whose visibility variables name the devices. No mocks: every test launches real placement
groups, real supervisors or actors, and reads the workers' real logs.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest
import ray

from scheduler.core import SchedulerCore
from scheduler.live.executors.base import ExecutionStatus, ExecutorUnavailable, LaunchRequest, Phase
from scheduler.live.executors.ray.bundles import pg_name
from scheduler.live.executors.ray.executor import RayExecutor, wait_for
from scheduler.live.executors.ray.node import supervisor_name
from scheduler.live.localcluster import LocalCluster
from scheduler.model import Job, JobKind, Node, Placement, TopologyLevel, WorkerPlacement
from scheduler.state import ClusterState

pytestmark = pytest.mark.slow  # ~1.5 min: one Ray cluster for the module, torch imported twice per DDP attempt

REPO = Path(__file__).resolve().parents[2]
NODES = [
    Node(id="h100-a", model="H100", devices=4, cpu_milli=2000, memory_mib=2048, site="local", island="nvl-a"),
    Node(id="h100-b", model="H100", devices=4, cpu_milli=2000, memory_mib=2048, site="local", island="nvl-b"),
    Node(id="ascend-a", model="Ascend910B", devices=4, cpu_milli=2000, memory_mib=2048, site="local"),
]
TERMINAL = [Phase.SUCCEEDED, Phase.FAILED, Phase.STOPPED, Phase.LOST]

PROBE = textwrap.dedent(
    """
    import argparse, json, os, sys, time
    p = argparse.ArgumentParser()
    p.add_argument("--sleep", type=float, default=0)
    p.add_argument("--exit-rank", type=int, default=-1)
    p.add_argument("--code", type=int, default=0)
    p.add_argument("--record")
    a = p.parse_args()
    keys = ["RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT", "ZHISUAN_JOB_ID",
            "ZHISUAN_ATTEMPT", "ZHISUAN_NODE", "ZHISUAN_RAY_NODE_ID", "ZHISUAN_CHECKPOINT_PATH", "ZHISUAN_MODEL",
            "CUDA_VISIBLE_DEVICES", "ASCEND_RT_VISIBLE_DEVICES", "ZHISUAN_VISIBLE_DEVICES", "ZHISUAN_DEVICE_MILLI",
            "CUDA_DEVICE_ORDER", "GREETING"]
    env = {k: os.environ.get(k) for k in keys}
    print("PROBE " + json.dumps({**env, "pid": os.getpid(), "cwd": os.getcwd()}), flush=True)
    if a.record:
        with open(a.record, "a") as f:
            f.write(os.environ["RANK"] + "\\n")
    if int(os.environ["RANK"]) == a.exit_rank:
        print("the data file is corrupt", flush=True)
        print("giving up", flush=True)
        sys.exit(a.code)
    time.sleep(a.sleep)
    """
)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    with LocalCluster(NODES, work_dir=tmp_path_factory.mktemp("ray")) as local:
        yield local


@pytest.fixture(scope="module")
def probe(tmp_path_factory: pytest.TempPathFactory) -> str:
    path = tmp_path_factory.mktemp("probe") / "probe.py"
    path.write_text(PROBE)
    return f"{sys.executable} {path}"


@pytest.fixture(scope="module")
def log_dir(tmp_path_factory: pytest.TempPathFactory) -> str:
    return str(tmp_path_factory.mktemp("logs"))


@pytest.fixture(scope="module")
def executor(cluster: LocalCluster, log_dir: str) -> Iterator[RayExecutor]:
    ex = RayExecutor(cluster.address, log_dir=log_dir, stop_grace_s=3.0)
    yield ex
    with contextlib.suppress(ExecutorUnavailable):  # the last test takes the cluster away
        for job, _attempt in ex.discover():
            ex.stop(job, "test teardown")
    ex.close()


def place(*jobs: Job, occupy: Job | None = None) -> dict[str, Placement]:
    """Placements by the real core on a state of the test nodes (``occupy`` is placed first)."""
    core, state = SchedulerCore(), ClusterState(NODES)
    if occupy is not None:
        assert core.step(state, [occupy], now=0.0)[0].placement is not None
    out = {}
    for decision in core.step(state, list(jobs), now=1.0):
        assert decision.placement is not None, decision.reasons
        out[decision.job_id] = decision.placement
    return out


def probes(ex: RayExecutor, job: str, world: int) -> list[dict[str, object]]:
    found = []
    for rank in range(world):
        text = ex.read_logs(job, rank).text
        lines = [line for line in text.splitlines() if line.startswith("PROBE ")]
        assert lines, f"rank {rank} printed no probe line: {text!r}"
        found.append(json.loads(lines[0][len("PROBE ") :]))
    return found


def ray_node_labels() -> dict[str, str]:
    """Ray node id -> zhisuan.io/node label, as the GCS knows them."""
    return {n["NodeID"]: n["Labels"].get("zhisuan.io/node", "") for n in ray.nodes() if n["Alive"]}  # type: ignore[no-untyped-call]


def supervisor(node: str) -> Any:
    return ray.get_actor(supervisor_name(node), namespace="zhisuan")


def gone(job: str, attempt: int, world: int, timeout_s: float = 15.0) -> bool:
    """The attempt's placement group is removed, and no supervisor holds any of its ranks."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        pgs = [v for v in ray.util.placement_group_table().values() if v["name"] == pg_name(job, attempt)]
        held: list[dict[str, object]] = []
        for node in NODES:
            with contextlib.suppress(ValueError):  # a node that was killed has none
                held += ray.get(supervisor(node.id).statuses.remote([(job, attempt)]))["ranks"]
        if all(v["state"] == "REMOVED" for v in pgs) and not held:
            return True
        time.sleep(0.2)
    return False


def until(ex: RayExecutor, job: str, phases: list[Phase], timeout_s: float = 60.0) -> ExecutionStatus:
    return wait_for(ex, job, phases, timeout_s=timeout_s)


# ------------------------------------------------------------------------------------------------- tests


def test_one_worker_runs_on_the_chosen_node_and_devices(executor: RayExecutor, probe: str) -> None:
    # A 1-device job placed first makes the core pick devices other than the first ones for the real job.
    placement = place(
        Job(id="one", devices_per_worker=2, models=("H100",), cpu_milli_per_worker=500, memory_mib_per_worker=256),
        occupy=Job(id="filler", devices_per_worker=1, models=("H100",)),
    )["one"]
    worker = placement.workers[0]
    assert worker.devices != (0, 1)
    executor.launch(
        LaunchRequest(
            "one", 0, placement, probe, env={"GREETING": "ni hao"}, checkpoint_path="/tmp/ckpt/one", walltime_s=60
        )
    )
    status = until(executor, "one", TERMINAL)
    assert status.phase is Phase.SUCCEEDED, status
    (seen,) = probes(executor, "one", 1)
    assert seen["ZHISUAN_NODE"] == worker.node
    assert ray_node_labels()[str(seen["ZHISUAN_RAY_NODE_ID"])] == worker.node  # Ray agrees where it ran
    devices = ",".join(map(str, worker.devices))
    assert seen["CUDA_VISIBLE_DEVICES"] == devices and seen["ZHISUAN_VISIBLE_DEVICES"] == devices
    assert seen["CUDA_DEVICE_ORDER"] == "PCI_BUS_ID"  # CUDA numbers the devices as NVML (the agent) does
    assert (seen["RANK"], seen["WORLD_SIZE"], seen["LOCAL_RANK"]) == ("0", "1", "0")
    assert (seen["ZHISUAN_JOB_ID"], seen["ZHISUAN_ATTEMPT"]) == ("one", "0")
    assert seen["ZHISUAN_CHECKPOINT_PATH"] == "/tmp/ckpt/one" and seen["GREETING"] == "ni hao"
    assert status.workers[0].node == worker.node and status.workers[0].exit_code == 0
    # Finished attempts release their devices at once; the final record stays for status/poll.
    assert gone("one", 0, 1)
    assert ("one", 0) not in executor.discover()
    assert executor.status("one") == status
    # poll() lists the ended attempt until someone acknowledges it with stop(); status() keeps answering.
    assert status in executor.poll()
    executor.stop("one", "finished")
    assert all(s.job_id != "one" for s in executor.poll())
    assert executor.status("one") == status
    executor.forget("one")
    assert executor.status("one") is None


def test_gang_across_two_nodes_and_logs_by_offset(executor: RayExecutor, probe: str) -> None:
    placement = place(Job(id="gang", workers=2, devices_per_worker=4, models=("H100",), cpu_milli_per_worker=500))[
        "gang"
    ]
    assert len(placement.nodes) == 2
    executor.launch(LaunchRequest("gang", 0, placement, f"{probe} --sleep 0.5"))
    running = until(executor, "gang", [Phase.RUNNING, *TERMINAL])
    assert running.phase in (Phase.RUNNING, Phase.SUCCEEDED), running
    assert until(executor, "gang", TERMINAL).phase is Phase.SUCCEEDED
    seen = probes(executor, "gang", 2)
    for rank, (worker, env) in enumerate(zip(placement.workers, seen, strict=True)):
        assert env["RANK"] == str(rank) and env["WORLD_SIZE"] == "2" and env["LOCAL_RANK"] == "0"
        assert env["ZHISUAN_NODE"] == worker.node
        assert ray_node_labels()[str(env["ZHISUAN_RAY_NODE_ID"])] == worker.node
        assert env["CUDA_VISIBLE_DEVICES"] == ",".join(map(str, worker.devices))
    assert seen[0]["ZHISUAN_NODE"] != seen[1]["ZHISUAN_NODE"]
    assert seen[0]["MASTER_ADDR"] == seen[1]["MASTER_ADDR"] and seen[0]["MASTER_PORT"] == seen[1]["MASTER_PORT"]
    # Reading in small chunks by offset gives back the whole log.
    whole = executor.read_logs("gang", 1).text
    text, offset = "", 0
    while True:
        chunk = executor.read_logs("gang", 1, offset=offset, limit=17)
        if chunk.next_offset == offset:
            break
        text, offset = text + chunk.text, chunk.next_offset
    assert text == whole and whole.startswith("PROBE ")


def test_stop_tears_down_placement_group_actors_and_processes(executor: RayExecutor, probe: str) -> None:
    placement = place(Job(id="long", workers=2, devices_per_worker=1, models=("H100",)))["long"]
    executor.launch(LaunchRequest("long", 0, placement, f"{probe} --sleep 300"))
    assert until(executor, "long", [Phase.RUNNING, *TERMINAL]).phase is Phase.RUNNING
    pids = [int(str(p["pid"])) for p in _probes_when_ready(executor, "long", 2)]
    assert all(psutil.pid_exists(pid) for pid in pids)
    executor.stop("long", "cancelled by alice")
    executor.stop("long", "cancelled twice")  # idempotent
    status = executor.status("long")
    assert status is not None and status.phase is Phase.STOPPED and status.message == "cancelled by alice"
    assert gone("long", 0, 2)
    assert not any(psutil.pid_exists(pid) and psutil.Process(pid).status() != "zombie" for pid in pids)
    assert executor.read_logs("long", 0).text.startswith("PROBE ")  # logs outlive the workers


def test_failed_worker_fails_the_gang_with_exit_code_and_last_lines(executor: RayExecutor, probe: str) -> None:
    placement = place(Job(id="bad", workers=2, devices_per_worker=4, models=("H100",)))["bad"]
    executor.launch(LaunchRequest("bad", 0, placement, f"{probe} --sleep 300 --exit-rank 1 --code 3"))
    status = until(executor, "bad", TERMINAL)
    assert status.phase is Phase.FAILED
    assert "rank 1" in status.message and "exited with code 3" in status.message
    assert status.last_log_lines[-2:] == ("the data file is corrupt", "giving up")
    assert status.workers[1].exit_code == 3
    assert gone("bad", 0, 2)  # rank 0 (still sleeping) was stopped with the gang
    final = executor.status("bad")
    assert final is not None and final.workers[0].phase is Phase.STOPPED


def test_walltime_exceeded_stops_the_job(executor: RayExecutor, probe: str) -> None:
    placement = place(Job(id="slow", devices_per_worker=1, models=("H100",)))["slow"]
    executor.launch(LaunchRequest("slow", 0, placement, f"{probe} --sleep 300", walltime_s=1.5))
    status = until(executor, "slow", TERMINAL)
    assert status.phase is Phase.STOPPED and status.message.startswith("exceeded walltime"), status


def test_entrypoint_that_fails_at_once_and_missing_package(executor: RayExecutor) -> None:
    placement = place(Job(id="typo", devices_per_worker=1, models=("H100",)))["typo"]
    executor.launch(LaunchRequest("typo", 0, placement, "pyhton train.py"))
    missing = place(Job(id="nopkg", devices_per_worker=1, models=("H100",)))["nopkg"]
    executor.launch(LaunchRequest("nopkg", 0, missing, "true", pip=("pytest", "surely-not-installed-zz>=1")))
    status = until(executor, "typo", TERMINAL)
    assert status.phase is Phase.FAILED and "exited with code 127" in status.message and not status.retryable
    assert any("not found" in line for line in status.last_log_lines), status.last_log_lines
    status = until(executor, "nopkg", TERMINAL)
    assert status.phase is Phase.FAILED
    assert "surely-not-installed-zz is not installed" in status.message and "pytest" not in status.message
    assert not status.retryable, "a missing package fails the same way on every retry"


def test_launch_is_idempotent(executor: RayExecutor, probe: str, tmp_path: Path) -> None:
    record = tmp_path / "runs.txt"
    placement = place(Job(id="twice", workers=2, devices_per_worker=1, models=("H100",)))["twice"]
    req = LaunchRequest("twice", 0, placement, f"{probe} --record {record} --sleep 0.5")
    executor.launch(req)
    executor.launch(req)
    assert until(executor, "twice", TERMINAL).phase is Phase.SUCCEEDED
    executor.launch(req)  # after it finished: still not again
    time.sleep(1.0)
    assert sorted(record.read_text().split()) == ["0", "1"]


def test_ascend_job_gets_ascend_visibility(executor: RayExecutor, probe: str) -> None:
    placement = place(
        Job(id="npu", devices_per_worker=2, models=("Ascend910B",)),
        occupy=Job(id="npu-filler", devices_per_worker=1, models=("Ascend910B",)),
    )["npu"]
    executor.launch(LaunchRequest("npu", 0, placement, probe))
    assert until(executor, "npu", TERMINAL).phase is Phase.SUCCEEDED
    (seen,) = probes(executor, "npu", 1)
    assert seen["ZHISUAN_NODE"] == "ascend-a" and seen["ZHISUAN_MODEL"] == "Ascend910B"
    assert seen["ASCEND_RT_VISIBLE_DEVICES"] == ",".join(map(str, placement.workers[0].devices))
    assert seen["CUDA_VISIBLE_DEVICES"] in (None, "")


def test_inference_replicas_on_fractional_devices(executor: RayExecutor) -> None:
    placement = place(Job(id="svc", kind=JobKind.INFERENCE, workers=2, devices_per_worker=0.25, models=("H100",)))[
        "svc"
    ]
    assert all(w.milli == 250 for w in placement.workers)
    executor.launch(
        LaunchRequest(
            "svc",
            0,
            placement,
            "python seeds/examples/inference_server.py --port 0",
            working_dir=str(REPO),
            kind=JobKind.INFERENCE,
        )
    )
    assert until(executor, "svc", [Phase.RUNNING, *TERMINAL]).phase is Phase.RUNNING
    for rank, worker in enumerate(placement.workers):
        url = _first_line_with(executor, "svc", rank, "serving on ").split("serving on ")[1].strip()
        with urllib.request.urlopen(url + "/info", timeout=5) as reply:
            info = json.loads(reply.read())
        assert info["node"] == worker.node and info["replica"] == rank and info["device_milli"] == "250"
        assert info["visible_devices"]["CUDA_VISIBLE_DEVICES"] == str(worker.devices[0])
    executor.stop("svc", "scaled to zero")
    status = executor.status("svc")
    assert status is not None and status.phase is Phase.STOPPED
    assert "stopped after" in executor.read_logs("svc", 0).text  # it shut down cleanly on SIGTERM


def test_a_new_executor_finds_running_jobs(
    cluster: LocalCluster, executor: RayExecutor, probe: str, log_dir: str
) -> None:
    placement = place(Job(id="survivor", workers=2, devices_per_worker=1, models=("Ascend910B",)))["survivor"]
    executor.launch(LaunchRequest("survivor", 0, placement, f"{probe} --sleep 300"))
    assert until(executor, "survivor", [Phase.RUNNING, *TERMINAL]).phase is Phase.RUNNING
    # A service restart: a fresh driver process connects and knows nothing but the cluster address.
    script = textwrap.dedent(
        f"""
        import json
        from scheduler.live.executors.ray.executor import RayExecutor
        ex = RayExecutor({cluster.address!r}, log_dir={log_dir!r})
        found = sorted(ex.discover())
        st = ex.status("survivor")
        polled = [(s.job_id, s.attempt, s.phase.value) for s in ex.poll() if s.job_id == "survivor"]
        log = ex.read_logs("survivor", 1).text
        ex.stop("survivor", "stopped by the restarted service")
        print("RESULT " + json.dumps({{"found": found, "phase": st.phase.value, "polled": polled, "log": log}}))
        ex.close()
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120, cwd=REPO, check=False
    )
    lines = [line for line in out.stdout.splitlines() if line.startswith("RESULT ")]
    assert lines, out.stdout + out.stderr
    result = json.loads(lines[0][len("RESULT ") :])
    assert ["survivor", 0] in result["found"]
    assert result["phase"] == "running" and result["polled"] == [["survivor", 0, "running"]]
    assert result["log"].startswith("PROBE ")
    status = executor.status("survivor")  # the first executor sees what the second one did
    assert status is not None and status.phase is Phase.STOPPED
    assert status.message == "stopped by the restarted service"
    assert gone("survivor", 0, 2)


def test_a_killed_supervisor_loses_its_ranks_and_a_new_one_takes_new_launches(
    executor: RayExecutor, probe: str
) -> None:
    placement = place(Job(id="orphaned", workers=2, devices_per_worker=1, models=("Ascend910B",)))["orphaned"]
    executor.launch(LaunchRequest("orphaned", 0, placement, f"{probe} --sleep 300"))
    assert until(executor, "orphaned", [Phase.RUNNING, *TERMINAL]).phase is Phase.RUNNING
    pids = [int(str(p["pid"])) for p in _probes_when_ready(executor, "orphaned", 2)]
    old: dict[str, Any] = ray.get(supervisor("ascend-a").info.remote())
    os.kill(old["pid"], signal.SIGKILL)  # the supervisor process crashes
    status = until(executor, "orphaned", TERMINAL, timeout_s=30)
    assert status.phase is Phase.LOST and "ascend-a" in status.message, status
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and any(_alive(pid) for pid in pids):
        time.sleep(0.1)
    assert not any(_alive(pid) for pid in pids)  # its ranks died with it (PR_SET_PDEATHSIG)
    assert gone("orphaned", 0, 2)
    # The executor started a new supervisor on the node; a new attempt runs there, pinned as before.
    executor.launch(LaunchRequest("orphaned", 1, placement, probe))
    status = until(executor, "orphaned", TERMINAL)
    assert status.phase is Phase.SUCCEEDED and status.attempt == 1, status
    new: dict[str, Any] = ray.get(supervisor("ascend-a").info.remote())
    assert new["actor_id"] != old["actor_id"] and new["pid"] != old["pid"]
    assert [p["ZHISUAN_NODE"] for p in probes(executor, "orphaned", 2)] == ["ascend-a", "ascend-a"]
    executor.stop("orphaned", "finished")


def test_a_removed_placement_group_stops_its_ranks(executor: RayExecutor, probe: str) -> None:
    """The placement group is the reservation: without it the supervisor does not keep the processes running."""
    placement = place(Job(id="unreserved", devices_per_worker=1, models=("H100",)))["unreserved"]
    executor.launch(LaunchRequest("unreserved", 0, placement, f"{probe} --sleep 300"))
    assert until(executor, "unreserved", [Phase.RUNNING, *TERMINAL]).phase is Phase.RUNNING
    (seen,) = _probes_when_ready(executor, "unreserved", 1)
    ray.util.remove_placement_group(ray.util.get_placement_group(pg_name("unreserved", 0)))
    status = until(executor, "unreserved", TERMINAL, timeout_s=15)
    assert status.phase is Phase.STOPPED and "placement group was removed" in status.message, status
    assert not _alive(int(str(seen["pid"])))
    assert gone("unreserved", 0, 1)
    executor.stop("unreserved", "acknowledged")


def test_pytorch_ddp_example_trains_across_two_nodes_and_resumes(executor: RayExecutor, tmp_path: Path) -> None:
    pytest.importorskip("torch")
    placement = place(Job(id="ddp", workers=2, devices_per_worker=4, models=("H100",), cpu_milli_per_worker=1000))[
        "ddp"
    ]
    assert len(placement.nodes) == 2
    ckpt = str(tmp_path / "ckpt")
    base = "python seeds/examples/train_ddp.py --checkpoint-every 5 --log-every 5"
    common = {"working_dir": str(REPO), "checkpoint_path": ckpt, "env": {"OMP_NUM_THREADS": "1"}}
    executor.launch(LaunchRequest("ddp", 0, placement, f"{base} --steps 10", **common))  # type: ignore[arg-type]
    status = until(executor, "ddp", TERMINAL, timeout_s=120)
    assert status.phase is Phase.SUCCEEDED, (status, executor.read_logs("ddp", 0).text)
    first = [_done(executor, "ddp", r) for r in range(2)]
    assert [d["steps"] for d in first] == [10, 10] and all(d["world_size"] == 2 for d in first)
    assert (tmp_path / "ckpt" / "checkpoint.pt").exists()
    # A second attempt (a retry or a requeue after preemption) resumes from the checkpoint.
    executor.launch(LaunchRequest("ddp", 1, placement, f"{base} --steps 15", **common))  # type: ignore[arg-type]
    status = until(executor, "ddp", TERMINAL, timeout_s=120)
    assert status.phase is Phase.SUCCEEDED and status.attempt == 1
    log = executor.read_logs("ddp", 0).text
    assert "resumed from step 10" in log
    assert [_done(executor, "ddp", r)["start_step"] for r in range(2)] == [10, 10]


def test_a_placement_on_a_node_ray_does_not_have_ends_lost(cluster: LocalCluster, log_dir: str) -> None:
    ghost = Placement("ghost", "H100", "local/H100", (WorkerPlacement("h100-zz", (0,), 1000),), TopologyLevel.NODE)
    ex = RayExecutor(cluster.address, log_dir=log_dir, pending_node_grace_s=0.5)  # shares this process's driver
    ex.launch(LaunchRequest("ghost", 0, ghost, "true"))
    assert ex.status("ghost").phase is Phase.STARTING  # type: ignore[union-attr]
    status = until(ex, "ghost", TERMINAL, timeout_s=10)
    assert status.phase is Phase.LOST and "h100-zz is not in the Ray cluster" in status.message
    assert gone("ghost", 0, 1)


def test_killed_node_reports_its_job_lost(cluster: LocalCluster, executor: RayExecutor, probe: str) -> None:
    """Last: it leaves node h100-b dead."""
    placement = place(Job(id="doomed", workers=2, devices_per_worker=4, models=("H100",)))["doomed"]
    executor.launch(LaunchRequest("doomed", 0, placement, f"{probe} --sleep 300"))
    assert until(executor, "doomed", [Phase.RUNNING, *TERMINAL]).phase is Phase.RUNNING
    pids = [int(str(p["pid"])) for p in _probes_when_ready(executor, "doomed", 2)]
    cluster.kill_node("h100-b")
    status = until(executor, "doomed", TERMINAL, timeout_s=60)
    assert status.phase is Phase.LOST, status
    assert "h100-b" in status.message
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and any(_alive(pid) for pid in pids):
        time.sleep(0.2)
    assert not any(_alive(pid) for pid in pids)  # no orphan entrypoint on either node


def test_a_vanished_cluster_makes_the_executor_unavailable_not_dead(
    cluster: LocalCluster, executor: RayExecutor
) -> None:
    """Very last: the head goes away. The executor answers at once with ExecutorUnavailable (no hang) and this
    process (the service, in production) lives on; Ray would otherwise end a driver whose GCS stays away 60 s."""
    cluster.kill_head()
    for call in (executor.poll, executor.discover, lambda: executor.status("one")):
        began = time.monotonic()
        with pytest.raises(ExecutorUnavailable, match="unreachable"):
            call()
        assert time.monotonic() - began < 3


# ----------------------------------------------------------------------------------------------- helpers


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _probes_when_ready(ex: RayExecutor, job: str, world: int, timeout_s: float = 30.0) -> list[dict[str, object]]:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            return probes(ex, job, world)
        except AssertionError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def _first_line_with(ex: RayExecutor, job: str, rank: int, needle: str, timeout_s: float = 30.0) -> str:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for line in ex.read_logs(job, rank).text.splitlines():
            if needle in line:
                return line
        time.sleep(0.1)
    raise AssertionError(f"{job} rank {rank} never logged {needle!r}: {ex.read_logs(job, rank).text!r}")


def _done(ex: RayExecutor, job: str, rank: int) -> dict[str, int]:
    for line in ex.read_logs(job, rank).text.splitlines():
        if line.startswith("DONE "):
            result: dict[str, int] = json.loads(line[len("DONE ") :])
            return result
    raise AssertionError(f"{job} rank {rank} did not finish: {ex.read_logs(job, rank).text!r}")
