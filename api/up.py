"""Running the product: ``zhisuan server`` (API + scheduler service) and ``zhisuan up`` (all of it, locally).

``zhisuan up`` is the whole center on one machine: a real multi-node Ray cluster whose raylets carry the
resources and labels of emulated heterogeneous nodes (:class:`~scheduler.live.localcluster.LocalCluster`), one node
agent per node reporting emulated accelerators to the API, the API on SQLite, and the scheduler service placing
jobs through the policy core onto Ray. Ctrl-C stops everything::

    zhisuan up                                   # seeds/clusters/local.yaml, ./.zhisuan/zhisuan.db
    zhisuan up --address 10.0.0.5:6379           # schedule onto an existing Ray cluster instead
    zhisuan server --ray-address 10.0.0.5:6379   # API + scheduler only (agents run on the nodes)
    zhisuan server --inventory kubernetes --size-worker-groups --ray-address zhisuan-head-svc:6379
                                                 # on Kubernetes: Nodes watched, KubeRay worker groups sized

With the Kubernetes inventory (``ZHISUAN_INVENTORY=kubernetes``) one thread lists and watches the Nodes
(:class:`~scheduler.live.inventory.kubernetes.KubernetesInventory`) and another publishes what it makes of them
into the database at every change (:func:`api.inventory_sink.follow`); with ``--size-worker-groups`` the scheduler
service gets a :class:`~scheduler.live.kuberay.KubeRayCapacity` as its step 3b.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import uvicorn

from api.app import KEEP_ALIVE_S, create_app
from api.auth import issue_token
from api.bootstrap import ADMIN_USER, prepare
from api.coalescing import CoalescingHttpToolsProtocol
from api.db import make_engine, migrate, write_session
from api.enums import NodeSource, Role
from api.inventory_sink import SqlInventorySink, follow
from api.profiles import Profile, save_profile
from api.routers.services import SERVING_URL_ENV
from api.service_store import SqlServiceStore
from api.serving_store import SqlServing
from api.settings import Settings
from scheduler.cluster import load_cluster
from scheduler.core import CoreConfig, SchedulerCore
from scheduler.live.capacity import CapacityManager
from scheduler.live.executors.base import Executor
from scheduler.live.service import SchedulerService, ServiceConfig
from scheduler.live.serving.controller import ServeConfig, ServeController
from scheduler.live.serving.router import RouterConfig, ServiceRouter
from scheduler.live.serving.router import running as router_running
from scheduler.live.store import ServiceStore
from scheduler.model import Node

if TYPE_CHECKING:
    from scheduler.live.inventory.kubernetes import KubernetesInventory
    from scheduler.live.kuberay import KubeRayCapacity
    from scheduler.live.localcluster import LocalCluster

log = logging.getLogger("zhisuan")


@dataclass
class Running:
    """What :func:`running` started, for callers (and tests) that need to reach it.

    ``stop`` ends everything; the scheduler service has its own switch (:meth:`stop_scheduler`,
    :meth:`start_scheduler`) so that another instance — a ``zhisuan server`` elsewhere, a crash test's own
    process — can take the leader lock while the API, the agents and the cluster stay up.
    """

    url: str
    settings: Settings
    admin_token: str | None
    service: SchedulerService | None
    ray_address: str | None
    nodes: list[Node] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)
    #: The local Ray cluster when :func:`running` started one (None with ``ray_address``).
    cluster: LocalCluster | None = None
    #: The Kubernetes Node inventory being followed (``inventory="kubernetes"``), and the KubeRay worker-group
    #: sizer of the scheduler service (``size_worker_groups``).
    kubernetes: KubernetesInventory | None = None
    capacity: KubeRayCapacity | None = None
    #: Where the served inference endpoints answer (``/v1/services/{tenant}/{name}/...``) when :func:`running`
    #: started a serving router in this process (``serving_port``).
    serving_url: str | None = None
    _scheduler: _SchedulerHost | None = field(default=None, repr=False)
    _agent_stops: dict[str, threading.Event] = field(default_factory=dict, repr=False)

    def poke_scheduler(self) -> None:
        """Wake the in-process scheduler service now (the API does after every accepted submission or cancel)."""
        service = self.service
        if service is not None:
            service.poke()

    def stop_scheduler(self, timeout_s: float = 15.0) -> None:
        """Stop the in-process scheduler service and give up its leader lock (a standby takes over at once)."""
        if self._scheduler is not None:
            self._scheduler.stop(timeout_s)
        self.service = None

    def start_scheduler(self) -> SchedulerService:
        """(Re)start the in-process scheduler service: a fresh one, which adopts what it finds."""
        if self._scheduler is None:
            raise RuntimeError("this deployment runs no scheduler (scheduler=False or no Ray cluster)")
        self.service = self._scheduler.start(self.stop)
        return self.service

    def kill_node(self, node_id: str) -> None:
        """Crash one emulated node as a machine crash would: ``kill -9`` its raylet and processes
        (:meth:`LocalCluster.kill_node`), and silence its node agent — which, on a real machine, dies with it."""
        if self.cluster is None:
            raise RuntimeError("this deployment has no local cluster")
        self.cluster.kill_node(node_id)
        stop = self._agent_stops.get(node_id)
        if stop is not None:
            stop.set()


class _SchedulerHost:
    """Runs one :class:`SchedulerService` at a time in a thread of this process."""

    def __init__(
        self,
        store: ServiceStore,
        executor: Executor,
        config: ServiceConfig | None,
        core_config: CoreConfig | None,
        capacity: CapacityManager | None = None,
        serving: ServeController | None = None,
    ) -> None:
        self.store, self.executor, self.config, self.core_config = store, executor, config, core_config
        self.capacity, self.serving = capacity, serving
        self.service: SchedulerService | None = None
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()

    def start(self, everything: threading.Event) -> SchedulerService:
        if self.service is not None and self._thread is not None and self._thread.is_alive():
            return self.service
        self._stop = threading.Event()
        service = SchedulerService(
            self.store,
            self.executor,
            self.config,
            core=SchedulerCore(self.core_config),
            capacity=self.capacity,
            serving=self.serving,
        )
        stop = self._stop

        def loop() -> None:
            # Either switch stops it: the deployment's (everything) or the scheduler's own.
            _relay(everything, stop)
            service.run(stop)

        self._thread = threading.Thread(target=loop, name="scheduler", daemon=True)
        self._thread.start()
        self.service = service
        return service

    def stop(self, timeout_s: float) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout_s)
        if self.service is not None:
            self.service.release_lock()
        self.service = None
        self._thread = None


class _PokeOnChange:
    """ASGI wrapper of the API: once a job was accepted or a cancel requested (a 2xx answer to a POST under
    ``/v1/jobs``), wake the in-process scheduler service at once instead of at its next cycle."""

    def __init__(self, app: Any, poke: Callable[[], None]) -> None:
        self.app = app
        self.poke = poke

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope.get("method") != "POST" or not scope.get("path", "").startswith("/v1/jobs"):
            await self.app(scope, receive, send)
            return

        async def send_and_poke(message: Any) -> None:
            await send(message)
            if message["type"] == "http.response.start" and 200 <= message["status"] < 300:
                self.poke()

        await self.app(scope, receive, send_and_poke)


def _relay(source: threading.Event, target: threading.Event) -> None:
    """Set ``target`` once ``source`` is set (a background thread waits for it)."""

    def wait() -> None:
        source.wait()
        target.set()

    threading.Thread(target=wait, name="relay", daemon=True).start()


def _stop_agents(
    switches: dict[str, threading.Event], threads: list[threading.Thread], timeout_s: float = 15.0
) -> None:
    """Stop every agent and wait for them together (a heartbeat in flight finishes while the API still runs)."""
    for switch in switches.values():
        switch.set()
    deadline = time.monotonic() + timeout_s
    for thread in threads:
        thread.join(max(0.0, deadline - time.monotonic()))
    late = [t.name for t in threads if t.is_alive()]
    if late:
        log.warning("agents still stopping when the API stops: %s", ", ".join(late))


def _pause(stop: threading.Event, seconds: float) -> None:
    stop.wait(seconds)


def _admin_token(settings: Settings, created: str | None) -> str:
    """The admin token created at bootstrap, or a new one for this local session (``up`` owns its database)."""
    if created is not None:
        return created
    engine = make_engine(settings.database_url)
    try:
        with write_session(engine) as session:
            token: str = issue_token(
                session, role=Role.CENTER_ADMIN, tenant=None, user_id=ADMIN_USER, name="zhisuan up"
            )["token"]
        return token
    finally:
        engine.dispose()


def _node_token(settings: Settings) -> str:
    engine = make_engine(settings.database_url)
    try:
        with write_session(engine) as session:
            token: str = issue_token(session, role=Role.NODE_AGENT, tenant=None, user_id=None, name="zhisuan up")[
                "token"
            ]
        return token
    finally:
        engine.dispose()


def _start_agents(
    url: str, token: str, nodes: Sequence[Node], stop: threading.Event, interval_s: float
) -> tuple[dict[str, threading.Event], list[threading.Thread]]:
    """One emulated node agent per node, each in its own thread, registering and heartbeating like a real one.
    Returns each agent's own stop switch (``stop`` stops them all) and the agents' threads."""
    from agents.agent import Agent, AgentConfig, AgentStopped
    from agents.shims.emulated import EmulatedShim

    switches: dict[str, threading.Event] = {}
    threads: list[threading.Thread] = []
    for node in nodes:
        config = AgentConfig(
            api_url=url,
            node_token=token,
            node_id=node.id,
            interval_s=interval_s,
            site=node.site,
            region=node.region,
            tier=node.tier.value,
            island=node.island,
            switch=node.switch,
            labels=dict(node.labels),
            cpu_milli=node.cpu_milli,
            memory_mib=node.memory_mib,
        )
        agent = Agent(config, [EmulatedShim(node.model, devices=node.devices, node=node.id)])
        own = switches[node.id] = threading.Event()

        def loop(agent: Agent = agent, own: threading.Event = own) -> None:
            _relay(stop, own)
            try:
                agent.discover()
                agent.register_with_retry(sleep=lambda seconds: _pause(own, seconds), stop=own)
                agent.run(own)
            except AgentStopped:
                if not own.is_set():  # refused by the API; a stop before registering is what was asked
                    log.exception("agent of %s stopped", agent.config.node_id)
            except Exception:
                log.exception("agent of %s stopped", agent.config.node_id)
            finally:
                agent.close()

        thread = threading.Thread(target=loop, name=f"agent-{node.id}", daemon=True)
        thread.start()
        threads.append(thread)
    return switches, threads


@contextmanager
def running(
    settings: Settings,
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    ray_address: str | None = None,
    cluster_file: Path | None = None,
    max_nodes: int | None = None,
    agents: bool = True,
    scheduler: bool = True,
    service_config: ServiceConfig | None = None,
    agent_interval_s: float = 1.0,
    core_config: CoreConfig | None = None,
    log_dir: str | None = None,
    include_dashboard: bool = False,
    executor: Executor | None = None,
    serving_port: int | None = None,
    serve_config: ServeConfig | None = None,
    router_config: RouterConfig | None = None,
) -> Iterator[Running]:
    """Start what was asked (local Ray cluster, API, agents, scheduler), yield, and stop it all in reverse.

    ``core_config`` configures the scheduler's policy core, ``log_dir`` is where workers write their logs on the
    nodes (the executor's default otherwise), ``include_dashboard`` starts the local cluster's Ray dashboard (its
    Jobs API, for comparisons). ``executor`` runs the scheduler on it instead of on Ray (``InstantExecutor`` in
    tests and benchmarks). ``settings.inventory`` says where nodes come from besides agents (the module
    docstring), ``settings.size_worker_groups`` whether the scheduler sizes the KubeRay worker groups. The
    scheduler always runs the serving controller (step 7 of its cycle: replicas of the services deployed through
    ``/v1/services``); ``serving_port`` also serves their endpoints from a router in this process (``0``: a free
    port), as ``zhisuan services router`` does in a process of its own; ``serve_config`` and ``router_config``
    tune them (defaults otherwise)."""
    with ExitStack() as stack:
        nodes: list[Node] = []
        local: LocalCluster | None = None
        if cluster_file is not None and ray_address is None:
            from scheduler.live.localcluster import LocalCluster

            local = LocalCluster.from_file(cluster_file, max_nodes=max_nodes, include_dashboard=include_dashboard)
            stack.callback(local.stop)
            ray_address = local.start()
            nodes = list(local.nodes)
        elif cluster_file is not None:
            nodes = list(load_cluster(cluster_file).nodes)

        # Migrate and bootstrap before anything talks to the database.
        boot = prepare(settings)
        admin = _admin_token(settings, boot.admin_token) if agents or boot.admin_token else boot.admin_token

        url = f"http://{host}:{port}"
        result = Running(url, settings, admin, None, ray_address, nodes, cluster=local)
        if settings.inventory == NodeSource.KUBERNETES.value:
            result.kubernetes = _follow_kubernetes(settings, stack)
        server = uvicorn.Server(
            uvicorn.Config(
                _PokeOnChange(create_app(settings), result.poke_scheduler),
                host=host,
                port=port,
                log_level="warning",
                access_log=False,
                loop="uvloop",
                http=CoalescingHttpToolsProtocol,
                lifespan="on",
                timeout_keep_alive=KEEP_ALIVE_S,
            )
        )
        # Off the main thread uvicorn leaves signals alone: Ctrl-C reaches wait_for_interrupt, which stops us.
        api_thread = threading.Thread(target=server.run, name="api", daemon=True)
        api_thread.start()
        stack.callback(api_thread.join, 10)
        stack.callback(setattr, server, "should_exit", True)
        deadline = time.monotonic() + 30
        while not server.started:
            if not api_thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"the API server did not start on {url} (is the port free?)")
            time.sleep(0.05)

        stack.callback(result.stop.set)
        if agents and nodes:
            result._agent_stops, threads = _start_agents(
                url, _node_token(settings), nodes, result.stop, agent_interval_s
            )
            # Agents stop (and finish their last heartbeat) before the API they talk to does.
            stack.callback(_stop_agents, result._agent_stops, threads)

        if scheduler and (ray_address is not None or executor is not None):
            if executor is None:
                from scheduler.live.executors.ray.executor import RayExecutor

                assert ray_address is not None
                ray = RayExecutor(ray_address) if log_dir is None else RayExecutor(ray_address, log_dir=log_dir)
                stack.callback(ray.close)
                executor = ray
            engine = make_engine(settings.database_url, busy_timeout_ms=settings.busy_timeout_ms)
            stack.callback(engine.dispose)
            migrate(engine)
            store = SqlServiceStore(engine, heartbeat_interval_s=settings.heartbeat_interval_s)
            if settings.size_worker_groups:
                assert result.kubernetes is not None  # Settings refuse sizing without the Kubernetes inventory
                result.capacity = _kuberay_capacity(settings, result.kubernetes, stack)
            serving = ServeController(SqlServing(engine), serve_config or ServeConfig())
            stack.callback(serving.close)
            result._scheduler = _SchedulerHost(store, executor, service_config, core_config, result.capacity, serving)
            result.start_scheduler()
            stack.callback(result.stop_scheduler)
            if serving_port is not None:
                router = ServiceRouter(SqlServing(engine), router_config or RouterConfig())
                result.serving_url = stack.enter_context(router_running(router, host, serving_port))
                stack.enter_context(_serving_url_told(result.serving_url))
        yield result


@contextmanager
def _serving_url_told(url: str) -> Iterator[None]:
    """The API of this process names ``url`` in its services' answers (``ZHISUAN_SERVING_URL``, which
    :mod:`api.routers.services` reads) unless the operator set a public address of their own."""
    if os.environ.get(SERVING_URL_ENV, "").strip():
        yield
        return
    os.environ[SERVING_URL_ENV] = url
    try:
        yield
    finally:
        os.environ.pop(SERVING_URL_ENV, None)


def _follow_kubernetes(settings: Settings, stack: ExitStack) -> KubernetesInventory:
    """List and watch the Nodes in one thread and publish them into the database in another, until the stack
    closes. The client is configured now: a kubeconfig that cannot be used fails the start with one line."""
    from scheduler.live.inventory.kubernetes import KubernetesInventory, kube_api_client

    api = kube_api_client(settings.kubeconfig, settings.kube_context)
    stack.callback(api.close)
    source = KubernetesInventory(api, label_selector=settings.kube_node_selector)
    engine = make_engine(settings.database_url, busy_timeout_ms=settings.busy_timeout_ms)
    stack.callback(engine.dispose)
    sink = SqlInventorySink(engine, every_s=settings.inventory_publish_s)
    stop = threading.Event()
    threads = [
        threading.Thread(target=source.run, args=(stop,), name="k8s-inventory", daemon=True),
        threading.Thread(
            target=follow,
            args=(source, sink, stop),
            kwargs={"every_s": settings.inventory_publish_s},
            name="k8s-inventory-publish",
            daemon=True,
        ),
    ]
    for thread in threads:
        thread.start()
        stack.callback(thread.join, 10)
    stack.callback(stop.set)  # first of these on the way out: cuts the open watch, then the joins
    return source


def _kuberay_capacity(settings: Settings, source: KubernetesInventory, stack: ExitStack) -> KubeRayCapacity:
    """The scheduler's step 3b on Kubernetes: the RayCluster's worker groups sized by the scaling rule."""
    from scheduler.live.inventory.kubernetes import kube_api_client
    from scheduler.live.kuberay import KubeRayCapacity, WorkerGroupSizer
    from scheduler.scaling import ScalingRule

    api = kube_api_client(settings.kubeconfig, settings.kube_context)
    stack.callback(api.close)
    namespace, name = settings.raycluster_ref
    capacity = KubeRayCapacity(
        WorkerGroupSizer(api, namespace, name),
        source,
        ScalingRule(grace_s=settings.scale_grace_s),
        poll_s=settings.scale_poll_s,
    )
    # Its own thread reads and writes the RayCluster: a slow API server never holds the scheduler's cycle.
    capacity.start()
    stack.callback(capacity.close)
    return capacity


def developer_login(url: str, admin_token: str, tenant: str = "acme", user: str = "dev") -> str:
    """A tenant-admin token for a local developer (``dev@acme``), made through the API itself."""
    from api.client import ApiError, ZhisuanClient

    with ZhisuanClient(url, admin_token) as client:
        try:
            created = client.create_user(user, tenant=tenant, role=Role.TENANT_ADMIN.value)
            user_id = created.id or f"{user}@{tenant}"
        except ApiError as err:
            if err.status != 409:
                raise
            user_id = f"{user}@{tenant}"
        token = client.create_token(user_id, name="zhisuan up").token
    assert token is not None
    return token


def wait_for_interrupt(stop: threading.Event) -> None:
    """Block until Ctrl-C, SIGTERM (or ``stop``).

    SIGTERM is how Kubernetes, systemd and docker stop a process: it takes the same way out as Ctrl-C (the leader
    lock released, agents and API stopped in order), not Ray's handler, which kills the process where it stands."""
    previous = None
    if threading.current_thread() is threading.main_thread():
        previous = signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        while not stop.wait(0.5):
            pass
    except KeyboardInterrupt:
        pass
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def remember_login(url: str, token: str | None, profile: str = "default") -> Path | None:
    """Store the local admin login in the CLI config so ``zhisuan submit`` works at once."""
    if token is None:
        return None
    return save_profile(Profile(profile, url=url, token=token))
