"""Live vs simulated, small: ``benchmarks/fidelity.py`` with 20 jobs (about a minute of arrivals and drain) through the
real product (local Ray cluster, API, agents, scheduler service) and replayed in the simulator.

The full benchmark (300 jobs) is in ``benchmarks/README.md``; this checks the pipeline end to end and that a
small run agrees loosely (20 jobs on a shared machine: a handful of jobs decide the means).
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "benchmarks"))

import fidelity  # noqa: E402

pytestmark = pytest.mark.slow


def test_live_and_simulated_runs_of_one_mix_agree(tmp_path: Path) -> None:
    mix = fidelity.job_mix(20)
    assert {j.kind for j in mix} == {"training", "inference"} and any(j.workers > 1 for j in mix)
    live = fidelity.live_run(mix, tmp_path, interval_s=0.2, eta_every_s=2.0, timeout_s=240.0)
    # Every job ran to the end, with its decision, its running event and its end recorded through the API.
    assert {job.state for job in live.jobs.values()} == {"succeeded"}, {n: j.state for n, j in live.jobs.items()}
    for job in live.jobs.values():
        assert job.starts and job.running and job.end is not None and job.starts[0] >= job.submitted
    latency = fidelity.launch_latency(mix, live)
    assert 0.0 < latency["decision_to_running_mean_s"] < 5.0
    period = live.interval_s
    replays = [
        fidelity.replay(mix, live, tmp_path, max(latency["run_overhead_mean_s"] - period / 2, 0.0), period, phase)
        for phase in (0.0, period / 2)
    ]
    for sim in replays:
        assert set(sim["jobs"]) == set(live.jobs) and all(r["end"] is not None for r in sim["jobs"].values())
    comparisons = [fidelity.compare(live, sim) for sim in replays]
    assert all(c["jobs_compared"] == 20 for c in comparisons)
    for what in ("wait", "jct"):
        live_mean = comparisons[0][what]["live_mean_s"]
        sim_mean = sum(c[what]["sim_mean_s"] for c in comparisons) / len(comparisons)
        # Loose on 20 jobs: JCTs are tens of seconds, a wait shifts by whole runtimes when one gang moves.
        assert abs(sim_mean - live_mean) <= 0.25 * comparisons[0]["jct"]["live_mean_s"], (what, comparisons)
    # What `zhisuan eta` showed: a band around the forecast whenever there was one.
    shown = [b for b in live.bands if b[1] is not None]
    assert shown, "no pending job had a forecast"
    for asked, start, earliest, latest in shown:
        assert start is not None and earliest is not None and latest is not None
        # From the forecast back (never before the moment the server answered, a little after `asked`) to after it.
        assert asked - 1.0 <= earliest <= max(start, asked + 1.0) and start <= latest
