"""``zhisuan services``: deploy served inference services, watch them, hand out keys, read their replicas' logs.

    zhisuan services deploy seeds/examples/inference-service.yaml     # created, or a new revision
    zhisuan services list
    zhisuan services status chat                # replicas, load, p99 against the SLO, the URL
    zhisuan services keys chat --create --name mobile-app       # the key is printed once
    zhisuan services keys chat --revoke k0123456789abcdef
    zhisuan services logs chat                  # the newest lines of every replica
    zhisuan services usage chat                 # requests, tokens, device-hours, charge
    zhisuan services delete chat
    zhisuan services router --port 8100         # the serving endpoint itself (routers read the database)

Calls to a service go to the serving port with a service key (``Authorization: Bearer zsk_...``), not to the
API with a token.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from api.commands.common import EXIT_USAGE, OutputOpt, ProfileOpt, TokenOpt, UrlOpt, connect, fail, handle_errors
from api.commands.render import Fmt, ago, emit, key_values, state_text, when
from api.models import ServiceKeyCreated, ServiceKeyOut, ServiceOut, ServiceUsageOut
from scheduler.serving import SERVICE_LABEL
from scheduler.spec import JobSpec, load_spec

services_app = typer.Typer(
    help="Served inference: deploy, status, keys, logs, usage, the router.", no_args_is_help=True
)

NameArg = Annotated[str, typer.Argument(help="the service's name")]
TenantOpt = Annotated[
    str | None, typer.Option("--tenant", help="center admins: the tenant of the service", show_default=False)
]


def _q(tenant: str | None) -> dict[str, Any]:
    return {"tenant": tenant} if tenant else {}


def load_text(service: ServiceOut) -> str:
    load = service.load
    if load is None:
        return "no router reported in the last seconds"
    p99 = f"p99 {load.p99_ms:.0f} ms" if load.p99_ms is not None else "p99 -"
    slo = f" (SLO {service.slo_p99_ms:g} ms)" if service.slo_p99_ms is not None else ""
    return f"{load.requests_per_s:.1f} req/s, {load.ongoing:.1f} in flight, {p99}{slo}, {load.errors_per_s:.2f} err/s"


def replicas_text(service: ServiceOut) -> str:
    desired = "?" if service.desired is None else str(service.desired)
    return f"{service.ready} ready / {desired} wanted ({service.min_replicas}-{service.max_replicas})"


def service_rows(service: ServiceOut) -> list[tuple[str, str]]:
    """The lines ``zhisuan services status`` (and ``zhisuan status`` of a replica) show about a service."""
    rows = [
        ("service", f"{escape(service.name)} ({escape(service.id)}), revision {service.revision}"),
        ("owner", f"{escape(service.user)} @ {escape(service.tenant)}, queue {escape(service.queue)}"),
        ("state", escape(service.state)),
        ("endpoint", escape(service.url or f"<serving port>{service.path}")),
        ("replicas", replicas_text(service)),
        ("load", escape(load_text(service))),
    ]
    if service.message:
        rows.append(("controller", escape(service.message)))
    return rows


def _table(console: Console, items: list[ServiceOut]) -> None:
    if not items:
        console.print("No services. Deploy one with `zhisuan services deploy FILE`.")
        return
    t = Table(box=None, header_style="bold")
    for column in ("name", "tenant", "rev", "state", "replicas", "req/s", "p99 ms", "endpoint"):
        t.add_column(column)
    for s in items:
        load = s.load
        t.add_row(
            escape(s.name),
            escape(s.tenant),
            str(s.revision),
            escape(s.state),
            replicas_text(s),
            f"{load.requests_per_s:.1f}" if load is not None else "-",
            f"{load.p99_ms:.0f}" if load is not None and load.p99_ms is not None else "-",
            escape(s.url or s.path),
        )
    console.print(t)


def _status_table(console: Console, service: ServiceOut) -> None:
    key_values(console, service_rows(service))
    if not service.replicas:
        return
    t = Table(title="replicas", box=None, header_style="bold")
    for column in ("job", "rev", "phase", "state", "node", "in flight", "url / why"):
        t.add_column(column)
    for r in service.replicas:
        t.add_row(
            escape(r.job_id),
            str(r.revision),
            escape(r.phase),
            state_text(r.state.value),
            escape(r.node or "-"),
            str(r.ongoing),
            escape(r.url or "; ".join(r.reasons) or "-"),
        )
    console.print(t)


@services_app.command("deploy")
@handle_errors
def deploy(
    file: Annotated[Path, typer.Argument(help="a job spec (YAML or JSON) with kind: inference and a serving block")],
    url: UrlOpt = None,
    token: TokenOpt = None,
    profile: ProfileOpt = None,
    output: OutputOpt = Fmt.TABLE,
) -> None:
    """Deploy a service, or roll it to a new revision (its replicas are replaced one by one, new ready first)."""
    spec = load_spec(file)
    if spec.serving is None:
        raise fail(f"{file}: serving: a service needs a serving block (min_replicas, max_replicas ...)", EXIT_USAGE)
    with connect(url, token, profile) as client:
        data = client.request("POST", "/v1/services", json=spec.model_dump(mode="json", exclude_unset=True))
    service = ServiceOut.from_api(data)

    def table(console: Console) -> None:
        console.print(f"{escape(str(data.get('outcome')))}: {escape(service.name)} revision {service.revision}")
        key_values(console, service_rows(service))

    emit(service.to_dict(), output, table)


@services_app.command("list")
@handle_errors
def list_services(
    tenant: TenantOpt = None,
    url: UrlOpt = None,
    token: TokenOpt = None,
    profile: ProfileOpt = None,
    output: OutputOpt = Fmt.TABLE,
) -> None:
    """Your services: replicas, requests per second, p99, endpoint."""
    with connect(url, token, profile) as client:
        data = client.request("GET", "/v1/services", params=_q(tenant))
    items = [ServiceOut.from_api(item) for item in data["items"]]
    emit(data, output, lambda console: _table(console, items))


@services_app.command("status")
@handle_errors
def status(
    name: NameArg,
    tenant: TenantOpt = None,
    url: UrlOpt = None,
    token: TokenOpt = None,
    profile: ProfileOpt = None,
    output: OutputOpt = Fmt.TABLE,
) -> None:
    """One service: its endpoint, replicas (phase, node, requests in flight), live load and the controller's word."""
    with connect(url, token, profile) as client:
        service = ServiceOut.from_api(client.request("GET", f"/v1/services/{name}", params=_q(tenant)))
    emit(service.to_dict(), output, lambda console: _status_table(console, service))


@services_app.command("keys")
@handle_errors
def keys(
    name: NameArg,
    create: Annotated[bool, typer.Option("--create", help="create a key (its secret is printed once)")] = False,
    key_name: Annotated[str, typer.Option("--name", help="with --create: who the key is for")] = "",
    revoke: Annotated[str | None, typer.Option("--revoke", help="revoke the key with this id")] = None,
    tenant: TenantOpt = None,
    url: UrlOpt = None,
    token: TokenOpt = None,
    profile: ProfileOpt = None,
    output: OutputOpt = Fmt.TABLE,
) -> None:
    """List a service's keys; --create one for your users, or --revoke one."""
    if create and revoke:
        raise fail("give --create or --revoke, not both", EXIT_USAGE)
    with connect(url, token, profile) as client:
        if create:
            data = client.request("POST", f"/v1/services/{name}/keys", params=_q(tenant), json={"name": key_name})
            made = ServiceKeyCreated.from_api(data)

            def created(console: Console) -> None:
                console.print(f"key {escape(made.id)} for {escape(made.service)} (shown once, store it now):")
                console.print(escape(made.key), soft_wrap=True)

            emit(data, output, created)
            return
        if revoke:
            data = client.request("DELETE", f"/v1/services/{name}/keys/{revoke}", params=_q(tenant))
            emit(data, output, lambda console: console.print(f"revoked {escape(revoke)}"))
            return
        data = client.request("GET", f"/v1/services/{name}/keys", params=_q(tenant))
    items = [ServiceKeyOut.from_api(item) for item in data["items"]]

    def table(console: Console) -> None:
        if not items:
            console.print(f"No keys. Create one with `zhisuan services keys {escape(name)} --create`.")
            return
        t = Table(box=None, header_style="bold")
        for column in ("id", "name", "created", "revoked"):
            t.add_column(column)
        for k in items:
            t.add_row(escape(k.id), escape(k.name), when(k.created_at), ago(k.revoked_at) if k.revoked_at else "-")
        console.print(t)

    emit(data, output, table)


@services_app.command("logs")
@handle_errors
def logs(
    name: NameArg,
    lines: Annotated[int, typer.Option("--lines", "-n", min=1, help="last lines per replica")] = 20,
    tenant: TenantOpt = None,
    url: UrlOpt = None,
    token: TokenOpt = None,
    profile: ProfileOpt = None,
) -> None:
    """The newest log lines of every replica of a service (each replica is a job: `zhisuan logs JOB -f`)."""
    with connect(url, token, profile) as client:
        service = ServiceOut.from_api(client.request("GET", f"/v1/services/{name}", params=_q(tenant)))
        console = Console(highlight=False)
        if not service.replicas:
            console.print(f"{escape(name)} has no replica now ({escape(service.message)})")
            return
        for replica in service.replicas:
            chunk = client.logs(replica.job_id)
            console.print(f"[bold]== {escape(replica.job_id)} ({escape(replica.phase)}, {escape(replica.node or '-')})")
            for line in chunk.text.splitlines()[-lines:]:
                console.print(escape(line), soft_wrap=True)


@services_app.command("usage")
@handle_errors
def usage(
    name: NameArg,
    tenant: TenantOpt = None,
    url: UrlOpt = None,
    token: TokenOpt = None,
    profile: ProfileOpt = None,
    output: OutputOpt = Fmt.TABLE,
) -> None:
    """Requests, tokens, device-hours and charge of a service over the last 30 days."""
    with connect(url, token, profile) as client:
        data = client.request("GET", f"/v1/services/{name}/usage", params=_q(tenant))
    use = ServiceUsageOut.from_api(data)

    def table(console: Console) -> None:
        per_1k = f"{use.charge_per_1k_requests:.4f}" if use.charge_per_1k_requests is not None else "-"
        key_values(
            console,
            [
                ("service", f"{escape(use.service)} @ {escape(use.tenant)}"),
                ("period", f"{when(use.start)} - {when(use.end)}"),
                ("requests", f"{use.requests} ({use.errors} errors, {use.rejected} refused)"),
                ("tokens", str(use.tokens)),
                ("device-hours", f"{use.device_hours:.4f} (+ {use.running_device_hours:.4f} running)"),
                ("NCU-hours", f"{use.ncu_hours:.4f}"),
                ("charge", f"{use.charge:.4f} {escape(use.currency)} ({per_1k} per 1,000 requests)"),
            ],
        )

    emit(data, output, table)


@services_app.command("delete")
@handle_errors
def delete(
    name: NameArg,
    tenant: TenantOpt = None,
    url: UrlOpt = None,
    token: TokenOpt = None,
    profile: ProfileOpt = None,
    output: OutputOpt = Fmt.TABLE,
) -> None:
    """Delete a service: its replicas drain and stop, then it and its keys are gone."""
    with connect(url, token, profile) as client:
        data = client.request("DELETE", f"/v1/services/{name}", params=_q(tenant))
    service = ServiceOut.from_api(data)
    emit(data, output, lambda console: console.print(f"deleting {escape(service.name)}: {escape(service.message)}"))


@services_app.command("router")
def router(
    host: Annotated[str, typer.Option(help="address to listen on")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="port to listen on")] = 8100,
    database_url: Annotated[
        str | None, typer.Option("--database-url", help="default: $ZHISUAN_DATABASE_URL", show_default=False)
    ] = None,
    rate_limit_storage: Annotated[
        str, typer.Option(help="where per-key limits are counted: memory:// or redis://host:port (shared)")
    ] = "memory://",
) -> None:
    """Serve every service's endpoint (/v1/services/{tenant}/{name}/...) from this process."""
    from api.db import make_engine
    from api.serving_store import SqlServing
    from api.settings import Settings
    from scheduler.live.serving.router import RouterConfig, run

    settings = Settings.from_env()
    engine = make_engine(database_url or settings.database_url, busy_timeout_ms=settings.busy_timeout_ms)
    Console(stderr=True).print(f"serving endpoints on http://{host}:{port}/v1/services/<tenant>/<name>/...")
    run(SqlServing(engine), host, port, RouterConfig(rate_limit_storage=rate_limit_storage))


def service_of_job(spec: JobSpec | dict[str, Any]) -> str | None:
    """The service id a replica job's spec is labelled with (None: not a replica)."""
    labels = spec.labels if isinstance(spec, JobSpec) else spec.get("labels") or {}
    value = labels.get(SERVICE_LABEL)
    return str(value) if value else None
