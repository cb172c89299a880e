"""The end-to-end tests' entrypoint: reports where it runs from inside the worker, and records its life.

Every rank prints one ``PROBE {json}`` line with the environment the executor gave it (node, devices, rank...),
appends ``start`` and ``end`` records (JSON lines: job, attempt, rank, time) to ``--record``, sleeps, and exits
— with ``--code`` on ``--exit-rank`` after printing a few lines. SIGTERM (cancel, preemption, walltime) is
recorded as an ``end`` with the signal, so a test can check that no two attempts of a job ever overlapped.
Standard library only: it starts in a few tens of milliseconds.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time

KEYS = (
    "RANK",
    "LOCAL_RANK",
    "WORLD_SIZE",
    "LOCAL_WORLD_SIZE",
    "NODE_RANK",
    "MASTER_ADDR",
    "MASTER_PORT",
    "ZHISUAN_JOB_ID",
    "ZHISUAN_ATTEMPT",
    "ZHISUAN_NODE",
    "ZHISUAN_MODEL",
    "ZHISUAN_CHECKPOINT_PATH",
    "CUDA_VISIBLE_DEVICES",
    "ASCEND_RT_VISIBLE_DEVICES",
    "ZHISUAN_VISIBLE_DEVICES",
)


def record(path: str | None, event: str, **extra: object) -> None:
    if not path:
        return
    line = {
        "event": event,
        "job": os.environ.get("ZHISUAN_JOB_ID"),
        "attempt": int(os.environ.get("ZHISUAN_ATTEMPT", "-1")),
        "rank": int(os.environ.get("RANK", "-1")),
        "t": time.time(),
        "pid": os.getpid(),
        **extra,
    }
    # One short write with O_APPEND: lines of concurrent workers never interleave.
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, (json.dumps(line) + "\n").encode())
    finally:
        os.close(fd)


def wait_for_all_ranks(path: str | None, timeout_s: float) -> None:
    """Until every rank of this attempt has recorded its start (at most ``timeout_s``)."""
    deadline = time.monotonic() + timeout_s
    world = int(os.environ.get("WORLD_SIZE", "1"))
    me = (os.environ.get("ZHISUAN_JOB_ID"), int(os.environ.get("ZHISUAN_ATTEMPT", "-1")))
    while path and time.monotonic() < deadline:
        try:
            with open(path) as f:
                lines = [json.loads(line) for line in f if line.strip()]
        except (OSError, ValueError):
            lines = []
        ranks = {r["rank"] for r in lines if r["event"] == "start" and (r["job"], r["attempt"]) == me}
        if len(ranks) >= world:
            return
        time.sleep(0.05)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sleep", type=float, default=0.0)
    parser.add_argument("--exit-rank", type=int, default=-1)
    parser.add_argument("--code", type=int, default=0)
    parser.add_argument(
        "--fail-after", type=float, default=0.0, help="seconds --exit-rank waits for every rank to start, then fails"
    )
    parser.add_argument("--record")
    args = parser.parse_args()

    def on_term(signum: int, _frame: object) -> None:
        record(args.record, "end", signal=signum)
        print(f"rank {os.environ.get('RANK')} stopped by signal {signum}", flush=True)
        os._exit(128 + signum)

    signal.signal(signal.SIGTERM, on_term)
    record(args.record, "start")
    print("PROBE " + json.dumps({k: os.environ.get(k) for k in KEYS}), flush=True)
    if int(os.environ.get("RANK", "0")) == args.exit_rank:
        wait_for_all_ranks(args.record, args.fail_after)
        print("loading shard 7 of the data set", flush=True)
        print("the data file is corrupt", flush=True)
        record(args.record, "end", code=args.code)
        return int(args.code)
    time.sleep(args.sleep)
    record(args.record, "end", code=0)
    print("probe done", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
