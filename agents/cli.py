"""``zhisuan agent ...``: run the node agent, print what it discovers, print the node's Ray declaration.

The main CLI mounts this app as ``zhisuan agent`` (``app.add_typer(agents.cli.app, name="agent")``)::

    zhisuan agent run --api-url http://api:8000 --token $NODE_TOKEN --exporter-port 9400
    zhisuan agent run --emulate H100:8 --api-url http://127.0.0.1:8000 --token dev   # no accelerators here
    zhisuan agent discover                  # devices + one slow sample, as JSON (hardware checks)
    zhisuan agent ray-spec --emulate Ascend910B:8 --site bj1
"""

from __future__ import annotations

import json
import logging
import signal
import threading
from typing import Annotated

import typer

from agents.agent import Agent, AgentConfig, AgentStopped, core_node, export_to
from agents.exporter import TelemetryStore, start_exporter
from agents.shims import VENDORS, make_shim
from agents.shims.base import Shim
from agents.shims.emulated import EmulatedShim
from scheduler.ray_node import ray_node_spec

app = typer.Typer(help="Node agent: accelerator discovery, telemetry, health, Prometheus export.", no_args_is_help=True)

VendorOpt = Annotated[
    list[str] | None, typer.Option("--vendor", help=f"vendor shims to try (default: all of {', '.join(VENDORS)})")
]
EmulateOpt = Annotated[
    str | None, typer.Option("--emulate", help="emulated devices instead of real ones, MODEL:COUNT (e.g. H100:8)")
]


def build_shims(
    vendors: list[str] | None, emulate: str | None, node_id: str, seed: int, timeout_s: float
) -> list[Shim]:
    if emulate:
        model, _, count = emulate.partition(":")
        return [EmulatedShim(model, devices=int(count or 8), seed=seed, node=node_id)]
    return [make_shim(v, timeout_s=timeout_s) for v in (vendors or VENDORS)]


def _labels(pairs: list[str] | None) -> dict[str, str]:
    out = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep:
            raise typer.BadParameter(f"label {pair!r} is not KEY=VALUE")
        out[key] = value
    return out


@app.command()
def run(
    api_url: Annotated[str, typer.Option(envvar="ZHISUAN_API_URL", help="API base URL")] = "http://127.0.0.1:8000",
    token: Annotated[str, typer.Option(envvar="ZHISUAN_NODE_TOKEN", help="node token issued by the operator")] = "",
    node_id: Annotated[str | None, typer.Option(help="node id (default: hostname)")] = None,
    interval: Annotated[float, typer.Option(help="seconds between ticks")] = 1.0,
    slow_every: Annotated[int, typer.Option(help="read slow metrics every N ticks")] = 30,
    buffer: Annotated[int, typer.Option(help="batches kept while the API is unreachable")] = 600,
    vendor: VendorOpt = None,
    emulate: EmulateOpt = None,
    seed: Annotated[int, typer.Option(help="seed of the emulated devices")] = 0,
    exporter_port: Annotated[int, typer.Option(help="Prometheus port (0: no exporter)")] = 9400,
    exporter_addr: Annotated[str, typer.Option(help="Prometheus bind address")] = "0.0.0.0",
    site: str = "default",
    region: str = "default",
    tier: str = "cloud",
    island: str = "",
    switch: str = "",
    label: Annotated[list[str] | None, typer.Option(help="extra node label KEY=VALUE (repeatable)")] = None,
    tool_timeout: Annotated[float, typer.Option(help="timeout of one vendor tool call (s)")] = 5.0,
    ticks: Annotated[int | None, typer.Option(help="stop after N ticks (default: run until SIGTERM)")] = None,
) -> None:
    """Register with the API and send heartbeats with telemetry until stopped."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    config = AgentConfig(
        api_url=api_url,
        node_token=token,
        interval_s=interval,
        slow_every=slow_every,
        buffer_max_batches=buffer,
        site=site,
        region=region,
        tier=tier,
        island=island,
        switch=switch,
        labels=_labels(label),
        **({"node_id": node_id} if node_id else {}),
    )
    shims = build_shims(vendor, emulate, config.node_id, seed, tool_timeout)
    store = TelemetryStore(node=config.node_id)
    agent = Agent(config, shims, on_tick=export_to(store))
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    # A vendor tool that timed out or an NVML that failed once is tried again before the node registers.
    devices = agent.discover_with_retry(stop)
    typer.echo(f"{len(devices)} devices: " + ", ".join(f"{d.vendor}:{d.index}:{d.model or d.name}" for d in devices))
    for failed in agent.failed_shims:
        typer.echo(f"{failed.vendor}: {failed.status.reason} (tried again while the agent runs)", err=True)
    if exporter_port:
        server, _thread, _registry = start_exporter(store, exporter_port, exporter_addr)
        typer.echo(f"metrics on http://{exporter_addr}:{server.server_port}/metrics")
    try:
        agent.run(stop=stop, max_ticks=ticks)
    except AgentStopped as err:
        typer.echo(f"agent stopped: {err}", err=True)
        raise typer.Exit(code=2) from err
    except KeyboardInterrupt:
        pass
    finally:
        agent.close()


@app.command()
def discover(
    vendor: VendorOpt = None,
    emulate: EmulateOpt = None,
    tool_timeout: float = 5.0,
) -> None:
    """Print discovered devices, vendor status and one full (slow) sample per device as JSON."""
    shims = build_shims(vendor, emulate, "local", 0, tool_timeout)
    out: dict[str, object] = {"vendors": [], "devices": [], "samples": []}
    for shim in shims:
        devices = shim.discover()
        samples = shim.sample(fast=False) if devices else []
        out["vendors"].append(shim.status.model_dump(mode="json"))  # type: ignore[attr-defined]
        out["devices"].extend(d.model_dump(mode="json") for d in devices)  # type: ignore[attr-defined]
        out["samples"].extend(s.model_dump(mode="json") for s in samples)  # type: ignore[attr-defined]
        shim.close()
    typer.echo(json.dumps(out, indent=2))


@app.command("ray-spec")
def ray_spec(
    vendor: VendorOpt = None,
    emulate: EmulateOpt = None,
    node_id: Annotated[str | None, typer.Option(help="node id (default: hostname)")] = None,
    site: str = "default",
    island: str = "",
) -> None:
    """Print the Ray resources and labels this node would declare, and the matching ``ray start`` arguments."""
    config = AgentConfig(
        api_url="http://unused", node_token="", site=site, island=island, **({"node_id": node_id} if node_id else {})
    )
    agent = Agent(config, build_shims(vendor, emulate, config.node_id, 0, 5.0))
    agent.discover()
    descriptor = agent.node_descriptor()
    node = core_node(descriptor)
    if node is None:
        typer.echo("no accelerator of a known catalog model found; nothing to declare", err=True)
        raise typer.Exit(code=1)
    spec = ray_node_spec(node, descriptor.vendor)
    typer.echo(json.dumps({"spec": spec.model_dump(), "ray_start_args": spec.ray_start_args()}, indent=2))
    agent.close()
