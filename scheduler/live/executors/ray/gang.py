"""The gang rule: one phase for a job from its ranks' phases, and the final status as the records keep it.

One lost rank makes the job ``lost``, walltime makes it ``stopped``, one failed rank ``failed`` (the others are
then stopped by the executor); it has ``succeeded`` only when every rank exited 0. The earliest rank to end is
the cause: the others usually failed because of it.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict
from typing import Any

from scheduler.live.executors.base import ExecutionStatus, Phase, WorkerStatus
from scheduler.live.executors.ray.node import WALLTIME_MESSAGE


def fold(job_id: str, attempt: int, workers: Sequence[dict[str, Any]]) -> ExecutionStatus:
    """One job phase from its workers' raw states, gang-style (see :class:`ExecutionStatus`).

    >>> w = lambda r, phase, msg="", end=None: {"rank": r, "node": "n", "phase": phase, "message": msg,
    ...                                          "exit_code": None, "ended_at": end, "tail": [f"rank {r}"]}
    >>> fold("j", 0, [w(0, "running"), w(1, "failed", "exited with code 3", 5.0)]).message
    'rank 1 on n failed: exited with code 3'
    >>> fold("j", 0, [w(0, "stopped", "exceeded walltime (1 s)"), w(1, "failed", "exited with code 1")]).phase
    <Phase.STOPPED: 'stopped'>
    >>> fold("j", 0, [w(0, "succeeded"), w(1, "running")]).phase
    <Phase.RUNNING: 'running'>
    >>> fold("j", 0, [w(0, "failed", "runtime_env pip on node n: torch missing", 1.0) | {"retryable": False}]).retryable
    False
    """
    statuses = tuple(
        WorkerStatus(
            rank=int(w["rank"]),
            node=str(w["node"]),
            phase=Phase(w["phase"]),
            exit_code=w.get("exit_code"),
            message=str(w.get("message", "")),
            retryable=bool(w.get("retryable", True)),
        )
        for w in sorted(workers, key=lambda w: int(w["rank"]))
    )
    by_rank = {int(w["rank"]): w for w in workers}

    def pick(candidates: list[WorkerStatus]) -> WorkerStatus:
        # The earliest to end is the cause; the others usually failed because of it.
        return min(candidates, key=lambda s: (by_rank[s.rank].get("ended_at") or float("inf"), s.rank))

    def result(phase: Phase, message: str, decider: WorkerStatus | None) -> ExecutionStatus:
        tail = by_rank[decider.rank].get("tail", []) if decider is not None else []
        retryable = decider.retryable if decider is not None else True
        return ExecutionStatus(job_id, attempt, phase, statuses, message, tuple(tail), retryable)

    if not statuses:
        return ExecutionStatus(job_id, attempt, Phase.LOST, (), "no workers found")
    lost = [s for s in statuses if s.phase is Phase.LOST]
    if lost:
        s = pick(lost)
        return result(Phase.LOST, f"rank {s.rank} on {s.node} lost: {s.message}", s)
    walltime = [s for s in statuses if s.phase is Phase.STOPPED and s.message.startswith(WALLTIME_MESSAGE)]
    if walltime:
        s = pick(walltime)
        return result(Phase.STOPPED, s.message, s)
    failed = [s for s in statuses if s.phase is Phase.FAILED]
    if failed:
        s = pick(failed)
        return result(Phase.FAILED, f"rank {s.rank} on {s.node} failed: {s.message}", s)
    stopped = [s for s in statuses if s.phase is Phase.STOPPED]
    if stopped:
        s = pick(stopped)
        return result(Phase.STOPPED, s.message, s)
    if all(s.phase is Phase.SUCCEEDED for s in statuses):
        return result(Phase.SUCCEEDED, "all workers exited with code 0", statuses[0])
    if any(s.phase is Phase.STARTING for s in statuses):
        waiting = [s.rank for s in statuses if s.phase is Phase.STARTING]
        return result(Phase.STARTING, f"starting ranks {waiting}", None)
    return result(Phase.RUNNING, "", None)


def status_to_json(status: ExecutionStatus) -> str:
    return json.dumps(asdict(status))


def status_from_json(text: str | bytes) -> ExecutionStatus:
    data = json.loads(text)
    workers = tuple(
        WorkerStatus(w["rank"], w["node"], Phase(w["phase"]), w["exit_code"], w["message"]) for w in data["workers"]
    )
    return ExecutionStatus(
        data["job_id"], data["attempt"], Phase(data["phase"]), workers, data["message"], tuple(data["last_log_lines"])
    )
