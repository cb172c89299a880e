"""Sweeps: a grid of runs (scenario variants × policies × seeds) executed in parallel.

Backends: ``ray`` (each run a Ray task; ``address`` for an existing cluster, local Ray otherwise), ``process``
(a local process pool, the fallback while Ray is not installed), ``serial`` (in this process; tests, debugging).
``auto`` picks Ray when it can be imported, else the process pool::

    >>> from simulations.runner import RunSpec
    >>> from simulations.sweep import grid
    >>> specs = grid(RunSpec(cluster="c.yaml", trace="t.csv"), policies=["fgd", "binpack"], seeds=[1])
    >>> [(s.policy, s.seed) for s in specs]
    [('fgd', 1), ('binpack', 1)]

Every run is independent and deterministic, so results do not depend on the backend or the worker count; they
come back in the grid's order.
"""

from __future__ import annotations

import dataclasses
import importlib
import os
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from typing import Any

from simulations.runner import RunSpec, run, variants_of

BACKENDS = ("auto", "ray", "process", "serial")


def grid(
    base: RunSpec,
    *,
    policies: Sequence[str] = (),
    seeds: Sequence[int] = (),
    variants: Sequence[str | None] | None = None,
    orderings: Sequence[str] = (),
) -> list[RunSpec]:
    """The cross product of variants × orderings × policies × seeds over ``base`` (an empty axis keeps
    ``base``'s value)."""
    if variants is None and base.scenario:
        variants = list(variants_of(base.scenario))
    out: list[RunSpec] = []
    for variant in variants or [base.variant]:
        for ordering in orderings or [base.ordering]:
            for policy in policies or [base.policy]:
                for seed in seeds or [base.seed]:
                    extra = dict(base.extra)
                    if policies:
                        # An explicit policy axis overrides the scenario's own policy.
                        extra["policy_from_scenario"] = False
                    if orderings:
                        extra["ordering_from_scenario"] = False
                    out.append(
                        dataclasses.replace(
                            base, variant=variant, policy=policy, seed=seed, ordering=ordering, extra=extra
                        )
                    )
    return out


def _run_one(spec: RunSpec) -> dict[str, Any]:
    return run(spec)


def ray_available() -> bool:
    try:
        importlib.import_module("ray")
    except ImportError:
        return False
    return True


def run_sweep(
    specs: Sequence[RunSpec],
    *,
    backend: str = "auto",
    workers: int | None = None,
    address: str | None = None,
    on_result: Callable[[int, dict[str, Any]], None] | None = None,
) -> list[dict[str, Any]]:
    """Run every spec and return the results in order; ``on_result(index, result)`` as each completes."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown sweep backend {backend!r} (allowed: {', '.join(BACKENDS)})")
    if backend == "auto":
        backend = "ray" if ray_available() else "process"
    results: list[dict[str, Any] | None] = [None] * len(specs)
    if backend == "serial" or len(specs) <= 1:
        for i, spec in enumerate(specs):
            results[i] = _run_one(spec)
            if on_result is not None:
                on_result(i, results[i] or {})
    elif backend == "ray":
        _run_ray(specs, results, address, on_result)
    else:
        count = workers or min(len(specs), os.cpu_count() or 1)
        with ProcessPoolExecutor(max_workers=count) as pool:
            futures = {pool.submit(_run_one, spec): i for i, spec in enumerate(specs)}
            from concurrent.futures import as_completed

            for future in as_completed(futures):
                i = futures[future]
                results[i] = future.result()
                if on_result is not None:
                    on_result(i, results[i] or {})
    return [r or {} for r in results]


def _run_ray(
    specs: Sequence[RunSpec],
    results: list[dict[str, Any] | None],
    address: str | None,
    on_result: Callable[[int, dict[str, Any]], None] | None,
) -> None:
    """Each run is one Ray task (``num_cpus=1``); results are gathered as they finish.

    Ray is imported dynamically so that the package works (and type-checks) without it.
    """
    ray: Any = importlib.import_module("ray")
    if not ray.is_initialized():
        ray.init(address=address, ignore_reinit_error=True, log_to_driver=False)
    remote = ray.remote(num_cpus=1)(_run_one)
    pending = {remote.remote(spec): i for i, spec in enumerate(specs)}
    while pending:
        done, _ = ray.wait(list(pending), num_returns=1)
        for ref in done:
            i = pending.pop(ref)
            results[i] = ray.get(ref)
            if on_result is not None:
                on_result(i, results[i] or {})
