"""``zhisuan kube``: check what Zhisuan makes of a Kubernetes cluster before switching its inventory on.

``zhisuan kube nodes FILE...`` reads Node objects as ``kubectl get nodes -o json`` (or ``-o yaml``) prints them —
a ``List``/``NodeList`` or single Nodes, several YAML documents per file allowed — and shows what the Kubernetes
inventory makes of each: pool, model, vendor, whole devices, CPU, memory, island/switch, schedulable or not and
why, virtualised resources seen; and which nodes it leaves out and why::

    kubectl get nodes -o json > nodes.json
    zhisuan kube nodes nodes.json
    zhisuan kube nodes nodes.json -o json
    zhisuan kube raycluster nodes.json > raycluster.yaml     # the RayCluster for those nodes

It exits 2 when a file cannot be read or holds something other than Nodes (one line naming the file), and 0
otherwise — nodes left out are a finding to read, not a failure of the command.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
import yaml
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from api.commands.common import OutputOpt, handle_errors
from api.commands.render import Fmt, emit, stderr
from scheduler.errors import ConfigError
from scheduler.live.inventory.base import Inventory, InventoryNode
from scheduler.live.inventory.kubernetes import NodeMapper, inventory_from_objects, node_objects
from scheduler.live.inventory.kubernetes_names import load_kubernetes_names

kube_app = typer.Typer(help="Check a Kubernetes cluster against Zhisuan's inventory.", no_args_is_help=True)


@kube_app.callback()
def _kube() -> None:
    """Check a Kubernetes cluster against Zhisuan's inventory (a group, so ``kube nodes`` keeps its name)."""


def read_node_files(paths: list[Path]) -> list[dict[str, Any]]:
    """Every Node object in the files; raises :class:`ConfigError` naming the file and the problem."""
    objects: list[dict[str, Any]] = []
    for path in paths:
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigError(path, "", f"cannot read file: {exc.strerror or exc}") from exc
        try:
            documents = [d for d in yaml.safe_load_all(text) if d is not None]
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f"line {mark.line + 1}: " if mark is not None else ""
            raise ConfigError(path, "", f"neither JSON nor YAML: {where}{getattr(exc, 'problem', exc)}") from exc
        if not documents:
            raise ConfigError(path, "", "no Node objects in the file")
        for index, document in enumerate(documents):
            try:
                objects.extend(node_objects(document))
            except ValueError as exc:
                where = f"document {index + 1}" if len(documents) > 1 else ""
                raise ConfigError(path, where, str(exc)) from exc
    return objects


def node_report(seen: InventoryNode) -> dict[str, Any]:
    n = seen.node
    return {
        "name": n.id,
        "pool": n.pool,
        "model": n.model,
        "vendor": seen.vendor,
        "devices": n.devices,
        "device_resource": seen.device_resource,
        "cpu": n.cpu_milli / 1000,
        "memory_gib": round(n.memory_mib / 1024, 1),
        "site": n.site,
        "region": n.region,
        "zone": seen.zone,
        "island": n.island,
        "switch": n.switch,
        "schedulable": seen.schedulable,
        "reasons": list(seen.reasons),
        "virtual": seen.virtual,
        "registered_devices": [
            {"id": d.id, "index": d.index, "split": d.split, "memory_mib": d.memory_mib, "healthy": d.healthy}
            for d in seen.registered
        ],
        "unknown_resources": seen.unknown_resources,
    }


def inventory_report(inventory: Inventory) -> dict[str, Any]:
    return {
        "nodes": [node_report(n) for n in inventory.nodes],
        "left_out": [{"name": o.name, "reason": o.reason} for o in inventory.left_out],
        "summary": {
            "nodes": len(inventory.nodes),
            "schedulable": len(inventory.schedulable()),
            "left_out": len(inventory.left_out),
            "devices": sum(n.node.devices for n in inventory.nodes),
        },
    }


def _print_table(console: Console, inventory: Inventory) -> None:
    table = Table(box=None, header_style="bold")
    for column in ("NODE", "POOL", "VENDOR", "DEV", "CPU", "MEM GiB", "ISLAND", "SWITCH", "SCHEDULABLE", "NOTES"):
        table.add_column(column)
    for seen in inventory.nodes:
        n = seen.node
        notes = list(seen.reasons)
        if seen.virtual:
            notes.append("virtual: " + ", ".join(f"{k}={v:g}" for k, v in sorted(seen.virtual.items())))
        if seen.unknown_resources:
            notes.append("unknown: " + ", ".join(f"{k}={v}" for k, v in sorted(seen.unknown_resources.items())))
        table.add_row(
            escape(n.id),
            escape(n.pool),
            seen.vendor or "-",
            str(n.devices),
            f"{n.cpu_milli / 1000:g}",
            f"{n.memory_mib / 1024:.0f}",
            escape(n.island if n.island != n.id else "-"),
            escape(n.switch if n.switch != n.id else "-"),
            "yes" if seen.schedulable else "[red]no[/red]",
            escape("; ".join(notes)),
        )
    console.print(table)
    if inventory.left_out:
        left = Table(title="left out", box=None, header_style="bold", title_justify="left")
        left.add_column("NODE")
        left.add_column("WHY")
        for item in inventory.left_out:
            left.add_row(escape(item.name), escape(item.reason))
        console.print(left)
    schedulable = len(inventory.schedulable())
    console.print(
        f"{len(inventory.nodes)} node(s), {schedulable} schedulable, "
        f"{sum(n.node.devices for n in inventory.nodes)} device(s); {len(inventory.left_out)} left out"
    )


@kube_app.command("nodes")
@handle_errors
def nodes(
    files: Annotated[list[Path], typer.Argument(help="files from `kubectl get nodes -o json|yaml`")],
    output: OutputOpt = Fmt.TABLE,
    names: Annotated[Path | None, typer.Option(help="vendor name table (default: seeds/kubernetes.yaml)")] = None,
) -> None:
    """Show what Zhisuan's Kubernetes inventory makes of each Node, and which it leaves out and why."""
    objects = read_node_files(files)
    mapper = NodeMapper(load_kubernetes_names(names) if names is not None else None)
    inventory = inventory_from_objects(objects, mapper)
    emit(inventory_report(inventory), output, lambda console: _print_table(console, inventory))


@kube_app.command("raycluster")
@handle_errors
def raycluster_command(
    files: Annotated[list[Path], typer.Argument(help="files from `kubectl get nodes -o json|yaml`")],
    name: Annotated[str, typer.Option(help="RayCluster name")] = "zhisuan",
    namespace: Annotated[str, typer.Option(help="namespace")] = "zhisuan",
    image: Annotated[str, typer.Option(help="Ray image (its Ray version must be Zhisuan's)")] = "rayproject/ray:2.60.0",
) -> None:
    """Print the RayCluster (YAML) for these Nodes: head without CPUs, one worker group per pool or island."""
    from scheduler.live.kuberay import KubeRayOptions, raycluster

    inventory = inventory_from_objects(read_node_files(files))
    for item in inventory.left_out:
        stderr().print(f"left out {escape(item.name)}: {escape(item.reason)}")
    options = KubeRayOptions(name=name, namespace=namespace, image=image)
    typer.echo(yaml.safe_dump(raycluster(inventory, options), sort_keys=False), nl=False)
