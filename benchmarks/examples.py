"""The runnable examples, again and again: do they exit cleanly every time?

Starts the product as ``zhisuan up`` does (a real local Ray cluster of ``seeds/clusters/local.yaml``, the API on
SQLite, the agents, the scheduler service), submits one example job spec through the SDK ``--runs`` times in a
row, waits for each to end, and prints JSON: how many runs succeeded on their first attempt, how many were retried
(a rank that died after training, for instance), how long each took, and the last log lines of any run that did not
end cleanly::

    .venv/bin/python benchmarks/examples.py                                  # the 4-worker DDP gang, 20 runs
    .venv/bin/python benchmarks/examples.py --spec seeds/examples/train-1worker.yaml --runs 5

The target (issue 14): 20 runs of the gang in a row, none retried.
"""

from __future__ import annotations

import argparse
import json
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))

from api.client import ZhisuanClient  # noqa: E402
from api.settings import Settings  # noqa: E402
from api.up import developer_login, running  # noqa: E402
from scheduler.live.service import ServiceConfig  # noqa: E402
from scheduler.spec import load_spec  # noqa: E402


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--spec", type=Path, default=ROOT / "seeds" / "examples" / "ddp-gang.yaml")
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds one run may take")
    args = parser.parse_args()
    spec = load_spec(args.spec)
    data = spec.model_dump(mode="json", exclude_unset=True)
    working_dir = spec.runtime_env.working_dir
    if working_dir is not None and not Path(working_dir).is_absolute():
        # As `zhisuan submit` does: a relative working_dir means the repository root here.
        data["runtime_env"] = {**data.get("runtime_env", {}), "working_dir": str(ROOT / working_dir)}
    result: dict[str, Any] = {"benchmark": "example runs in a row", "spec": str(args.spec), "runs": args.runs}
    rows: list[dict[str, Any]] = []
    began = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="zs-examples-") as tmp:
        settings = Settings(database_url=f"sqlite:///{tmp}/zhisuan.db", rate_per_s=0.0, rate_burst=0.0)
        with running(
            settings,
            port=free_port(),
            cluster_file=ROOT / "seeds" / "clusters" / "local.yaml",
            service_config=ServiceConfig(),
            log_dir=str(Path(tmp) / "logs"),
        ) as run:
            result["start_s"] = round(time.perf_counter() - began, 1)
            assert run.admin_token is not None
            with ZhisuanClient(run.url, developer_login(run.url, run.admin_token)) as client:
                for i in range(args.runs):
                    data["name"] = f"{spec.name}-{i}"
                    submitted = time.monotonic()
                    job = client.wait(client.submit(data).id, until="terminal", timeout=args.timeout, poll_s=0.5)
                    row: dict[str, Any] = {
                        "run": i,
                        "state": str(job.state),
                        "attempt": job.attempt,
                        "seconds": round(time.monotonic() - submitted, 1),
                    }
                    if job.state != "succeeded" or job.attempt:
                        row["events"] = [f"{e.kind}: {e.message[:300]}" for e in client.events(job.id)]
                    rows.append(row)
                    print(json.dumps(row), file=sys.stderr, flush=True)
    clean = [r for r in rows if r["state"] == "succeeded" and r["attempt"] == 0]
    result.update(
        {
            "succeeded_first_attempt": len(clean),
            "retried": sum(1 for r in rows if r["attempt"]),
            "failed": sum(1 for r in rows if r["state"] != "succeeded"),
            "seconds_p50": round(statistics.median(r["seconds"] for r in rows), 1) if rows else None,
            "not_clean": [r for r in rows if r not in clean],
            "target_met": len(clean) == args.runs,
            "total_s": round(time.perf_counter() - began, 1),
        }
    )
    print(json.dumps(result, indent=2))
    return 0 if result["target_met"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
