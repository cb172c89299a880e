"""FGD's fragmentation, computed from per-rank share tables, equals the paper's per-class definition."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from scheduler.model import MILLI
from scheduler.scoring import FGDScorer, TaskShape, WorkloadProfile


def by_definition(classes: list[tuple[TaskShape, float]], free: tuple[int, ...], cpu: int, mem: int) -> float:
    """For each class: all free milli is fragment if it cannot run here, else the milli on devices it cannot use."""
    total = sum(free)
    value = 0.0
    for shape, share in classes:
        if shape.whole:
            fits, usable = free.count(MILLI) >= shape.whole, MILLI
        elif shape.milli:
            fits, usable = max(free, default=0) >= shape.milli, shape.milli
        else:  # a CPU-only task uses no GPU: it strands the free GPUs only where it cannot run
            fits, usable = True, 0
        fits = fits and cpu >= shape.cpu_milli and mem >= shape.memory_mib
        value += share * (sum(f for f in free if f < usable) if fits else total)
    return value


shapes = st.builds(
    TaskShape,
    milli=st.sampled_from([0, 100, 250, 500, 810, 999]),
    whole=st.integers(0, 4),
    cpu_milli=st.sampled_from([0, 2000, 8000, 32000]),
    memory_mib=st.sampled_from([0, 1024, 65536]),
).map(lambda s: TaskShape(0, s.whole, s.cpu_milli, s.memory_mib) if s.whole else s)


@settings(max_examples=300, deadline=None)
@given(
    classes=st.lists(st.tuples(shapes, st.integers(1, 50)), min_size=1, max_size=12),
    nodes=st.lists(
        st.tuples(
            st.lists(st.sampled_from([0, 100, 190, 250, 500, 750, 1000]), min_size=1, max_size=8).map(tuple),
            st.integers(0, 40000),
            st.integers(0, 100000),
        ),
        min_size=1,
        max_size=6,
    ),
)
def test_fragmentation_equals_the_definition(
    classes: list[tuple[TaskShape, int]], nodes: list[tuple[tuple[int, ...], int, int]]
) -> None:
    weight = sum(w for _, w in classes)
    profile = WorkloadProfile()
    profile.classes = [(shape, w / weight) for shape, w in classes]
    scorer = FGDScorer(profile)
    for free, cpu, mem in nodes * 2:  # the second round is answered from the cache
        expected = by_definition(profile.classes, free, cpu, mem)
        assert abs(scorer.fragmentation(free, cpu, mem) - expected) <= 1e-6 * max(1.0, expected)


def test_cpu_only_tasks_strand_free_gpus_only_where_their_cpu_is_short() -> None:
    profile = WorkloadProfile()
    profile.classes = [(TaskShape(milli=0, whole=0, cpu_milli=8000, memory_mib=0), 1.0)]
    scorer = FGDScorer(profile)
    assert scorer.fragmentation((MILLI, MILLI, 500), 16000, 0) == 0.0
    assert scorer.fragmentation((MILLI, MILLI, 500), 4000, 0) == 2500.0


def test_pack_weight_adds_a_best_fit_pull_to_the_fragmentation_growth() -> None:
    from scheduler.model import Job, Node
    from scheduler.state import ClusterState

    state = ClusterState([Node(id="n", model="A100", devices=4, cpu_milli=64000, memory_mib=256000)])
    ns = state.nodes["n"]
    job = Job(id="j", devices_per_worker=1)
    profile = WorkloadProfile()
    profile.classes = [(TaskShape(milli=0, whole=2, cpu_milli=0, memory_mib=0), 1.0)]
    light, heavy = FGDScorer(profile, pack_weight=0.01), FGDScorer(profile, pack_weight=0.5)
    (score_light, devices), (score_heavy, _) = light.evaluate(ns, job), heavy.evaluate(ns, job)  # type: ignore[misc]
    assert devices == (0,)
    # Fragmentation does not grow (three whole devices still host the 2-device class); 3,000 milli stay free.
    assert score_light == pytest.approx(0.01 * 3000) and score_heavy == pytest.approx(0.5 * 3000)
    with pytest.raises(ValueError, match="pack_weight must be positive"):
        FGDScorer(profile, pack_weight=0)
