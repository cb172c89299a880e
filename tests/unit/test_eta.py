"""ETA: the aggregate capacity plan against the exact fast-forward, and the plan's own guarantees."""

from __future__ import annotations

from collections.abc import Mapping

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from scheduler.core import CoreConfig, QueueingConfig, SchedulerCore
from scheduler.eta import aggregate_forecast, exact_forecast, forecast
from scheduler.model import Job, Node, PriorityClass
from scheduler.state import ClusterState, PoolState
from scheduler.tenancy import parse_policy


def nodes(model: str = "A100", count: int = 2, devices: int = 8, prefix: str = "n") -> list[Node]:
    return [
        Node(id=f"{prefix}{i}", model=model, devices=devices, cpu_milli=256_000, memory_mib=2_000_000)
        for i in range(count)
    ]


def core_with(policy: Mapping[str, object] | None = None, **queueing: object) -> SchedulerCore:
    config = CoreConfig(queueing=QueueingConfig(**queueing))  # type: ignore[arg-type]
    return SchedulerCore(config, policy=parse_policy(policy) if policy is not None else None)


def occupy(core: SchedulerCore, state: ClusterState, *jobs: Job) -> None:
    """Start ``jobs`` at t=0 (they must all fit)."""
    decisions = core.step(state, list(jobs), now=0.0)
    assert all(d.kind.value == "start" for d in decisions), decisions


# ---------------------------------------------------------------------------------------------- agreement


def test_aggregate_agrees_with_exact_on_a_fifo_queue_of_whole_nodes() -> None:
    core = core_with(ordering="fifo")
    state = ClusterState(nodes(count=2))
    occupy(core, state, Job(id="a", devices_per_worker=8, runtime_s=300), Job(id="b", devices_per_worker=8))
    waiting = [
        Job(id="c", devices_per_worker=8, runtime_s=200, submit_time=1),
        Job(id="d", devices_per_worker=8, runtime_s=100, submit_time=2),
        Job(id="e", devices_per_worker=4, workers=2, runtime_s=50, submit_time=3),
    ]
    exact = exact_forecast(core, state, waiting, now=10.0)
    planned = aggregate_forecast(core, state, waiting, now=10.0, resolution=0)
    assert exact.starts == planned.starts == {"c": 300.0, "d": 500.0, "e": 600.0}
    assert planned.method == "aggregate" and exact.method == "exact"
    assert planned.pools == exact.pools


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    running=st.lists(st.integers(1, 40), min_size=0, max_size=4),
    waiting=st.lists(st.integers(1, 40), min_size=1, max_size=6),
)
def test_aggregate_agrees_with_exact_for_equal_jobs_in_one_pool(running: list[int], waiting: list[int]) -> None:
    # Equal-sized jobs in FIFO order: whatever frees first goes to the oldest, so both forecasts must agree.
    core = core_with(ordering="fifo", preemption=False)
    state = ClusterState(nodes(count=4))
    occupy(core, state, *(Job(id=f"r{i}", devices_per_worker=8, runtime_s=60 * m) for i, m in enumerate(running)))
    jobs = [Job(id=f"w{i}", devices_per_worker=8, runtime_s=60 * m, submit_time=i) for i, m in enumerate(waiting)]
    assert (
        aggregate_forecast(core, state, jobs, now=0.0, resolution=0).starts
        == exact_forecast(core, state, jobs, now=0.0).starts
    )


def test_the_default_grid_is_late_by_at_most_one_step_never_early() -> None:
    core = core_with(ordering="fifo")
    state = ClusterState(nodes(count=1))
    occupy(core, state, Job(id="a", devices_per_worker=8, runtime_s=7_777))
    waiting = [Job(id="b", devices_per_worker=8, runtime_s=3_333)]
    exact = exact_forecast(core, state, waiting, now=0.0).starts["b"]
    planned = aggregate_forecast(core, state, waiting, now=0.0).starts["b"]
    assert exact is not None and planned is not None
    # 7,777 s out, the grid step is 1/8 of the distance rounded down to a power-of-two multiple of 60 s.
    assert exact <= planned <= exact + 960


def test_forecast_is_exact_for_short_queues_and_aggregate_for_long_ones() -> None:
    core = core_with()
    state = ClusterState(nodes(count=2))
    occupy(core, state, Job(id="a", devices_per_worker=8, runtime_s=600), Job(id="b", devices_per_worker=8))
    short = [Job(id="s", devices_per_worker=8, runtime_s=60)]
    long = [Job(id=f"l{i}", devices_per_worker=1, runtime_s=60, submit_time=i) for i in range(200)]
    assert forecast(core, state, short, now=0.0).method == "exact"
    result = forecast(core, state, long, now=0.0)
    assert result.method == "aggregate"
    assert result.complete and result.events == 200
    # Eight one-device jobs per minute once "a" ends ("b" never does); further out the grid coarsens (1/8).
    assert result.starts["l0"] == 600.0 and result.starts["l7"] == 600.0 and result.starts["l8"] == 660.0
    last = 600.0 + 60 * (199 // 8)
    assert last <= (result.starts["l199"] or 0) <= last * 1.25
    assert result.horizon == result.starts["l199"]


# ---------------------------------------------------------------------------------------------- semantics


def test_estimates_are_never_before_now_even_past_overdue_ends() -> None:
    core = core_with()
    state = ClusterState(nodes(count=1))
    occupy(core, state, Job(id="late", devices_per_worker=8, runtime_s=100))
    result = aggregate_forecast(core, state, [Job(id="next", devices_per_worker=8, runtime_s=10)], now=500.0)
    assert result.starts == {"next": 500.0}


def test_higher_priority_plans_first_whatever_the_submit_time() -> None:
    core = core_with()
    state = ClusterState(nodes(count=1))
    occupy(core, state, Job(id="a", devices_per_worker=8, runtime_s=600))
    low = Job(id="low", devices_per_worker=8, runtime_s=600, submit_time=1)
    high = Job(
        id="high", devices_per_worker=8, runtime_s=600, submit_time=2, priority=PriorityClass.PRODUCTION_INFERENCE
    )
    assert aggregate_forecast(core, state, [low, high], now=0.0, resolution=0).starts == {
        "low": 1200.0,
        "high": 600.0,
    }


def test_fair_share_interleaves_tenants_as_the_plan_goes() -> None:
    core = core_with()
    state = ClusterState(nodes(count=1))
    occupy(core, state, Job(id="a", devices_per_worker=8, runtime_s=60))
    # Tenant x submitted everything first; DRF still alternates once x has been planned something.
    jobs = [Job(id=f"x{i}", tenant="x", devices_per_worker=8, runtime_s=60, submit_time=i) for i in range(3)]
    jobs.append(Job(id="y0", tenant="y", devices_per_worker=8, runtime_s=60, submit_time=10))
    starts = aggregate_forecast(core, state, jobs, now=0.0, resolution=0).starts
    assert starts == {"x0": 60.0, "y0": 120.0, "x1": 180.0, "x2": 240.0}


def test_fair_share_interleaves_users_of_one_tenant_too() -> None:
    core = core_with()
    state = ClusterState(nodes(count=1))
    occupy(core, state, Job(id="a", devices_per_worker=8, runtime_s=60))
    jobs = [Job(id=f"u{i}", tenant="x", user="u", devices_per_worker=8, runtime_s=60, submit_time=i) for i in range(2)]
    jobs.append(Job(id="v0", tenant="x", user="v", devices_per_worker=8, runtime_s=60, submit_time=10))
    starts = aggregate_forecast(core, state, jobs, now=0.0, resolution=0).starts
    assert starts == {"u0": 60.0, "v0": 120.0, "u1": 180.0}


def test_no_estimate_behind_a_job_that_never_ends() -> None:
    core = core_with()
    state = ClusterState(nodes(count=1) + nodes("H100", count=1, prefix="h"))
    occupy(core, state, Job(id="forever", devices_per_worker=8, models=("A100",)))
    stuck = Job(id="stuck", devices_per_worker=8, models=("A100",), runtime_s=60)
    assert aggregate_forecast(core, state, [stuck], now=1.0).starts == {"stuck": None}
    # A pending job without an estimate holds its room for good: the next one has none either.
    endless = Job(id="endless", devices_per_worker=8, models=("H100",), submit_time=1)
    after = Job(id="after", devices_per_worker=8, models=("H100",), runtime_s=60, submit_time=2)
    elsewhere = Job(id="elsewhere", devices_per_worker=4, models=("A100", "H100"), runtime_s=60, submit_time=3)
    result = aggregate_forecast(core, state, [endless, after, elsewhere], now=1.0)
    assert result.starts == {"endless": 1.0, "after": None, "elsewhere": None}
    assert not result.complete


def test_gangs_wait_for_whole_nodes_not_for_free_devices() -> None:
    core = core_with()
    state = ClusterState(nodes(count=2))
    # Four devices stay busy on each node until t=1000 (the CPU they take keeps them apart); the other four
    # free up at t=100.
    occupy(
        core,
        state,
        *(Job(id=f"long{i}", devices_per_worker=4, cpu_milli_per_worker=200_000, runtime_s=1000) for i in range(2)),
        *(Job(id=f"short{i}", devices_per_worker=4, runtime_s=100, submit_time=1) for i in range(2)),
    )
    assert {state.running[f"long{i}"].placement.nodes for i in range(2)} == {("n0",), ("n1",)}
    gang = Job(id="gang", devices_per_worker=8, runtime_s=60)
    halves = Job(id="halves", workers=2, devices_per_worker=4, runtime_s=60)
    starts = aggregate_forecast(core, state, [gang, halves], now=0.0, resolution=0).starts
    assert starts == {"gang": 1000.0, "halves": 100.0}


def test_domestic_and_pinned_jobs_plan_on_their_pools_only() -> None:
    policy = {"queues": {"gov": {"tenant": "gov", "domestic": "required"}}}
    core = core_with(policy)
    state = ClusterState(nodes("H100", count=1, prefix="h") + nodes("Ascend910B", count=1, prefix="a"))
    occupy(
        core,
        state,
        Job(id="on-h100", devices_per_worker=8, models=("H100",), runtime_s=1000),
        Job(id="on-ascend", devices_per_worker=8, models=("Ascend910B",), runtime_s=5000),
    )
    h100_free, ascend_free = (state.running[j].expected_end or 0 for j in ("on-h100", "on-ascend"))
    assert h100_free < ascend_free
    anyone = Job(id="anyone", devices_per_worker=8, runtime_s=60)
    pinned = Job(id="pinned", devices_per_worker=8, models=("Ascend910B",), runtime_s=60, submit_time=1)
    domestic = Job(id="domestic", devices_per_worker=8, domestic="required", runtime_s=60, submit_time=2)
    by_queue = Job(id="by-queue", tenant="gov", queue="gov", devices_per_worker=8, runtime_s=60, submit_time=3)
    result = aggregate_forecast(core, state, [anyone, pinned, domestic, by_queue], now=0.0, resolution=0)
    assert result.pools["anyone"] == "default/H100" and result.starts["anyone"] == h100_free
    assert {result.pools[j] for j in ("pinned", "domestic", "by-queue")} == {"default/Ascend910B"}
    # One after the other on the Ascend node (tenant "gov" first: it uses nothing yet), none on the H100.
    starts = sorted(result.starts[j] or 0 for j in ("pinned", "domestic", "by-queue"))
    assert starts[0] == ascend_free < starts[1] < starts[2]
    assert result.starts["by-queue"] == ascend_free


def test_a_pool_the_queue_may_never_use_is_no_option() -> None:
    policy = {"queues": {"q": {"tenant": "t", "quota": {"H100": {"limit": 4}}}}}
    core = core_with(policy)
    state = ClusterState(nodes("H100", count=1, prefix="h") + nodes("A100", count=1, prefix="a"))
    occupy(core, state, Job(id="busy", devices_per_worker=8, models=("A100",), runtime_s=900))
    big = Job(id="big", tenant="t", queue="q", devices_per_worker=8, runtime_s=60)
    small = Job(id="small", tenant="t", queue="q", devices_per_worker=4, runtime_s=60)
    result = aggregate_forecast(core, state, [big, small], now=0.0, resolution=0)
    assert result.pools == {"big": "default/A100", "small": "default/H100"}
    assert result.starts == {"big": 900.0, "small": 0.0}


def test_running_jobs_in_the_pending_list_get_no_estimate() -> None:
    core = core_with()
    state = ClusterState(nodes(count=1))
    job = Job(id="a", devices_per_worker=8, runtime_s=60)
    occupy(core, state, job)
    assert aggregate_forecast(core, state, [job], now=0.0).starts == {"a": None}


# ---------------------------------------------------------------------------------------------- property

SIZES = [0.25, 0.5, 1, 2, 4, 8]


@st.composite
def scenarios(draw: st.DrawFn) -> tuple[SchedulerCore, ClusterState, list[Job]]:
    core = core_with(ordering=draw(st.sampled_from(["drf", "fifo"])), preemption=False)
    state = ClusterState(
        nodes("A100", count=draw(st.integers(1, 3)), prefix="a") + nodes("H100", count=draw(st.integers(0, 2)))
    )

    def job(prefix: str, i: int, endless: bool) -> Job:
        return Job(
            id=f"{prefix}{i}",
            tenant=draw(st.sampled_from(["x", "y", "z"])),
            workers=draw(st.integers(1, 3)),
            devices_per_worker=draw(st.sampled_from(SIZES)),
            models=draw(st.sampled_from([(), ("A100",), ("H100",)])),
            runtime_s=None if endless and draw(st.booleans()) else 60.0 * draw(st.integers(1, 120)),
            submit_time=float(i),
        )

    core.step(state, [job("r", i, True) for i in range(draw(st.integers(0, 8)))], now=0.0)
    pending = [job("p", i, True) for i in range(draw(st.integers(1, 25)))]
    return core, state, pending


def load(job: Job, pool: PoolState) -> tuple[int, int]:
    """Milli-devices, and workers that need a whole node of ``pool``."""
    return job.total_device_milli, job.workers if job.whole_devices == pool.max_devices else 0


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(scenario=scenarios(), now=st.sampled_from([0.0, 30.0, 4000.0]), resolution=st.sampled_from([0.0, 1 / 16]))
def test_the_plan_never_books_more_than_a_pool_holds(
    scenario: tuple[SchedulerCore, ClusterState, list[Job]], now: float, resolution: float
) -> None:
    core, state, pending = scenario
    result = aggregate_forecast(core, state, pending, now=now, resolution=resolution)
    # Intervals per pool: running jobs from now until their estimated end, planned ones for their runtime there.
    intervals: dict[str, list[tuple[float, float, int, int]]] = {pool: [] for pool in state.pools}
    for running in state.running.values():
        end = running.expected_end if running.expected_end is not None else float("inf")
        intervals[running.placement.pool].append(
            (now, max(end, now), *load(running.job, state.pools[running.placement.pool]))
        )
    for job in pending:
        start = result.starts[job.id]
        if start is None:
            continue
        assert start >= now
        pool = state.pools[result.pools[job.id]]
        rel = core.throughput.relative(pool.model, job.job_class)
        end = start + job.runtime_s / rel if job.runtime_s is not None else float("inf")
        intervals[pool.id].append((start, end, *load(job, pool)))
    for pool_id, spans in intervals.items():
        pool = state.pools[pool_id]
        for t in {s for s, _, _, _ in spans}:
            active = [(milli, whole) for s, e, milli, whole in spans if s <= t < e]
            assert sum(milli for milli, _ in active) <= pool.capacity_milli, (pool_id, t, active)
            # Workers as large as a node each need a node of their own.
            assert sum(whole for _, whole in active) <= len(pool.nodes), (pool_id, t, active)
    assert set(result.starts) == {job.id for job in pending}


def test_exact_forecast_survives_a_job_started_and_reclaimed_in_one_step() -> None:
    # With no minimum runtime, "a" starts borrowing the whole node and "b" (within its deserved share) reclaims
    # it in the same step; "a" waits again and its start is the one after "b" ends.
    policy = parse_policy(
        {
            "tenants": {"a": {"type": "university"}, "b": {"type": "university"}},
            "queues": {
                "a": {"tenant": "a", "quota": {"A100": {"deserved": 4, "limit": 8}}},
                "b": {"tenant": "b", "quota": {"A100": {"deserved": 4, "limit": 8}}},
            },
        }
    )
    jobs = [
        Job(id="a1", tenant="a", queue="a", devices_per_worker=8, runtime_s=100),
        Job(id="b1", tenant="b", queue="b", devices_per_worker=4, runtime_s=100),
    ]
    node = Node(id="n0", model="A100", devices=8, cpu_milli=256000, memory_mib=2_000_000)
    probe = SchedulerCore(CoreConfig(queueing=QueueingConfig(min_runtime_s=0)), policy=policy)
    kinds = [(d.kind.value, d.job_id) for d in probe.step(ClusterState([node]), jobs, 0.0)]
    assert kinds == [("start", "a1"), ("preempt", "a1"), ("start", "b1")]
    core = SchedulerCore(CoreConfig(queueing=QueueingConfig(min_runtime_s=0)), policy=policy)
    result = exact_forecast(core, ClusterState([node]), jobs, 0.0)
    assert result.complete and result.starts["b1"] == 0.0
    assert result.starts["a1"] == 100.0  # when b1 ends
