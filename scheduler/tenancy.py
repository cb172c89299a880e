"""Tenants, the queue tree and its quotas: validated configuration of who may use how much.

A center's queues form a tree: the center at the root, tenants below it, projects below tenants. Every queue
may set, per *flavor* (an accelerator model, counted in devices, or ``ncu``, counted in normalised compute
units), a **guarantee** (reserved, never lent), a **deserved** share (lent when idle, reclaimed by preemption), a
**limit** (hard cap) and a **borrowing limit** (how far above deserved it may go)::

    >>> from scheduler.tenancy import parse_policy
    >>> policy = parse_policy({
    ...     "tenants": {"acme": {"type": "enterprise", "tier": "premium", "weight": 2}},
    ...     "queues": {"acme": {"tenant": "acme", "quota": {"H100": {"deserved": 64, "limit": 128}}},
    ...                "acme/research": {"parent": "acme", "quota": {"ncu": {"guarantee": 10}}}},
    ... })
    >>> policy.path("acme/research")
    ('acme/research', 'acme')

The whole document is validated before it replaces the one in force: a cycle, a guarantee above the parent's, a
limit below a guarantee, an unknown flavor or a negative weight is a :class:`~scheduler.errors.ConfigError`
naming the queue and the field, and the previous configuration stays in force.
"""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from scheduler.catalog import Catalog, load_catalog
from scheduler.errors import ConfigError, load_yaml_mapping, validate_model
from scheduler.model import DomesticPreference, ServiceTier

NCU = "ncu"
ROOT = "center"

#: Orderings a queue may name (``scheduler.orderings`` implements them; the first is the default).
ORDERING_NAMES = ("drf", "fifo", "fifo-strict", "sjf", "srtf", "las", "qssf")


def check_ordering(name: object) -> str:
    """``name`` if it is an ordering, else a ``ValueError`` naming the allowed ones::

    >>> check_ordering("sjf")
    'sjf'
    >>> check_ordering("lifo")
    Traceback (most recent call last):
    ...
    ValueError: unknown ordering 'lifo' (allowed: drf, fifo, fifo-strict, sjf, srtf, las, qssf)
    """
    if not isinstance(name, str) or name not in ORDERING_NAMES:
        raise ValueError(f"unknown ordering {name!r} (allowed: {', '.join(ORDERING_NAMES)})")
    return name


class TenantType(StrEnum):
    GOVERNMENT = "government"
    ENTERPRISE = "enterprise"
    SME = "sme"
    INSTITUTE = "institute"
    UNIVERSITY = "university"
    INDIVIDUAL = "individual"


def tenant_account(tenant: str) -> str:
    """The usage account of a tenant: ``tenant_account("acme") == "tenant:acme"``."""
    return f"tenant:{tenant}"


def user_account(tenant: str, user: str) -> str:
    """The usage account of a user within a tenant: ``user_account("acme", "ann") == "user:acme/ann"``."""
    return f"user:{tenant}/{user}"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Tenant(_Strict):
    type: TenantType = TenantType.ENTERPRISE
    tier: ServiceTier = ServiceTier.STANDARD
    weight: float = Field(default=1.0, gt=0, description="fair-share weight")
    domestic: DomesticPreference = DomesticPreference.ANY
    max_active_jobs: int | None = Field(
        default=None, ge=0, description="jobs not yet finished (pending, starting, running) at once; None: no cap"
    )


class FlavorQuota(_Strict):
    """Amounts in devices for a model flavor, in NCU for ``ncu``. ``None`` means "not limited at this level"."""

    guarantee: float = Field(default=0.0, ge=0)
    deserved: float | None = Field(default=None, ge=0)
    limit: float | None = Field(default=None, ge=0)
    borrowing_limit: float | None = Field(default=None, ge=0)

    @model_validator(mode="after")
    def _ordered(self) -> FlavorQuota:
        if self.deserved is not None and self.deserved < self.guarantee:
            raise ValueError(f"deserved {self.deserved:g} is below guarantee {self.guarantee:g}")
        if self.limit is not None and self.limit < self.guarantee:
            raise ValueError(f"limit {self.limit:g} is below guarantee {self.guarantee:g}")
        if self.limit is not None and self.deserved is not None and self.limit < self.deserved:
            raise ValueError(f"limit {self.limit:g} is below deserved {self.deserved:g}")
        return self

    @property
    def nominal(self) -> float | None:
        """What the queue is entitled to without borrowing: deserved, else its guarantee if it set one."""
        if self.deserved is not None:
            return self.deserved
        return self.guarantee if self.guarantee else None


class QueueSpec(_Strict):
    """One queue. A top-level queue names its ``tenant``; a child inherits its parent's tenant."""

    parent: str | None = None
    tenant: str | None = None
    weight: float = Field(default=1.0, gt=0)
    quota: dict[str, FlavorQuota] = Field(default_factory=dict)
    domestic: DomesticPreference | None = None
    #: How this queue orders its pending jobs (inherited by children that name none; ``None`` everywhere: the
    #: core's configured ordering). See :mod:`scheduler.orderings`.
    ordering: str | None = None

    @field_validator("ordering")
    @classmethod
    def _known_ordering(cls, value: str | None) -> str | None:
        return None if value is None else check_ordering(value)


class Prices(_Strict):
    """Money per NCU-hour by service tier (the basic tier is free up to ``basic_free_ncu_hours`` a period)."""

    currency: str = "CNY"
    per_ncu_hour: dict[ServiceTier, float] = Field(
        default_factory=lambda: {ServiceTier.BASIC: 0.0, ServiceTier.STANDARD: 12.0, ServiceTier.PREMIUM: 18.0}
    )
    basic_free_ncu_hours: float = Field(default=100.0, ge=0)

    @model_validator(mode="after")
    def _non_negative(self) -> Prices:
        for tier, price in self.per_ncu_hour.items():
            if price < 0:
                raise ValueError(f"price for tier {tier.value} is negative")
        return self


class PolicyDocument(_Strict):
    tenants: dict[str, Tenant] = Field(default_factory=dict)
    queues: dict[str, QueueSpec] = Field(default_factory=dict)
    prices: Prices = Field(default_factory=Prices)


class QueuePolicy:
    """A validated queue tree: paths to the root, tenants, quotas and effective domestic policy per queue.

    Every job names a leaf-or-inner queue; a job naming no known queue falls into its tenant's top-level queue,
    and failing that into ``default`` (an unlimited queue of the center).
    """

    def __init__(self, document: PolicyDocument, catalog: Catalog, source: str | Path = "<policy>") -> None:
        self.source = str(source)
        self.document = document
        self.tenants = dict(document.tenants)
        self.queues: dict[str, QueueSpec] = dict(document.queues)
        self.prices = document.prices
        flavors = {NCU, *catalog.names}
        for name, spec in self.queues.items():
            if name == ROOT:
                raise ConfigError(source, f"queues.{name}", f"{ROOT!r} is the implicit root; pick another name")
            for flavor in spec.quota:
                if flavor not in flavors:
                    raise ConfigError(
                        source,
                        f"queues.{name}.quota.{flavor}",
                        "unknown flavor; use an accelerator model id or 'ncu'",
                        allowed=sorted(flavors),
                    )
            if spec.parent is not None and spec.parent not in self.queues:
                raise ConfigError(
                    source, f"queues.{name}.parent", f"unknown queue {spec.parent!r}", allowed=sorted(self.queues)
                )
        self._paths: dict[str, tuple[str, ...]] = {}
        for name in self.queues:
            self._paths[name] = self._walk(name, source)
        self._tenant_of: dict[str, str] = {}
        for name, path in self._paths.items():
            top = self.queues[path[-1]]
            tenant = top.tenant or path[-1]
            own = self.queues[name].tenant
            if own is not None and own != tenant:
                raise ConfigError(
                    source, f"queues.{name}.tenant", f"tenant {own!r} differs from its parent's tenant {tenant!r}"
                )
            if tenant not in self.tenants:
                self.tenants[tenant] = Tenant()
            self._tenant_of[name] = tenant
        self.children: dict[str | None, list[str]] = {}
        for name, spec in self.queues.items():
            self.children.setdefault(spec.parent, []).append(name)
        self._check_guarantees(source)
        self._tenant_queue = {self._tenant_of[p[-1]]: p[-1] for p in self._paths.values()}

    def _walk(self, name: str, source: str | Path) -> tuple[str, ...]:
        path = [name]
        seen = {name}
        current = self.queues[name].parent
        while current is not None:
            if current in seen:
                cycle = " -> ".join([*path, current])
                raise ConfigError(source, f"queues.{name}.parent", f"queues form a cycle: {cycle}")
            seen.add(current)
            path.append(current)
            current = self.queues[current].parent
        return tuple(path)

    def _check_guarantees(self, source: str | Path) -> None:
        for parent, kids in self.children.items():
            if parent is None:
                continue
            parent_quota = self.queues[parent].quota
            for flavor in {f for kid in kids for f in self.queues[kid].quota}:
                total = sum(self.queues[k].quota[flavor].guarantee for k in kids if flavor in self.queues[k].quota)
                mine = parent_quota.get(flavor)
                for kid in kids:
                    child = self.queues[kid].quota.get(flavor)
                    if child is None or mine is None:
                        continue
                    if mine.limit is not None and child.guarantee > mine.limit:
                        raise ConfigError(
                            source,
                            f"queues.{kid}.quota.{flavor}.guarantee",
                            f"{child.guarantee:g} is above the parent {parent!r}'s limit {mine.limit:g}",
                        )
                if mine is not None and total > mine.guarantee and mine.guarantee > 0:
                    raise ConfigError(
                        source,
                        f"queues.{parent}.quota.{flavor}.guarantee",
                        f"children guarantee {total:g} in total, above the parent's guarantee {mine.guarantee:g}",
                    )

    # ------------------------------------------------------------------------------------------ queries

    def resolve(self, queue: str, tenant: str) -> str | None:
        """The configured queue a job lands in: its own if known, else its tenant's top-level queue."""
        if queue in self.queues:
            return queue
        return self._tenant_queue.get(tenant)

    def path(self, queue: str) -> tuple[str, ...]:
        """Queue names from ``queue`` up to (not including) the root; ``()`` for an unknown queue."""
        return self._paths.get(queue, ())

    def tenant_of(self, queue: str) -> str | None:
        return self._tenant_of.get(queue)

    def quota(self, queue: str, flavor: str) -> FlavorQuota | None:
        spec = self.queues.get(queue)
        return spec.quota.get(flavor) if spec is not None else None

    def domestic(self, queue: str | None, tenant: str) -> DomesticPreference:
        """The strictest domestic policy of the tenant and every queue on the path."""
        order = [DomesticPreference.ANY, DomesticPreference.PREFERRED, DomesticPreference.REQUIRED]
        found = self.tenants.get(tenant, Tenant()).domestic
        for name in self.path(queue) if queue else ():
            spec = self.queues[name].domestic
            if spec is not None and order.index(spec) > order.index(found):
                found = spec
        return found

    def ordering(self, queue: str | None) -> str | None:
        """The ordering named by ``queue`` or the nearest ancestor that names one; ``None``: none does."""
        for name in self.path(queue) if queue else ():
            found = self.queues[name].ordering
            if found is not None:
                return found
        return None

    @property
    def orders_queues(self) -> bool:
        """Whether any queue names its own ordering (else the core's configured ordering applies everywhere)."""
        return any(spec.ordering is not None for spec in self.queues.values())

    def weight(self, tenant: str) -> float:
        return self.tenants.get(tenant, Tenant()).weight

    def tier(self, tenant: str) -> ServiceTier:
        return self.tenants.get(tenant, Tenant()).tier


def parse_policy(data: object, source: str | Path = "<policy>", catalog: Catalog | None = None) -> QueuePolicy:
    """Validate a policy document (tenants, queues, prices) as a whole."""
    document = validate_model(PolicyDocument, data, source)
    return QueuePolicy(document, catalog or load_catalog(), source)


def load_policy(path: str | Path, catalog: Catalog | None = None) -> QueuePolicy:
    return parse_policy(load_yaml_mapping(path), path, catalog)


def empty_policy(catalog: Catalog | None = None) -> QueuePolicy:
    """No tenants, no quotas: every job may use whatever is free (the default until operators configure one)."""
    return QueuePolicy(PolicyDocument(), catalog or load_catalog())
