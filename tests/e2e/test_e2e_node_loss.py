"""Losing a node: ``kill -9`` the raylet (and every process) of the emulated node a training job runs on.

The node agent of that node keeps heartbeating — it is a thread of the API process here, as it would be on a
machine whose Ray daemon crashed — so the database still says the node is ready. The service must learn the loss
from the cluster, requeue the job (a new attempt, event ``requeued``), keep it off the dead node, and the job
must resume from its checkpoint on the other H100 node. Runs last: the node stays dead for the session.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from e2e_support import H100_NODES, REPO, Deployment, event_kinds, full_log, spec, wait_log, wait_state

pytestmark = pytest.mark.slow

TRAIN = REPO / "seeds" / "examples" / "train_ddp.py"


def test_a_lost_node_requeues_its_job_which_resumes_from_its_checkpoint_elsewhere(
    deployment: Deployment, tmp_path: Path
) -> None:
    pytest.importorskip("torch")
    acme, checkpoints = deployment.acme, tmp_path / "checkpoints"
    job = acme.submit(
        spec(
            "ddp-resume",
            f"{sys.executable} {TRAIN} --steps 60 --checkpoint-every 5 --log-every 5 --step-sleep 0.2",
            devices_per_worker=4,
            cpus_per_worker=1,
            memory_gib_per_worker=0.5,
            checkpoint={"path": str(checkpoints), "interval_s": 60},
            runtime_env={"env_vars": {"OMP_NUM_THREADS": "1"}},
            walltime_s=600,
        )
    )
    job = wait_state(acme, job.id, "running", timeout_s=60)
    assert job.placement is not None
    doomed = job.placement.workers[0].node
    (survivor,) = set(H100_NODES) - {doomed}
    wait_log(acme, job.id, "step 15/60", timeout_s=90)  # a checkpoint (every 5 steps) is on disk by now
    assert (checkpoints / "checkpoint.pt").exists()

    assert deployment.run.cluster is not None
    deployment.run.cluster.kill_node(doomed)  # the raylet and its processes; the agent keeps heartbeating

    again = wait_state(acme, job.id, "running", "succeeded", attempt=1, timeout_s=90)
    kinds = event_kinds(acme, job.id)
    assert "requeued" in kinds, kinds
    requeued = next(e for e in acme.events(job.id) if e.kind == "requeued")
    assert doomed in requeued.message or "lost" in requeued.message
    assert again.placement is not None and again.placement.workers[0].node == survivor

    done = wait_state(acme, job.id, "succeeded", timeout_s=120)
    assert done.attempt == 1
    attempt, text = full_log(acme, job.id)
    assert attempt == 1
    assert "resumed from step" in text, text
    assert f"node {survivor}" in text and "DONE " in text
    resumed_at = int(text.split("resumed from step ", 1)[1].split()[0])
    assert resumed_at >= 15
    # The dead node is not offered again while its raylet is gone, whatever its agent says.
    kinds = event_kinds(acme, job.id)
    assert kinds.count("started") == 2 and kinds.count("requeued") == 1, kinds
