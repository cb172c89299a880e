"""What the executor keeps in Ray's GCS key-value store, so that a new executor (after a service restart) finds
every attempt: one ``launch`` record per attempt (its nodes, log paths and the supervisors its ranks went to), a
``final`` record once it ended, a ``done`` record once the service acknowledged the end (``stop``).

Keys are ``<namespace>/<kind>/<job>/<attempt>`` in the KV namespace ``zhisuan``; values are JSON.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from ray.util.placement_group import PlacementGroup

from scheduler.live.executors.base import ExecutionStatus, ExecutorUnavailable
from scheduler.live.executors.ray.gang import status_from_json
from scheduler.ray_node import ray_label_value

KV_NAMESPACE = "zhisuan"
KINDS = ("launch", "final", "done")


@dataclass
class Attempt:
    """What the executor knows of one attempt: its launch record and what this driver has in flight for it."""

    job_id: str
    attempt: int
    nodes: tuple[str, ...]
    log_paths: tuple[str, ...]
    #: node label -> (supervisor name, actor id of the supervisor the ranks were sent to)
    supervisors: dict[str, tuple[str, str]] = field(default_factory=dict)
    #: node label -> spawn call not answered yet
    pending: dict[str, Any] = field(default_factory=dict)
    launched_at: float = 0.0
    pg: PlacementGroup | None = None

    @property
    def key(self) -> tuple[str, int]:
        return self.job_id, self.attempt

    @property
    def labels(self) -> tuple[str, ...]:
        return tuple(ray_label_value(n) for n in self.nodes)

    def node(self, rank: int) -> str:
        return self.nodes[rank] if rank < len(self.nodes) else "?"

    def record(self) -> dict[str, Any]:
        return {
            "nodes": list(self.nodes),
            "log_paths": list(self.log_paths),
            "supervisors": {label: list(sup) for label, sup in self.supervisors.items()},
            "launched_at": self.launched_at,
        }

    @classmethod
    def from_record(cls, job_id: str, attempt: int, record: dict[str, Any]) -> Attempt:
        return cls(
            job_id,
            attempt,
            tuple(record.get("nodes", ())),
            tuple(record.get("log_paths", ())),
            {str(label): (str(sup[0]), str(sup[1])) for label, sup in record.get("supervisors", {}).items()},
            launched_at=float(record.get("launched_at", 0.0)),
        )


@dataclass
class Index:
    """Attempts by the kind of record the key-value store holds for them."""

    launch: set[tuple[str, int]] = field(default_factory=set)
    final: set[tuple[str, int]] = field(default_factory=set)
    done: set[tuple[str, int]] = field(default_factory=set)

    @property
    def live(self) -> set[tuple[str, int]]:
        """Launched and not ended."""
        return self.launch - self.final - self.done


class Records:
    """The executor's records in the GCS key-value store of the cluster this process is connected to."""

    def __init__(self, namespace: str, address: str, call_timeout_s: float) -> None:
        self.namespace = namespace
        self.address = address
        self.call_timeout_s = call_timeout_s

    def key(self, kind: str, job_id: str, attempt: int | None = None) -> str:
        tail = "" if attempt is None else f"{attempt}"
        return f"{self.namespace}/{kind}/{job_id}/{tail}"

    def put(self, key: str, value: str) -> None:
        from ray.experimental.internal_kv import _internal_kv_put

        _internal_kv_put(key, value, overwrite=True, namespace=KV_NAMESPACE)

    def multi_get(self, keys: Sequence[str]) -> dict[str, bytes]:
        """Several keys in one GCS call (missing keys are left out)."""
        if not keys:
            return {}
        from ray.experimental.internal_kv import internal_kv_get_gcs_client

        found = internal_kv_get_gcs_client().internal_kv_multi_get(  # type: ignore[no-untyped-call]
            [k.encode() for k in keys], KV_NAMESPACE.encode(), timeout=self.call_timeout_s * 5
        )
        return {bytes(k).decode(): bytes(v) for k, v in found.items() if v is not None}

    def list(self, prefix: str) -> list[str]:
        from ray.experimental.internal_kv import _internal_kv_list

        return [k.decode() for k in _internal_kv_list(prefix, namespace=KV_NAMESPACE)]

    def delete(self, key: str, by_prefix: bool = False) -> None:
        from ray.experimental.internal_kv import _internal_kv_del

        _internal_kv_del(key, del_by_prefix=by_prefix, namespace=KV_NAMESPACE)

    def forget(self, job_id: str) -> None:
        """Every record of a job."""
        for kind in KINDS:
            self.delete(f"{self.namespace}/{kind}/{job_id}/", by_prefix=True)

    def index(self, job_id: str | None = None) -> Index:
        """The attempts the store has records of, by kind: one listing (three for one job). The records are the
        index of attempts, not the placement-group table, which keeps every group ever removed and grows without
        bound (0.1 s a call after a thousand jobs)."""
        try:
            if job_id is None:
                keys = self.list(f"{self.namespace}/")
            else:
                keys = [k for kind in KINDS for k in self.list(self.key(kind, job_id))]
        except Exception as err:
            raise ExecutorUnavailable(f"Ray cluster at {self.address} did not answer: {err}") from err
        index = Index()
        head = f"{self.namespace}/"
        for key in keys:
            kind, _, rest = key[len(head) :].partition("/")
            job, _, attempt = rest.rpartition("/")
            if not key.startswith(head) or not attempt.isdigit() or (job_id is not None and job != job_id):
                continue
            if kind in KINDS:
                getattr(index, kind).add((job, int(attempt)))
        return index

    def ended(self, keys: Iterable[tuple[str, int]]) -> dict[tuple[str, int], ExecutionStatus]:
        """Final statuses of ended attempts (``done`` wins over ``final``), in one GCS call."""
        keys = list(keys)
        found = self.multi_get([self.key(kind, j, a) for j, a in keys for kind in ("final", "done")])
        out: dict[tuple[str, int], ExecutionStatus] = {}
        for job_id, attempt in keys:
            value = found.get(self.key("done", job_id, attempt)) or found.get(self.key("final", job_id, attempt))
            if value is not None:
                out[(job_id, attempt)] = status_from_json(value)
        return out
