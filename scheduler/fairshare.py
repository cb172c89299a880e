"""Fair share: weighted dominant-resource share on current usage plus decayed historical usage.

A tenant's current share is its dominant share over flavors (devices of each model over the cluster's devices of
that model, NCU over the cluster's NCU), divided by its weight. Its historical share is its decayed NCU-seconds
over everybody's, divided by its weight, with a configurable half-life (KAI's time-based fair share and Slurm's
fair-share factor decay the same way: ``U = 0.5 ** (Δt / half_life) · A``). Ordering uses the mix
``(1 - history_weight) · current + history_weight · historical``; lower goes first.

    >>> history = UsageHistory(half_life_s=3600)
    >>> history.advance({}, now=0)
    >>> history.advance({"tenant:a": 10.0}, now=3600)     # 10 NCU for an hour, decaying as it accrues
    >>> round(history.value("tenant:a"))
    25969
    >>> round(history.value("tenant:a", now=7200))         # an hour later: halved
    12984
"""

from __future__ import annotations

import math

from scheduler.state import ClusterState
from scheduler.tenancy import NCU


class UsageHistory:
    """Decayed NCU-seconds per account; advanced by the core at each step with the usage since the last one."""

    def __init__(self, half_life_s: float) -> None:
        if half_life_s <= 0:
            raise ValueError("half_life_s must be positive")
        self.half_life_s = half_life_s
        self._value: dict[str, float] = {}
        self._at: float | None = None

    def _decay(self, dt: float) -> float:
        return math.pow(0.5, dt / self.half_life_s) if dt > 0 else 1.0

    def advance(self, ncu_by_account: dict[str, float], now: float) -> None:
        """Accrue ``ncu × elapsed`` for every account and decay everything to ``now``."""
        if self._at is None:
            self._at = now
            return
        dt = now - self._at
        if dt <= 0:
            return
        factor = self._decay(dt)
        for account in list(self._value):
            self._value[account] *= factor
        # Usage accrues over the interval; integrating the decay gives the exact decayed sum.
        accrual = self.half_life_s / math.log(2) * (1 - factor)
        for account, ncu in ncu_by_account.items():
            if ncu > 0:
                self._value[account] = self._value.get(account, 0.0) + ncu * accrual
        self._at = now

    def value(self, account: str, now: float | None = None) -> float:
        value = self._value.get(account, 0.0)
        if now is not None and self._at is not None:
            value *= self._decay(now - self._at)
        return value

    def total(self, prefix: str) -> float:
        return sum(v for k, v in self._value.items() if k.startswith(prefix))

    def snapshot(self) -> dict[str, float]:
        return dict(self._value)


class FairShare:
    """Computes ordering keys from a state's usage and the history."""

    def __init__(self, history: UsageHistory, history_weight: float) -> None:
        if not 0 <= history_weight <= 1:
            raise ValueError("history_weight must be within [0, 1]")
        self.history = history
        self.history_weight = history_weight
        self._capacity: dict[str, float] = {}
        self._capacity_epoch = -1

    def capacities(self, state: ClusterState, ncu_capacity: float) -> dict[str, float]:
        if self._capacity_epoch != id(state.pools):
            self._capacity = {
                model: sum(p.capacity_milli for p in pools) / 1000 for model, pools in state.pools_by_model.items()
            }
            self._capacity[NCU] = ncu_capacity
            self._capacity_epoch = id(state.pools)
        return self._capacity

    def current(self, state: ClusterState, account: str, capacity: dict[str, float]) -> float:
        usage = state.usage.get(account)
        if not usage:
            return 0.0
        return max((amount / capacity[f] for f, amount in usage.items() if capacity.get(f)), default=0.0)

    def key(
        self,
        state: ClusterState,
        account: str,
        weight: float,
        capacity: dict[str, float],
        history_total: float,
    ) -> float:
        current = self.current(state, account, capacity)
        historical = self.history.value(account) / history_total if history_total > 0 else 0.0
        return ((1 - self.history_weight) * current + self.history_weight * historical) / weight
