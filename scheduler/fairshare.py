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
from collections.abc import Iterable, Mapping

from scheduler.model import Job
from scheduler.state import ClusterState
from scheduler.tenancy import NCU, QueuePolicy, tenant_account, user_account


class UsageHistory:
    """Decayed NCU-seconds per account, accrued from each account's current NCU rate.

    Values are stored in the units of a fixed reference time, so decaying everything costs nothing: the value
    at time ``t`` is ``stored × 2^-(t - ref)/half_life``. Accrual is lazy too: each account keeps its rate and
    the mark of a running integral where it was last settled, so :meth:`advance` touches only the accounts
    whose rate changed, and per-prefix totals are kept the same way. A step of the core therefore costs
    O(accounts that started or stopped something), not O(accounts).
    """

    #: Re-base the stored values before the growth factor loses float precision.
    _REBASE_AT = 1e150

    def __init__(self, half_life_s: float) -> None:
        if half_life_s <= 0:
            raise ValueError("half_life_s must be positive")
        self.half_life_s = half_life_s
        # Per account and per prefix ("tenant", "user", ...): settled value, rate, integral mark at settlement.
        self._accounts: dict[str, list[float]] = {}
        self._prefixes: dict[str, list[float]] = {}
        #: ∫ 2^((s - ref)/h) ds from the reference time to the last advance, in reference units.
        self._integral = 0.0
        self._ref = 0.0
        self._at: float | None = None

    def _growth(self, t: float) -> float:
        return math.pow(2.0, (t - self._ref) / self.half_life_s)

    def advance(self, rates: Mapping[str, float], now: float) -> None:
        """Move to ``now``; ``rates`` are the NCU in use of the accounts whose usage changed since the last call.

        The new rates count for the whole interval since the last call (usage is observed at steps); accounts not
        named keep accruing at their previous rate.
        """
        if self._at is None:
            self._at = self._ref = now
        for account, rate in rates.items():
            self._set_rate(account, max(rate, 0.0))
        dt = now - self._at
        if dt <= 0:
            return
        growth_now = self._growth(now)
        if growth_now > self._REBASE_AT:
            self._rebase(now)
            growth_now = 1.0
        self._integral += self.half_life_s / math.log(2) * (growth_now - self._growth(self._at))
        self._at = now

    def record(self, account: str, ncu: float, start: float, end: float) -> None:
        """Add usage that happened in ``[start, end]`` (e.g. read back from the ledger after a restart).

        Call it after the first :meth:`advance` and with ``end`` no later than the last one.

            >>> history = UsageHistory(half_life_s=3600)
            >>> history.advance({}, now=7200)
            >>> history.record("tenant:a", 10.0, start=0, end=3600)   # the same hour as in the module example
            >>> round(history.value("tenant:a"))
            12984
        """
        if self._at is None:
            raise ValueError("record() needs a reference time: call advance() first")
        if ncu <= 0 or end <= start:
            return
        added = ncu * self.half_life_s / math.log(2) * (self._growth(end) - self._growth(start))
        for entry in self._entries(account):
            entry[0] += added

    def accruing(self) -> list[str]:
        """Accounts with a non-zero rate."""
        return [account for account, entry in self._accounts.items() if entry[1] > 0]

    def _entries(self, account: str) -> tuple[list[float], list[float]]:
        """The account's entry and its prefix's total, created empty (settled now) when new."""
        prefix = account.split(":", 1)[0]
        entry = self._accounts.get(account)
        if entry is None:
            entry = self._accounts[account] = [0.0, 0.0, self._integral]
        total = self._prefixes.get(prefix)
        if total is None:
            total = self._prefixes[prefix] = [0.0, 0.0, self._integral]
        return entry, total

    def _set_rate(self, account: str, rate: float) -> None:
        entry, total = self._entries(account)
        delta = rate - entry[1]
        if delta == 0:
            return
        self._settle(entry)
        self._settle(total)
        entry[1] = rate
        total[1] += delta

    def _settle(self, entry: list[float]) -> None:
        entry[0] += entry[1] * (self._integral - entry[2])
        entry[2] = self._integral

    def _rebase(self, now: float) -> None:
        factor = 1.0 / self._growth(now)
        for entry in (*self._accounts.values(), *self._prefixes.values()):
            self._settle(entry)
            entry[0] *= factor
            entry[2] = 0.0
        self._integral = 0.0
        self._ref = now
        # The last advance now lies before the reference time; its growth is below one.

    def _stored(self, entry: list[float] | None) -> float:
        if entry is None:
            return 0.0
        return entry[0] + entry[1] * (self._integral - entry[2])

    def value(self, account: str, now: float | None = None) -> float:
        at = now if now is not None else self._at
        if at is None:
            return 0.0
        return self._stored(self._accounts.get(account)) / self._growth(at)

    def total(self, prefix: str) -> float:
        """Sum over accounts named ``prefix:...``, at the last advance."""
        if self._at is None:
            return 0.0
        return self._stored(self._prefixes.get(prefix.rstrip(":"))) / self._growth(self._at)


class FairShare:
    """Computes ordering keys from a state's usage and the history."""

    def __init__(self, history: UsageHistory, history_weight: float) -> None:
        if not 0 <= history_weight <= 1:
            raise ValueError("history_weight must be within [0, 1]")
        self.history = history
        self.history_weight = history_weight

    @staticmethod
    def capacities(state: ClusterState, ncu_capacity: float) -> dict[str, float]:
        """The denominators of dominant shares: installed devices per model, and the cluster's NCU."""
        capacity: dict[str, float] = {model: float(n) for model, n in state.devices_by_model.items()}
        capacity[NCU] = ncu_capacity
        return capacity

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
        current: float | None = None,
    ) -> float:
        """Weighted mix of current dominant share (``current`` if the caller already knows it) and history."""
        if current is None:
            current = self.current(state, account, capacity)
        historical = self.history.value(account) / history_total if history_total > 0 else 0.0
        return ((1 - self.history_weight) * current + self.history_weight * historical) / weight


class ShareBook:
    """The fair-share keys of one step, and each account's dominant share kept *across* steps.

    A key is computed once per account per step; an account's dominant share of current usage is kept until its
    usage changes (a start or preemption, or the state's ``usage_touched``) or installed capacity does, so a step
    over a long queue costs O(accounts that changed), not O(accounts)::

        >>> from scheduler.model import Job
        >>> from scheduler.state import ClusterState
        >>> from scheduler.tenancy import empty_policy
        >>> book = ShareBook(FairShare(UsageHistory(3600.0), 0.5))
        >>> book.begin(ClusterState(), empty_policy(), ncu_capacity=0.0)
        >>> book.share(Job(id="a", tenant="acme"), tenant_level=True)
        0.0
    """

    def __init__(self, fairshare: FairShare) -> None:
        self.fairshare = fairshare
        self.history = fairshare.history
        #: Account -> key, this step only.
        self._keys: dict[str, float] = {}
        #: Account -> dominant share of current usage, kept across steps (see the class docstring).
        self._dominant: dict[str, float] = {}
        self._capacity: dict[str, float] = {}
        self._state: ClusterState | None = None
        self._policy: QueuePolicy | None = None
        self._totals = (0.0, 0.0)

    def begin(self, state: ClusterState, policy: QueuePolicy, ncu_capacity: float) -> None:
        """Start a step on ``state`` (its history advanced to the step's now)."""
        if state is not self._state:
            self._dominant.clear()
        else:
            for account in state.usage_touched:
                self._dominant.pop(account, None)
        capacity = self.fairshare.capacities(state, ncu_capacity)
        if capacity != self._capacity:
            self._dominant.clear()
            self._capacity = capacity
        self._state, self._policy = state, policy
        self._keys = {}
        self._totals = (self.history.total("tenant:"), self.history.total("user:"))

    def share(self, job: Job, tenant_level: bool) -> float:
        """The fair-share key of the job's tenant (or of its user within the tenant): lower goes first."""
        account = tenant_account(job.tenant) if tenant_level else user_account(job.tenant, job.user)
        value = self._keys.get(account)
        if value is None:
            assert self._state is not None and self._policy is not None, "begin() a step first"
            if tenant_level:
                weight, total = self._policy.weight(job.tenant), self._totals[0]
            else:
                weight, total = 1.0, self._totals[1]
            current = self._dominant.get(account)
            if current is None:
                current = self._dominant[account] = self.fairshare.current(self._state, account, self._capacity)
            value = self._keys[account] = self.fairshare.key(
                self._state, account, weight, self._capacity, total, current
            )
        return value

    def touched(self, accounts: Iterable[str]) -> None:
        """These accounts' usage changed (a start): their keys and dominant shares are computed again."""
        for account in accounts:
            self._keys.pop(account, None)
            self._dominant.pop(account, None)

    def reset(self) -> None:
        """Every account's usage may have changed (preemption released victims): compute everything again."""
        self._keys.clear()
        self._dominant.clear()
