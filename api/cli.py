"""The ``zhisuan`` command line.

It runs the policy core on files (``zhisuan place``), shows the core at work on the example cluster
(``zhisuan up``), talks to a Zhisuan API server (``login``, ``submit``, ``list``, ``status``, ``logs``, ``why``,
``eta``, ``admin ...``: :mod:`api.commands`), runs the node agent (``zhisuan agent``) and the simulator
(``zhisuan simulate``)::

    zhisuan up
    zhisuan place --cluster seeds/clusters/example.yaml --jobs seeds/examples/demo-jobs.yaml -o json
    zhisuan login --url http://127.0.0.1:8000 --token zs_...
    zhisuan submit job.yaml --wait
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from agents.cli import app as agent_app
from api.commands import register as register_api_commands
from api.commands.common import OutputOpt
from api.commands.render import Fmt, emit
from scheduler.cluster import load_cluster
from scheduler.core import CoreConfig, SchedulerCore
from scheduler.errors import ConfigError
from scheduler.eta import forecast
from scheduler.jobfile import load_jobs
from scheduler.model import MILLI, Decision, DecisionKind
from scheduler.placement import PlacementConfig
from scheduler.scoring import SCORERS
from scheduler.state import ClusterState
from scheduler.tenancy import load_policy
from simulations.cli import app as simulations_app

if TYPE_CHECKING:
    from api.settings import Settings

app = typer.Typer(help="Zhisuan (智算): a scheduler for intelligent computing centers.", no_args_is_help=True)
app.add_typer(agent_app, name="agent")
app.add_typer(simulations_app)
register_api_commands(app)
console = Console(width=160) if not Console().is_terminal else Console()
errors = Console(stderr=True)

SEEDS = Path(__file__).resolve().parent.parent / "seeds"


def _decision_dict(decision: Decision) -> dict[str, object]:
    placement = decision.placement
    return {
        "job": decision.job_id,
        "decision": decision.kind.value,
        "model": placement.model if placement else None,
        "pool": placement.pool if placement else None,
        "topology": placement.topology.name.lower() if placement else None,
        "workers": [{"node": w.node, "devices": list(w.devices), "milli": w.milli} for w in placement.workers]
        if placement
        else [],
        "estimated_finish": decision.estimated_finish,
        "reasons": [r.as_dict() for r in decision.reasons],
    }


def _print_decisions(decisions: list[Decision], state: ClusterState, starts: dict[str, float | None]) -> None:
    table = Table(title="Decisions", show_lines=False)
    for column in ("job", "decision", "model", "nodes", "topology", "why not", "eta (s)"):
        table.add_column(column)
    for d in decisions:
        p = d.placement
        nodes = ""
        if p:
            nodes = p.nodes[0] if len(p.nodes) == 1 else f"{p.nodes[0]} +{len(p.nodes) - 1}"
        style = "green" if d.kind is DecisionKind.START else "yellow"
        table.add_row(
            d.job_id,
            f"[{style}]{d.kind.value}[/{style}]",
            p.model if p else "",
            nodes,
            p.topology.name.lower() if p else "",
            "; ".join(r.message for r in d.reasons[:2]),
            "" if d.kind is not DecisionKind.REJECT else _eta_text(starts.get(d.job_id)),
        )
    console.print(table)
    pools = Table(title="Pools after this step")
    for column in ("pool", "devices", "allocated", "share"):
        pools.add_column(column, justify="right" if column != "pool" else "left")
    for pool in state.pools.values():
        used = pool.capacity_milli - pool.free_milli
        pools.add_row(
            pool.id,
            f"{pool.capacity_milli // MILLI}",
            f"{used / MILLI:g}",
            f"{used / pool.capacity_milli:.0%}" if pool.capacity_milli else "-",
        )
    console.print(pools)


def _eta_text(start: float | None) -> str:
    return "unknown" if start is None else f"{start:g}"


def _run(cluster_path: Path, jobs_path: Path, policy_path: Path | None, scorer: str, seed: int, output: Fmt) -> None:
    try:
        cluster = load_cluster(cluster_path)
        state = cluster.state()
        jobs = load_jobs(jobs_path, state=state)
        policy = load_policy(policy_path) if policy_path is not None else None
    except ConfigError as exc:
        errors.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from exc
    if scorer not in SCORERS:
        errors.print(f"[red]error:[/red] --scorer {scorer!r} is not one of {', '.join(SCORERS)}")
        raise typer.Exit(2)
    core = SchedulerCore(CoreConfig(placement=PlacementConfig(scorer=scorer, seed=seed)), policy=policy)
    decisions = core.step(state, jobs, now=0.0)
    waiting = [job for job in jobs if job.id not in state.running]
    starts = forecast(core, state, waiting, now=0.0).starts

    def table(out: Console) -> None:
        out.print(f"[bold]{cluster.name}[/bold]: {len(cluster.nodes)} nodes, {cluster.devices} devices")
        _print_decisions(decisions, state, starts)

    emit([{**_decision_dict(d), "eta": starts.get(d.job_id)} for d in decisions], output, table)


@app.command()
def place(
    cluster: Annotated[Path, typer.Option(help="cluster file (or a name in seeds/clusters/)")] = SEEDS
    / "clusters"
    / "example.yaml",
    jobs: Annotated[Path, typer.Option(help="jobs file")] = SEEDS / "examples" / "demo-jobs.yaml",
    policy: Annotated[Path | None, typer.Option(help="tenants, queues and quotas (e.g. seeds/policy.yaml)")] = None,
    scorer: Annotated[str, typer.Option(help=f"node scorer: {', '.join(SCORERS)}")] = "fgd",
    seed: int = 0,
    output: OutputOpt = Fmt.TABLE,
) -> None:
    """Run one scheduling step of the policy core on a cluster file and a jobs file, with ETAs for the rest."""
    _run(cluster, jobs, policy, scorer, seed, output)


@app.command()
def up(
    cluster: Annotated[Path, typer.Option(help="emulated nodes to start as Ray raylets")] = SEEDS
    / "clusters"
    / "local.yaml",
    address: Annotated[str | None, typer.Option(help="use this Ray cluster instead of starting one")] = None,
    host: Annotated[str, typer.Option(help="API address")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="API port")] = 8000,
    max_nodes: Annotated[int | None, typer.Option(help="start at most this many nodes of the cluster file")] = None,
    serving_port: Annotated[
        int, typer.Option(help="port of the served inference endpoints (zhisuan services deploy)")
    ] = 8100,
) -> None:
    """Run the whole center on this machine: Ray cluster, node agents, API (SQLite), scheduler and the serving
    router. Ctrl-C stops."""
    from api.settings import Settings
    from api.up import developer_login, remember_login, running, wait_for_interrupt

    settings = Settings.from_env()
    try:
        with running(
            settings,
            host=host,
            port=port,
            ray_address=address,
            cluster_file=cluster,
            max_nodes=max_nodes,
            serving_port=serving_port,
        ) as run:
            assert run.admin_token is not None
            remember_login(run.url, run.admin_token, profile="admin")
            saved = remember_login(run.url, developer_login(run.url, run.admin_token))
            console.print(f"[bold green]Zhisuan is up[/] at {run.url}  (API docs: {run.url}/docs)")
            console.print(
                f"  Ray cluster {run.ray_address}, {len(run.nodes)} emulated nodes; database {settings.database_url}"
            )
            if saved is not None:
                console.print(
                    f"  logged in as dev@acme (profile 'default') and center admin (profile 'admin') in {saved}"
                )
            console.print(f"  served inference endpoints at {run.serving_url}/v1/services/<tenant>/<name>/")
            console.print("  try:  zhisuan submit seeds/examples/train-1worker.yaml --wait && zhisuan list")
            console.print("  Ctrl-C stops everything.")
            wait_for_interrupt(run.stop)
    except ConfigError as err:
        errors.print(f"[red]error:[/] {err}")
        raise typer.Exit(2) from None
    console.print("stopped")


@app.command()
def server(
    host: Annotated[str, typer.Option(help="API address")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="API port")] = 8000,
    ray_address: Annotated[
        str | None, typer.Option(help="Ray cluster the scheduler runs jobs on; without it only the API runs")
    ] = None,
    workers: Annotated[
        int,
        typer.Option(
            min=1,
            help="API processes serving the port; more than one needs ZHISUAN_REDIS_URL (shared rate limits) "
            "or ZHISUAN_RATE_LIMIT=off",
        ),
    ] = 1,
    inventory: Annotated[
        str | None,
        typer.Option(
            help="where nodes come from besides their agents: file (the cluster file; bare metal) or kubernetes "
            "(Nodes listed and watched) (env ZHISUAN_INVENTORY; default file)",
            show_default=False,
        ),
    ] = None,
    kubeconfig: Annotated[
        Path | None,
        typer.Option(
            help="kubeconfig of the cluster (env ZHISUAN_KUBECONFIG; default: the pod's service account in a "
            "cluster, else $KUBECONFIG or ~/.kube/config)",
            show_default=False,
        ),
    ] = None,
    size_worker_groups: Annotated[
        bool | None,
        typer.Option(
            "--size-worker-groups/--no-size-worker-groups",
            help="the scheduler sizes the KubeRay worker groups from its own queue (needs --inventory kubernetes) "
            "(env ZHISUAN_SIZE_WORKER_GROUPS)",
            show_default=False,
        ),
    ] = None,
    raycluster: Annotated[
        str | None,
        typer.Option(
            help="namespace/name of the RayCluster to size (env ZHISUAN_RAYCLUSTER; default zhisuan/zhisuan)",
            show_default=False,
        ),
    ] = None,
    scale_grace: Annotated[
        float | None,
        typer.Option(min=0, help="seconds a worker node idles before it goes (env ZHISUAN_SCALE_GRACE_S; default 600)"),
    ] = None,
) -> None:
    """Serve the API and, with --ray-address, run the scheduler service (settings from ZHISUAN_* variables)."""
    from api.settings import Settings
    from api.up import running, wait_for_interrupt

    given = {
        "inventory": inventory.strip().lower() if inventory is not None else None,
        "kubeconfig": kubeconfig,
        "size_worker_groups": size_worker_groups,
        "raycluster": raycluster,
        "scale_grace_s": scale_grace,
    }
    try:
        settings = Settings.from_env().with_(**{k: v for k, v in given.items() if v is not None})
    except ValueError as err:
        errors.print(f"[red]error:[/] {escape(str(err))}", soft_wrap=True)
        raise typer.Exit(2) from None
    if workers > 1:
        _serve_workers(host, port, ray_address, workers, settings)
        return
    try:
        with running(settings, host=host, port=port, ray_address=ray_address, agents=False) as run:
            if run.admin_token is not None:
                console.print(f"center admin token (shown once): {run.admin_token}")
            scheduler = "scheduler on " + ray_address if ray_address else "no scheduler (no --ray-address)"
            if run.kubernetes is not None:
                scheduler += "; nodes from Kubernetes"
            if run.capacity is not None:
                namespace, name = settings.raycluster_ref
                scheduler += f", worker groups of RayCluster {namespace}/{name} sized by Zhisuan"
            console.print(f"serving {run.url}; {scheduler}. Ctrl-C stops.")
            wait_for_interrupt(run.stop)
    except ConfigError as err:
        errors.print(f"[red]error:[/] {escape(str(err))}", soft_wrap=True)
        raise typer.Exit(2) from None
    console.print("stopped")


def _serve_workers(host: str, port: int, ray_address: str | None, workers: int, settings: Settings) -> None:
    """``workers`` API processes on ``host:port`` (uvicorn's supervisor, in this process's main thread) and, with
    ``ray_address``, the scheduler service in this process. The processes share everything through the database
    and Redis: a submission through any of them wakes the scheduler (the change feed), a revoked token is refused
    by all within a second, a token's rate limit is one bucket."""
    import socket
    from contextlib import ExitStack

    from api.app import run as run_api
    from api.up import running

    settings = settings.with_(workers=workers)
    try:
        from api.app import make_limiter

        make_limiter(settings)
    except ValueError as err:
        errors.print(f"[red]error:[/] {err}")
        raise typer.Exit(2) from None
    with ExitStack() as stack:
        if ray_address or settings.inventory != "file":
            # The scheduler's host (api.up.running) also serves an API, on a private loopback port nobody is told.
            with socket.socket() as sock:
                sock.bind(("127.0.0.1", 0))
                private = sock.getsockname()[1]
            run = stack.enter_context(running(settings, port=private, ray_address=ray_address, agents=False))
            if run.admin_token is not None:
                console.print(f"center admin token (shown once): {run.admin_token}")
            if ray_address:
                console.print(f"scheduler on {ray_address}")
            if run.kubernetes is not None:
                console.print("nodes from Kubernetes")
        console.print(f"serving http://{host}:{port} with {workers} processes. Ctrl-C stops.")
        run_api(host=host, port=port, workers=workers)


if __name__ == "__main__":
    app()
