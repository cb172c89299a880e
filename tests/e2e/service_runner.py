"""The scheduler service alone, in its own process, for the crash tests (they ``kill -9`` it).

It is what ``zhisuan server`` runs beside the API, with the e2e deployment's configuration::

    python tests/e2e/service_runner.py --database-url sqlite:///... --ray-address 10.0.0.5:6379 --holder gen1

Every cycle that did something prints one JSON line (``{"holder", "term", "leader", "started", ...}``) so the
tests can tell which instance scheduled what. ``--freeze-before-launch NAME`` stops the process with SIGSTOP
right before it launches a job named NAME — after the START was committed, before anything ran: the test then
``kill -9`` s it exactly between "persist" and "act". SIGTERM is a clean stop (the leader lock is released).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import threading
from typing import Any

from e2e_support import CORE_CONFIG, HEARTBEAT_INTERVAL_S, service_config

from api.db import make_engine
from api.service_store import SqlServiceStore
from scheduler.core import SchedulerCore
from scheduler.live.executors.ray.executor import RayExecutor
from scheduler.live.service import CycleReport, SchedulerService


class RunnerService(SchedulerService):
    freeze_before_launch: str | None = None

    def _launch(self, active: Any, now: float, report: CycleReport) -> None:
        if self.freeze_before_launch is not None and active.spec.name == self.freeze_before_launch:
            emit({"frozen": active.job_id, "holder": self.config.holder, "attempt": active.attempt})
            os.kill(os.getpid(), signal.SIGSTOP)
        super()._launch(active, now, report)

    def cycle(self) -> CycleReport:
        was = self.term
        report = super().cycle()
        busy = report.started or report.finished or report.requeued or report.preempted or report.cancelled
        if busy or report.orphans_stopped or was != self.term:
            emit(
                {
                    "holder": self.config.holder,
                    "term": self.term,
                    "leader": report.leader,
                    "started": report.started,
                    "finished": report.finished,
                    "requeued": report.requeued,
                    "cancelled": report.cancelled,
                    "orphans_stopped": report.orphans_stopped,
                }
            )
        return report


def emit(line: dict[str, Any]) -> None:
    print(json.dumps(line), flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--database-url", required=True)
    parser.add_argument("--ray-address", required=True)
    parser.add_argument("--holder", required=True)
    parser.add_argument("--log-dir", required=True)
    parser.add_argument("--freeze-before-launch")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s", stream=sys.stdout)

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    engine = make_engine(args.database_url)
    executor = RayExecutor(args.ray_address, log_dir=args.log_dir)
    store = SqlServiceStore(engine, heartbeat_interval_s=HEARTBEAT_INTERVAL_S)
    service = RunnerService(store, executor, service_config(args.holder), core=SchedulerCore(CORE_CONFIG))
    service.freeze_before_launch = args.freeze_before_launch
    emit({"holder": args.holder, "pid": os.getpid(), "ready": True})
    try:
        service.run(stop)
    finally:
        service.release_lock()
        executor.close()
        engine.dispose()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
