"""Administering a center: ``zhisuan admin tenant | user | queue | quota | token | node-token``."""

from __future__ import annotations

import json
import re
import sys
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from api.commands.common import (
    EXIT_USAGE,
    OutputOpt,
    ProfileOpt,
    TokenOpt,
    UrlOpt,
    connect,
    fail,
    handle_errors,
)
from api.commands.render import (
    Fmt,
    emit,
    key_values,
    stdout,
    when,
)
from api.commands.views import queues_table

admin_app = typer.Typer(help="Administer a center: tenants, users, queues and quotas, tokens.", no_args_is_help=True)
tenant_app = typer.Typer(help="Tenants (center admins).", no_args_is_help=True)
user_app = typer.Typer(help="Users of a tenant.", no_args_is_help=True)
quota_app = typer.Typer(help="Quotas of queues (center admins).", no_args_is_help=True)
queue_app = typer.Typer(help="Queues (center admins).", no_args_is_help=True)
token_app = typer.Typer(help="API tokens.", no_args_is_help=True)
admin_app.add_typer(tenant_app, name="tenant")
admin_app.add_typer(user_app, name="user")
admin_app.add_typer(queue_app, name="queue")
admin_app.add_typer(quota_app, name="quota")
admin_app.add_typer(token_app, name="token")


def _tenants_table(console: Console, items: list[dict[str, Any]]) -> None:
    t = Table(box=None, header_style="bold")
    for column in ("id", "type", "tier", "weight", "domestic", "max_active_jobs"):
        t.add_column(column)
    for item in items:
        t.add_row(
            *(escape(str(item.get(c, "-"))) for c in ("id", "type", "tier", "weight", "domestic", "max_active_jobs"))
        )
    console.print(t if items else "No tenants.")


@tenant_app.command("create")
@handle_errors
def tenant_create(
    tenant_id: Annotated[str, typer.Argument(help="tenant id, e.g. acme", show_default=False)],
    type: Annotated[
        str | None, typer.Option("--type", help="government, enterprise, sme, institute, university, individual")
    ] = None,
    tier: Annotated[str | None, typer.Option(help="service tier: basic, standard, premium")] = None,
    weight: Annotated[float | None, typer.Option(help="fair-share weight")] = None,
    domestic: Annotated[str | None, typer.Option(help="domestic accelerators: required, preferred, any")] = None,
    max_active_jobs: Annotated[int | None, typer.Option(help="cap on pending + running jobs")] = None,
    url: UrlOpt = None,
    token: TokenOpt = None,
    profile: ProfileOpt = None,
    output: OutputOpt = Fmt.TABLE,
) -> None:
    """Create a tenant."""
    with connect(url, token, profile) as client:
        created = client.create_tenant(
            tenant_id, type=type, tier=tier, weight=weight, domestic=domestic, max_active_jobs=max_active_jobs
        )
    emit(created.to_dict(), output, lambda c: _tenants_table(c, [created.to_dict()]))


@tenant_app.command("list")
@handle_errors
def tenant_list(
    url: UrlOpt = None, token: TokenOpt = None, profile: ProfileOpt = None, output: OutputOpt = Fmt.TABLE
) -> None:
    """Every tenant."""
    with connect(url, token, profile) as client:
        items = [t.to_dict() for t in client.tenants()]
    emit(items, output, lambda c: _tenants_table(c, items))


@tenant_app.command("show")
@handle_errors
def tenant_show(
    tenant_id: Annotated[str, typer.Argument(show_default=False)],
    url: UrlOpt = None,
    token: TokenOpt = None,
    profile: ProfileOpt = None,
    output: OutputOpt = Fmt.TABLE,
) -> None:
    """One tenant."""
    with connect(url, token, profile) as client:
        item = client.tenant(tenant_id).to_dict()
    emit(
        item,
        output,
        lambda c: key_values(
            c, [(k, escape(json.dumps(v) if isinstance(v, dict | list) else str(v))) for k, v in item.items()]
        ),
    )


def _users_table(console: Console, items: list[dict[str, Any]]) -> None:
    t = Table(box=None, header_style="bold")
    for column in ("id", "name", "tenant", "role", "disabled"):
        t.add_column(column)
    for item in items:
        t.add_row(*(escape(str(item.get(c, "-"))) for c in ("id", "name", "tenant", "role", "disabled")))
    console.print(t if items else "No users.")


@user_app.command("create")
@handle_errors
def user_create(
    name: Annotated[str, typer.Argument(help="user name, unique in its tenant", show_default=False)],
    tenant: Annotated[str | None, typer.Option(help="tenant (default: yours; none for a center admin)")] = None,
    role: Annotated[str, typer.Option(help="tenant-user, tenant-admin or center-admin")] = "tenant-user",
    url: UrlOpt = None,
    token: TokenOpt = None,
    profile: ProfileOpt = None,
    output: OutputOpt = Fmt.TABLE,
) -> None:
    """Create a user (then give it a token with `zhisuan admin token create --user NAME`)."""
    with connect(url, token, profile) as client:
        created = client.create_user(name, tenant=tenant, role=role)
    emit(created.to_dict(), output, lambda c: _users_table(c, [created.to_dict()]))


@user_app.command("list")
@handle_errors
def user_list(
    tenant: Annotated[str | None, typer.Option(help="center admins: only this tenant")] = None,
    url: UrlOpt = None,
    token: TokenOpt = None,
    profile: ProfileOpt = None,
    output: OutputOpt = Fmt.TABLE,
) -> None:
    """Users you may manage."""
    with connect(url, token, profile) as client:
        items = [u.to_dict() for u in client.users(tenant=tenant)]
    emit(items, output, lambda c: _users_table(c, items))


def _amount(value: str | None, option: str) -> float | str | None:
    """An option value: a number, ``none`` (clear it), or not given (keep what is set, the sentinel ``"keep"``)."""
    if value is None:
        return "keep"
    if value.strip().lower() in ("none", "null", "unset", "-"):
        return None
    try:
        number = float(value)
    except ValueError as exc:
        raise typer.BadParameter(f"{value!r} is not a number (or 'none' to clear it)", param_hint=option) from exc
    if number < 0:
        raise typer.BadParameter(f"{value!r} is negative", param_hint=option)
    return number


AmountOpt = Annotated[str | None, typer.Option(metavar="N|none", show_default=False)]


@quota_app.command("set")
@handle_errors
def quota_set(
    queue: Annotated[str, typer.Argument(help="queue name", show_default=False)],
    flavor: Annotated[str, typer.Option(help="accelerator model (devices), or ncu", show_default=False)],
    guarantee: AmountOpt = None,
    deserved: AmountOpt = None,
    limit: AmountOpt = None,
    borrowing_limit: AmountOpt = None,
    remove: Annotated[bool, typer.Option("--remove", help="drop this flavor's quota")] = False,
    url: UrlOpt = None,
    token: TokenOpt = None,
    profile: ProfileOpt = None,
    output: OutputOpt = Fmt.TABLE,
) -> None:
    """Change one flavor's quota of a queue (read, change, write back); other flavors are kept."""
    changes = {
        "guarantee": _amount(guarantee, "--guarantee"),
        "deserved": _amount(deserved, "--deserved"),
        "limit": _amount(limit, "--limit"),
        "borrowing_limit": _amount(borrowing_limit, "--borrowing-limit"),
    }
    if not remove and all(v == "keep" for v in changes.values()):
        raise fail(
            "nothing to change: give --guarantee, --deserved, --limit, --borrowing-limit or --remove", EXIT_USAGE
        )
    with connect(url, token, profile) as client:
        current = client.queue(queue)
        body = current.spec()
        quota: dict[str, dict[str, Any]] = body["quota"]
        if remove:
            quota.pop(flavor, None)
        else:
            entry = dict(quota.get(flavor, {}))
            for key, value in changes.items():
                if value == "keep":
                    continue
                if value is None and key == "guarantee":
                    entry["guarantee"] = 0.0
                elif value is None:
                    entry.pop(key, None)
                else:
                    entry[key] = value
            quota[flavor] = entry
        updated = client.put_queue(queue, body)
    emit(updated.to_dict(), output, lambda c: queues_table(c, [updated]))


@queue_app.command("create")
@handle_errors
def queue_create(
    name: Annotated[str, typer.Argument(help="queue name", show_default=False)],
    tenant: Annotated[str | None, typer.Option(help="tenant of a top-level queue")] = None,
    parent: Annotated[str | None, typer.Option(help="parent queue (a child inherits its tenant)")] = None,
    weight: Annotated[float | None, typer.Option(help="fair-share weight among siblings")] = None,
    domestic: Annotated[str | None, typer.Option(help="required, preferred or any")] = None,
    url: UrlOpt = None,
    token: TokenOpt = None,
    profile: ProfileOpt = None,
    output: OutputOpt = Fmt.TABLE,
) -> None:
    """Create (or replace) a queue without quotas; set them with `zhisuan admin quota set`."""
    body: dict[str, Any] = {"tenant": tenant, "parent": parent, "quota": {}}
    if weight is not None:
        body["weight"] = weight
    if domestic is not None:
        body["domestic"] = domestic
    with connect(url, token, profile) as client:
        created = client.put_queue(name, body)
    emit(created.to_dict(), output, lambda c: queues_table(c, [created]))


@queue_app.command("delete")
@handle_errors
def queue_delete(
    name: Annotated[str, typer.Argument(help="queue name", show_default=False)],
    url: UrlOpt = None,
    token: TokenOpt = None,
    profile: ProfileOpt = None,
) -> None:
    """Delete a queue (refused while it has active jobs)."""
    with connect(url, token, profile) as client:
        client.delete_queue(name)
    stdout().print(f"Deleted queue {escape(name)}")


_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw]?)\s*$")
_UNIT_S = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_duration(text: str) -> float:
    """``3600``, ``90s``, ``30m``, ``12h``, ``30d``, ``2w`` → seconds."""
    match = _DURATION.match(text.lower())
    if not match:
        raise typer.BadParameter(f"{text!r} is not a duration like 3600, 30m, 12h or 30d", param_hint="--expires-in")
    return float(match.group(1)) * _UNIT_S[match.group(2)]


def _tokens_table(console: Console, items: list[dict[str, Any]]) -> None:
    t = Table(box=None, header_style="bold")
    columns = ("id", "name", "user", "tenant", "role", "node_id", "expires_at", "revoked_at", "last_used_at")
    for column in columns:
        t.add_column(column.removesuffix("_at").replace("_", " "))
    for item in items:
        values = []
        for c in columns:
            value = item.get(c)
            values.append(
                when(value) if c.endswith("_at") and isinstance(value, int | float) else escape(str(value or "-"))
            )
        t.add_row(*values)
    console.print(t if items else "No tokens.")


@token_app.command("create")
@handle_errors
def token_create(
    user: Annotated[
        str | None, typer.Option(help="user id, e.g. alice@acme (default: yourself)", show_default=False)
    ] = None,
    name: Annotated[str, typer.Option(help="a label, e.g. laptop or ci")] = "",
    expires_in: Annotated[str | None, typer.Option(help="lifetime: 3600, 30m, 12h, 30d (default: no expiry)")] = None,
    url: UrlOpt = None,
    token: TokenOpt = None,
    profile: ProfileOpt = None,
    output: OutputOpt = Fmt.TABLE,
) -> None:
    """Create an API token; the secret is printed once."""
    seconds = parse_duration(expires_in) if expires_in is not None else None
    with connect(url, token, profile) as client:
        created = client.create_token(user, name=name, expires_in_s=seconds)

    def table(console: Console) -> None:
        expiry = f", expires {when(created.expires_at)}" if created.expires_at else ""
        console.print(
            f"Token {escape(created.id)} for {escape(str(created.user))} ({created.role}{expiry}). Shown once:"
        )
        sys.stdout.write(f"{created.token}\n")

    emit(created.to_dict(), output, table)


@token_app.command("list")
@handle_errors
def token_list(
    url: UrlOpt = None, token: TokenOpt = None, profile: ProfileOpt = None, output: OutputOpt = Fmt.TABLE
) -> None:
    """Tokens you may manage (no secrets)."""
    with connect(url, token, profile) as client:
        items = [t.to_dict() for t in client.tokens()]
    emit(items, output, lambda c: _tokens_table(c, items))


@token_app.command("revoke")
@handle_errors
def token_revoke(
    token_id: Annotated[str, typer.Argument(help="token id (see `admin token list`)", show_default=False)],
    url: UrlOpt = None,
    token: TokenOpt = None,
    profile: ProfileOpt = None,
) -> None:
    """Revoke a token: it stops working at once."""
    with connect(url, token, profile) as client:
        client.revoke_token(token_id)
    stdout().print(f"Revoked token {escape(token_id)}")


@admin_app.command("node-token")
@handle_errors
def node_token(
    node: Annotated[str | None, typer.Option(help="bind the token to this node id")] = None,
    name: Annotated[str, typer.Option(help="a label")] = "",
    expires_in: Annotated[str | None, typer.Option(help="lifetime: 3600, 30m, 12h, 30d (default: no expiry)")] = None,
    url: UrlOpt = None,
    token: TokenOpt = None,
    profile: ProfileOpt = None,
    output: OutputOpt = Fmt.TABLE,
) -> None:
    """A node-agent token, for `zhisuan agent run --token`; printed once."""
    seconds = parse_duration(expires_in) if expires_in is not None else None
    with connect(url, token, profile) as client:
        created = client.node_token(node, name=name, expires_in_s=seconds)

    def table(console: Console) -> None:
        bound = f" bound to node {escape(created.node_id)}" if created.node_id else ""
        console.print(f"Node-agent token {escape(created.id)}{bound}. Shown once:")
        sys.stdout.write(f"{created.token}\n")

    emit(created.to_dict(), output, table)
