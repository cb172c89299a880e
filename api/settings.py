"""Server settings, read from ``ZHISUAN_*`` environment variables in one place.

    >>> s = Settings.from_env({"ZHISUAN_RATE_LIMIT": "20/s burst 40", "ZHISUAN_MAX_BODY_BYTES": "2048"})
    >>> (s.rate_per_s, s.rate_burst, s.max_body_bytes)
    (20.0, 40.0, 2048)
    >>> parse_rate_limit("100 300")
    (100.0, 300.0)
    >>> parse_rate_limit("off")
    (0.0, 0.0)

=================================  ==================================================================
``ZHISUAN_DATABASE_URL``            ``sqlite:///./.zhisuan/zhisuan.db`` (directory created); or ``postgresql://…``
``ZHISUAN_MAX_BODY_BYTES``          request body limit, default 1 MiB
``ZHISUAN_RATE_LIMIT``              per token: ``"50/s burst 200"``, ``"50 200"`` or ``off``
``ZHISUAN_POLICY_FILE``             seeds the first policy version on an empty database (``seeds/policy.yaml``)
``ZHISUAN_CLUSTER_FILE``            optional: nodes of a cluster file, loaded as ``source=file`` nodes
``ZHISUAN_HEARTBEAT_INTERVAL_S``    shortest heartbeat interval asked of agents (default 5); a node is down when
                                    its lease (3 intervals) runs out
``ZHISUAN_HEARTBEAT_RATE``          heartbeats per second the API plans for (default 500): the interval grows with the
                                    fleet past ``rate × interval`` nodes (10,000 nodes: 20 s), up to 60 s
``ZHISUAN_TELEMETRY_INTERVAL_S``    shortest interval between two telemetry samples of a node (default 30; 6 heartbeat
                                    intervals once those are longer); Prometheus scrapes the agents for time series
``ZHISUAN_AGENT_IN_FLIGHT``         agent requests one API process serves at once; more are answered 429 with a
                                    jittered Retry-After (default 64): a herd re-registering is admitted, not fatal
``ZHISUAN_REDIS_URL``               Redis for the per-token rate limits shared by several API processes
``ZHISUAN_WORKERS``                 API processes serving one port (``zhisuan server --workers N``; default 1)
``ZHISUAN_TOKEN_CACHE_S``           how long a token lookup is cached in a process (default 60; a revocation reaches
                                    every process through the change feed within a second)
``ZHISUAN_CACHE_REFRESH_S``         how often policy and inventory are re-read (default 1)
``ZHISUAN_BUSY_TIMEOUT_MS``         SQLite busy timeout (default 5000)
``ZHISUAN_BATCH_LINGER_MS``         group commit: how long the writer waits to fill a batch (default 2)
``ZHISUAN_ADMIN_TOKEN_FILE``        where bootstrap writes the first admin token (mode 0600), if set
``ZHISUAN_FAST_SUBMIT``             ``0`` serves POST /v1/jobs through FastAPI instead of the ASGI fast path
``ZHISUAN_INVENTORY``               where nodes come from besides agents: ``file`` (default: the cluster file, bare
                                    metal) or ``kubernetes`` (Nodes listed and watched, published to the database)
``ZHISUAN_KUBECONFIG``              kubeconfig to reach the API server; unset: the pod's service account inside a
                                    cluster, else ``$KUBECONFIG`` or ``~/.kube/config``
``ZHISUAN_KUBE_CONTEXT``            the kubeconfig context (default: its current one)
``ZHISUAN_KUBE_NODE_SELECTOR``      label selector of the Nodes to take (default: all)
``ZHISUAN_INVENTORY_PUBLISH_S``     the Kubernetes inventory is published at every change and at least this often
                                    (default 30); three missed publishes make it stale in ``GET /v1/inventory``
``ZHISUAN_SIZE_WORKER_GROUPS``      ``1``: the scheduler sizes the KubeRay worker groups itself (needs
                                    ``ZHISUAN_INVENTORY=kubernetes``; the RayCluster's in-tree autoscaler stays off)
``ZHISUAN_RAYCLUSTER``              ``namespace/name`` of that RayCluster (default ``zhisuan/zhisuan``)
``ZHISUAN_SCALE_GRACE_S``           a worker node idle this long goes (default 600)
``ZHISUAN_SCALE_POLL_S``            how often the RayCluster and its Pods are read (default 2)
=================================  ==================================================================
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path

from scheduler.catalog import SEEDS_DIR

DEFAULT_DATABASE_URL = "sqlite:///./.zhisuan/zhisuan.db"
DEFAULT_POLICY_FILE = SEEDS_DIR / "policy.yaml"
#: Where nodes may come from besides their agents (``ZHISUAN_INVENTORY``).
INVENTORIES = ("file", "kubernetes")
_RATE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(?:/\s*s)?\s*(?:,?\s*(?:burst)?\s*(\d+(?:\.\d+)?))?\s*$")


def parse_rate_limit(text: str) -> tuple[float, float]:
    """``(rate per second, burst)``; ``(0, 0)`` turns rate limiting off."""
    if text.strip().lower() in ("", "off", "none", "0"):
        return 0.0, 0.0
    match = _RATE.match(text)
    if match is None:
        raise ValueError(f"ZHISUAN_RATE_LIMIT {text!r}: write it like '50/s burst 200' or '50 200' or 'off'")
    rate = float(match.group(1))
    burst = float(match.group(2)) if match.group(2) else max(1.0, rate)
    if rate <= 0 or burst < 1:
        raise ValueError(f"ZHISUAN_RATE_LIMIT {text!r}: rate must be positive and burst at least 1")
    return rate, burst


def _flag(text: str, name: str) -> bool:
    value = text.strip().lower()
    if value in ("", "0", "false", "no", "off"):
        return False
    if value in ("1", "true", "yes", "on"):
        return True
    raise ValueError(f"{name}={text!r}: write 1 or 0")


@dataclass(frozen=True)
class Settings:
    database_url: str = DEFAULT_DATABASE_URL
    max_body_bytes: int = 1 << 20
    rate_per_s: float = 50.0
    rate_burst: float = 200.0
    policy_file: Path | None = DEFAULT_POLICY_FILE
    cluster_file: Path | None = None
    heartbeat_interval_s: float = 5.0
    heartbeat_rate_per_s: float = 500.0
    heartbeat_interval_max_s: float = 60.0
    telemetry_interval_s: float = 30.0
    agent_in_flight: int = 64
    redis_url: str | None = None
    workers: int = 1
    token_cache_s: float = 60.0
    cache_refresh_s: float = 1.0
    busy_timeout_ms: int = 5000
    batch_linger_ms: float = 2.0
    batch_max: int = 512
    admin_token_file: Path | None = None
    retry_after_s: int = 2
    fast_submit: bool = True
    inventory: str = "file"
    kubeconfig: Path | None = None
    kube_context: str | None = None
    kube_node_selector: str | None = None
    inventory_publish_s: float = 30.0
    size_worker_groups: bool = False
    raycluster: str = "zhisuan/zhisuan"
    scale_grace_s: float = 600.0
    scale_poll_s: float = 2.0

    def __post_init__(self) -> None:
        if self.inventory not in INVENTORIES:
            raise ValueError(
                f"ZHISUAN_INVENTORY={self.inventory!r}: write one of {', '.join(INVENTORIES)} (--inventory on the "
                "command line)"
            )
        if self.size_worker_groups and self.inventory != "kubernetes":
            raise ValueError(
                "sizing worker groups (ZHISUAN_SIZE_WORKER_GROUPS, --size-worker-groups) needs the Kubernetes "
                "inventory: set ZHISUAN_INVENTORY=kubernetes (--inventory kubernetes)"
            )
        namespace, _, name = self.raycluster.partition("/")
        if not namespace or not name or "/" in name:
            raise ValueError(f"ZHISUAN_RAYCLUSTER={self.raycluster!r}: write it as namespace/name (zhisuan/zhisuan)")

    @property
    def raycluster_ref(self) -> tuple[str, str]:
        """``(namespace, name)`` of the RayCluster whose worker groups the scheduler sizes."""
        namespace, _, name = self.raycluster.partition("/")
        return namespace, name

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if env is None else env
        rate, burst = parse_rate_limit(env.get("ZHISUAN_RATE_LIMIT", "50/s burst 200"))

        def path(name: str, default: Path | None) -> Path | None:
            value = env.get(name)
            if value is None:
                return default
            return Path(value) if value.strip() else None

        def number(name: str, default: float) -> float:
            value = env.get(name)
            if value is None or not value.strip():
                return default
            try:
                parsed = float(value)
            except ValueError:
                raise ValueError(f"{name}={value!r} is not a number") from None
            if parsed < 0:
                raise ValueError(f"{name}={value!r} must not be negative")
            return parsed

        return cls(
            database_url=env.get("ZHISUAN_DATABASE_URL") or DEFAULT_DATABASE_URL,
            max_body_bytes=int(number("ZHISUAN_MAX_BODY_BYTES", 1 << 20)),
            rate_per_s=rate,
            rate_burst=burst,
            policy_file=path("ZHISUAN_POLICY_FILE", DEFAULT_POLICY_FILE),
            cluster_file=path("ZHISUAN_CLUSTER_FILE", None),
            heartbeat_interval_s=number("ZHISUAN_HEARTBEAT_INTERVAL_S", 5.0) or 5.0,
            heartbeat_rate_per_s=number("ZHISUAN_HEARTBEAT_RATE", 500.0) or 500.0,
            telemetry_interval_s=number("ZHISUAN_TELEMETRY_INTERVAL_S", 30.0),
            agent_in_flight=int(number("ZHISUAN_AGENT_IN_FLIGHT", 64)),
            redis_url=env.get("ZHISUAN_REDIS_URL") or None,
            workers=max(1, int(number("ZHISUAN_WORKERS", 1))),
            token_cache_s=number("ZHISUAN_TOKEN_CACHE_S", 60.0),
            cache_refresh_s=number("ZHISUAN_CACHE_REFRESH_S", 1.0) or 1.0,
            busy_timeout_ms=int(number("ZHISUAN_BUSY_TIMEOUT_MS", 5000)),
            batch_linger_ms=number("ZHISUAN_BATCH_LINGER_MS", 2.0),
            admin_token_file=path("ZHISUAN_ADMIN_TOKEN_FILE", None),
            fast_submit=env.get("ZHISUAN_FAST_SUBMIT", "1").strip().lower() not in ("0", "false", "no", "off"),
            inventory=(env.get("ZHISUAN_INVENTORY") or "file").strip().lower(),
            kubeconfig=path("ZHISUAN_KUBECONFIG", None),
            kube_context=env.get("ZHISUAN_KUBE_CONTEXT") or None,
            kube_node_selector=env.get("ZHISUAN_KUBE_NODE_SELECTOR") or None,
            inventory_publish_s=number("ZHISUAN_INVENTORY_PUBLISH_S", 30.0) or 30.0,
            size_worker_groups=_flag(env.get("ZHISUAN_SIZE_WORKER_GROUPS", ""), "ZHISUAN_SIZE_WORKER_GROUPS"),
            raycluster=(env.get("ZHISUAN_RAYCLUSTER") or "zhisuan/zhisuan").strip(),
            scale_grace_s=number("ZHISUAN_SCALE_GRACE_S", 600.0),
            scale_poll_s=number("ZHISUAN_SCALE_POLL_S", 2.0) or 2.0,
        )

    def heartbeat_interval(self, nodes: int) -> float:
        """The heartbeat interval for a fleet of ``nodes``, as Kubernetes sizes node leases: the configured one
        until the fleet would send more than ``heartbeat_rate_per_s``, then longer, up to the maximum::

            >>> s = Settings()
            >>> s.heartbeat_interval(100), s.heartbeat_interval(10_000), s.heartbeat_interval(100_000)
            (5.0, 20.0, 60.0)
        """
        longest = max(self.heartbeat_interval_max_s, self.heartbeat_interval_s)
        return min(max(self.heartbeat_interval_s, nodes / self.heartbeat_rate_per_s), longest)

    def telemetry_interval(self, heartbeat_interval_s: float) -> float:
        """How often a node sends a telemetry sample (the time series are Prometheus's: this is the latest)."""
        return max(self.telemetry_interval_s, 6 * heartbeat_interval_s)

    def with_(self, **changes: object) -> Settings:
        """A copy with some settings changed (tests, the CLI's flags)."""
        return replace(self, **changes)  # type: ignore[arg-type]
