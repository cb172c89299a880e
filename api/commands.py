"""The API commands of ``zhisuan``: submit and watch jobs, read queues, usage and inventory, administer a center.

They talk to the server through :class:`api.client.ZhisuanClient` with the URL and token of
:func:`api.profiles.resolve` (``--url``/``--token``/``--profile``, ``$ZHISUAN_URL``/``$ZHISUAN_TOKEN``, the config
file written by ``zhisuan login``)::

    zhisuan login --url http://127.0.0.1:8000 --token zs_...
    zhisuan submit job.yaml --wait
    zhisuan list --state pending -o json
    zhisuan why j0193f2c4a1b7e0d5c3a9
    zhisuan logs j0193f2c4a1b7e0d5c3a9 -f
    zhisuan admin quota set acme --flavor H100 --deserved 64 --limit 128

Output is a human table unless ``-o json`` or ``-o yaml`` (the API's own keys, for scripts). Exit status: 0 done,
1 the API answered a problem (its message on stderr) or the job failed, 2 bad usage or an invalid spec (checked
before any request), 3 the server cannot be reached.
"""

from __future__ import annotations

import calendar
import functools
import json
import re
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, ParamSpec, TypeVar

import typer
import yaml
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from api.client import ApiError, Unreachable, ZhisuanClient
from api.models import EtaOut, JobOut, NodeOut, QueueOut, ReasonOut, UsageOut
from api.profiles import ConfigFileError, Profile, config_path, remove_profile, resolve, save_profile
from scheduler.errors import ConfigError, validate_model
from scheduler.spec import JobSpec, load_spec

P = ParamSpec("P")
R = TypeVar("R")

EXIT_API = 1
EXIT_USAGE = 2
EXIT_UNREACHABLE = 3
#: Extra attempts after a failed connection, 429 or 503 (waits of about 0.25, 0.5 and 1 s, or Retry-After).
CLI_RETRIES = 3


class Fmt(StrEnum):
    TABLE = "table"
    JSON = "json"
    YAML = "yaml"


OutputOpt = Annotated[Fmt, typer.Option("--output", "-o", help="table, or json/yaml with the API's keys")]
UrlOpt = Annotated[
    str | None, typer.Option("--url", help="API URL (default: $ZHISUAN_URL, then the profile)", show_default=False)
]
TokenOpt = Annotated[
    str | None,
    typer.Option("--token", help="API token (default: $ZHISUAN_TOKEN, then the profile)", show_default=False),
]
ProfileOpt = Annotated[
    str | None,
    typer.Option("--profile", help="config profile (default: $ZHISUAN_PROFILE, then 'default')", show_default=False),
]
JobArg = Annotated[
    str, typer.Argument(help="job id (as printed by submit/list), or a name: your newest job of that name")
]
JOB_ID = re.compile(r"^j[0-9a-f]{19}$")

STATE_STYLE = {
    "pending": "yellow",
    "starting": "cyan",
    "running": "green",
    "cancelling": "magenta",
    "succeeded": "bold green",
    "failed": "bold red",
    "cancelled": "dim",
}


def _stdout() -> Console:
    # Created per use so that it writes to the sys.stdout of the moment (tests swap it); fixed width off a tty.
    probe = Console()
    return probe if probe.is_terminal else Console(width=200, highlight=False)


def _stderr() -> Console:
    return Console(stderr=True, highlight=False)


def fail(message: str, code: int) -> typer.Exit:
    _stderr().print(f"[red]error:[/red] {escape(message)}", soft_wrap=True)
    return typer.Exit(code)


def handle_errors(func: Callable[P, R]) -> Callable[P, R]:
    """Turn the client's and the loaders' exceptions into one line on stderr and the documented exit status."""

    @functools.wraps(func)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return func(*args, **kwargs)
        except Unreachable as exc:
            raise fail(str(exc), EXIT_UNREACHABLE) from exc
        except ApiError as exc:
            message = str(exc)
            if exc.status == 401:
                message += "; log in again with `zhisuan login` (or pass --token)"
            raise fail(message, EXIT_API) from exc
        except (ConfigError, ConfigFileError) as exc:
            raise fail(str(exc), EXIT_USAGE) from exc
        except KeyboardInterrupt as exc:
            raise fail("interrupted", 130) from exc

    return wrapper


@contextmanager
def connect(
    url: str | None, token: str | None, profile: str | None, *, need_token: bool = True
) -> Iterator[ZhisuanClient]:
    settings = resolve(url, token, profile)
    if need_token and not settings.token:
        raise fail(
            f"no API token for profile {settings.profile!r}: run `zhisuan login` (or pass --token / set ZHISUAN_TOKEN)",
            EXIT_USAGE,
        )
    with ZhisuanClient(settings.url, settings.token, retries=CLI_RETRIES) as client:
        yield client


def emit(data: Any, fmt: Fmt, table: Callable[[Console], None]) -> None:
    """Print ``data`` as JSON/YAML, or call ``table`` to print it for humans."""
    if fmt is Fmt.JSON:
        sys.stdout.write(json.dumps(data, indent=2, ensure_ascii=False) + "\n")
    elif fmt is Fmt.YAML:
        sys.stdout.write(yaml.safe_dump(data, sort_keys=False, allow_unicode=True))
    else:
        table(_stdout())


# ---------------------------------------------------------------------------------------------------- format


def when(ts: float | None) -> str:
    """``2026-11-03 14:32 UTC`` (the date left out for today)."""
    if ts is None:
        return "-"
    moment = datetime.fromtimestamp(ts, UTC)
    if moment.date() == datetime.now(UTC).date():
        return moment.strftime("%H:%M UTC")
    return moment.strftime("%Y-%m-%d %H:%M UTC")


def duration(seconds: float) -> str:
    """``45 s``, ``12 min``, ``2 h 5 min``, ``3 d 4 h``."""
    seconds = abs(seconds)
    if seconds < 60:
        return f"{seconds:.0f} s"
    minutes = round(seconds / 60)
    if minutes < 60:
        return f"{minutes} min"
    hours, minutes = divmod(minutes, 60)
    if hours < 24:
        return f"{hours} h {minutes} min" if minutes else f"{hours} h"
    days, hours = divmod(hours, 24)
    return f"{days} d {hours} h" if hours else f"{days} d"


def relative(ts: float | None, now: float | None = None) -> str:
    """``in 12 min (14:32 UTC)`` or ``3 h ago (11:02 UTC)``."""
    if ts is None:
        return "unknown"
    delta = ts - (time.time() if now is None else now)
    span = duration(delta)
    if abs(delta) < 1:
        return f"now ({when(ts)})"
    return f"in {span} ({when(ts)})" if delta > 0 else f"{span} ago ({when(ts)})"


def ago(ts: float | None) -> str:
    if ts is None:
        return "-"
    return f"{duration(time.time() - ts)} ago"


def state_text(state: str) -> str:
    style = STATE_STYLE.get(state, "")
    return f"[{style}]{state}[/{style}]" if style else state


def _num(value: float | None) -> str:
    return "-" if value is None else f"{value:g}"


def job_size(job: JobOut) -> str:
    return f"{job.spec.workers}×{job.spec.devices_per_worker:g}"


def _reasons_line(reasons: list[ReasonOut]) -> str:
    return "; ".join(r.message or r.code for r in reasons[:2])


def _kv(console: Console, rows: list[tuple[str, str]], title: str | None = None) -> None:
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold")
    grid.add_column()
    for key, value in rows:
        grid.add_row(key, value)
    if title:
        console.print(title)
    console.print(grid)


# ---------------------------------------------------------------------------------------------------- login


@handle_errors
def login(
    url: UrlOpt = None,
    token: TokenOpt = None,
    profile: ProfileOpt = None,
) -> None:
    """Check a URL and token against the server (whoami) and store them in the config file (mode 0600)."""
    settings = resolve(url, token, profile)
    secret = settings.token
    if not secret:
        if not sys.stdin.isatty():
            raise fail("no token given: pass --token or set ZHISUAN_TOKEN", EXIT_USAGE)
        secret = typer.prompt("API token", hide_input=True).strip()
    with ZhisuanClient(settings.url, secret, retries=CLI_RETRIES) as client:
        me = client.whoami()
    path = save_profile(Profile(settings.profile, settings.url, secret))
    who = me.user or "node agent"
    tenant = f" of tenant {me.tenant}" if me.tenant else ""
    _stdout().print(
        f"Logged in to {escape(client.url)} as [bold]{escape(who)}[/bold] ({me.role}{escape(tenant)}); "
        f"profile {escape(settings.profile)!r} saved in {escape(str(path))}"
    )


@handle_errors
def logout(profile: ProfileOpt = None) -> None:
    """Forget a profile's URL and token."""
    name = resolve(profile=profile).profile
    if remove_profile(name):
        _stdout().print(f"Removed profile {name!r} from {config_path()}")
    else:
        _stdout().print(f"No profile {name!r} in {config_path()}")


@handle_errors
def whoami(
    url: UrlOpt = None, token: TokenOpt = None, profile: ProfileOpt = None, output: OutputOpt = Fmt.TABLE
) -> None:
    """Who the token belongs to: user, tenant, role."""
    with connect(url, token, profile) as client:
        me = client.whoami()
    emit(
        me.to_dict(),
        output,
        lambda c: _kv(
            c,
            [
                ("user", me.user or "-"),
                ("tenant", me.tenant or "-"),
                ("role", me.role),
                ("token", me.token_id or "-"),
                ("server", client.url),
            ],
        ),
    )


# ---------------------------------------------------------------------------------------------------- jobs


def job_ref(client: ZhisuanClient, ref: str) -> str:
    """A job id as given, or the id of the newest visible job named ``ref``."""
    if JOB_ID.match(ref):
        return ref
    for job in client.list_jobs(name=ref, limit=1):
        return job.id
    raise fail(f"no job with id or name {ref!r} (ids look like j0193f2c4a1b7e0d5c3a9; see `zhisuan list`)", EXIT_API)


def _load(file: Path, queue: str | None) -> JobSpec:
    spec = load_spec(file)
    changes: dict[str, Any] = {}
    if queue is not None:
        changes["queue"] = queue
    working_dir = spec.runtime_env.working_dir
    if working_dir is not None and not Path(working_dir).is_absolute():
        # Nodes know nothing of where the CLI ran: a relative working_dir means "here", on a shared disk.
        runtime_env = spec.runtime_env.model_dump(exclude_unset=True)
        changes["runtime_env"] = {**runtime_env, "working_dir": str(Path(working_dir).resolve())}
    if changes:
        data = {**spec.model_dump(exclude_unset=True), **changes}
        spec = validate_model(JobSpec, data, f"{file} (--queue)" if queue is not None else str(file))
    return spec


def _progress_line(job: JobOut, started: float) -> str:
    parts = [f"[bold]{escape(job.id)}[/bold] {escape(job.name)}: {state_text(job.state)}"]
    if job.attempt:
        parts.append(f"attempt {job.attempt}")
    if job.state == "pending":
        if job.reasons:
            parts.append(escape(_reasons_line(job.reasons)))
        if job.estimated_start is not None:
            parts.append(f"starts {relative(job.estimated_start)}")
    parts.append(f"waited {duration(time.time() - started)}")
    return " — ".join(parts)


@handle_errors
def submit(
    file: Annotated[Path, typer.Argument(help="job spec, YAML or JSON (see seeds/examples/)", show_default=False)],
    wait: Annotated[bool, typer.Option("--wait", help="watch the job until it runs or ends")] = False,
    queue: Annotated[str | None, typer.Option(help="queue (overrides the spec's)")] = None,
    idempotency_key: Annotated[
        str | None, typer.Option(help="makes a resubmission return the same job (default: a fresh key)")
    ] = None,
    timeout: Annotated[float | None, typer.Option(help="with --wait: give up after this many seconds")] = None,
    url: UrlOpt = None,
    token: TokenOpt = None,
    profile: ProfileOpt = None,
    output: OutputOpt = Fmt.TABLE,
) -> None:
    """Submit a job spec. The spec is checked here before anything is sent; --wait exits 1 if the job fails."""
    spec = _load(file, queue)
    with connect(url, token, profile) as client:
        job = client.submit(spec, idempotency_key=idempotency_key)
        if wait:
            started = time.time()
            err = _stderr()
            if output is Fmt.TABLE:
                _stdout().print(
                    f"Submitted [bold]{escape(job.id)}[/bold] ({escape(job.name)}) to queue {escape(str(job.queue))}"
                )
            try:
                with err.status(_progress_line(job, started)) as status:
                    job = client.wait(
                        job.id,
                        until="running",
                        timeout=timeout,
                        on_update=lambda j: status.update(_progress_line(j, started)),
                    )
            except TimeoutError as exc:
                raise fail(f"{exc}; it stays queued (see `zhisuan why {job.id}`)", EXIT_API) from exc
    if not wait:
        emit(
            job.to_dict(),
            output,
            lambda c: c.print(
                f"Submitted [bold]{escape(job.id)}[/bold] ({escape(job.name)}) to queue {escape(str(job.queue))}: "
                f"{state_text(job.state)}"
            ),
        )
        return
    emit(job.to_dict(), output, lambda c: c.print(f"{escape(job.id)}: {state_text(job.state)}{_placement_suffix(job)}"))
    if job.state in ("failed", "cancelled"):
        detail = f": {job.message}" if job.message else ""
        code = f" (exit code {job.exit_code})" if job.exit_code is not None else ""
        raise fail(f"job {job.id} {job.state}{detail}{code}", EXIT_API)


def _placement_suffix(job: JobOut) -> str:
    p = job.placement
    if p is None or not p.workers:
        return ""
    nodes = sorted({w.node for w in p.workers})
    where = nodes[0] if len(nodes) == 1 else f"{nodes[0]} +{len(nodes) - 1}"
    return f" on {escape(str(p.model))} ({escape(where)})"


@handle_errors
def list_jobs(
    state: Annotated[str | None, typer.Option(help="pending, running, succeeded, failed, ...")] = None,
    queue: Annotated[str | None, typer.Option(help="only this queue")] = None,
    kind: Annotated[str | None, typer.Option(help="training or inference")] = None,
    name: Annotated[str | None, typer.Option(help="only jobs with this name")] = None,
    tenant: Annotated[str | None, typer.Option(help="only this tenant (center admins)")] = None,
    all_tenants: Annotated[bool, typer.Option("--all-tenants", help="center admins: every tenant's jobs")] = False,
    limit: Annotated[int, typer.Option(min=1, help="at most this many jobs")] = 50,
    url: UrlOpt = None,
    token: TokenOpt = None,
    profile: ProfileOpt = None,
    output: OutputOpt = Fmt.TABLE,
) -> None:
    """Jobs, newest first."""
    with connect(url, token, profile) as client:
        if all_tenants and tenant is None:
            me = client.whoami()
            if me.role != "center-admin":
                raise fail(f"--all-tenants is for center admins; you are {me.role} of {me.tenant}", EXIT_USAGE)
        jobs = list(client.list_jobs(state=state, queue=queue, kind=kind, name=name, tenant=tenant, limit=limit))

    def table(console: Console) -> None:
        if not jobs:
            console.print("No jobs.")
            return
        show_tenant = all_tenants or tenant is not None or len({j.tenant for j in jobs}) > 1
        t = Table(box=None, header_style="bold")
        for column in (
            "id",
            "name",
            *(["tenant"] if show_tenant else []),
            "queue",
            "kind",
            "size",
            "state",
            "submitted",
            "note",
        ):
            t.add_column(column)
        for j in jobs:
            note = j.message or ""
            if j.state == "pending":
                note = _reasons_line(j.reasons) or (
                    f"starts {relative(j.estimated_start)}" if j.estimated_start else ""
                )
            elif j.state in ("running", "starting") and j.placement is not None:
                note = f"{j.placement.model} in {j.placement.pool}"
            t.add_row(
                j.id,
                escape(j.name),
                *([escape(str(j.tenant))] if show_tenant else []),
                escape(str(j.queue)),
                j.kind,
                job_size(j),
                state_text(j.state),
                ago(j.submitted_at),
                escape(note),
            )
        console.print(t)

    emit([j.to_dict() for j in jobs], output, table)


@handle_errors
def status(
    job_id: JobArg,
    url: UrlOpt = None,
    token: TokenOpt = None,
    profile: ProfileOpt = None,
    output: OutputOpt = Fmt.TABLE,
) -> None:
    """A job's state, placement, reasons, estimates and latest events."""
    with connect(url, token, profile) as client:
        job = client.get_job(job_ref(client, job_id))
        events = client.events(job.id) if output is Fmt.TABLE else []

    def table(console: Console) -> None:
        rows = [
            ("job", f"{escape(job.id)} ({escape(job.name)})"),
            ("state", state_text(job.state) + (f" (attempt {job.attempt})" if job.attempt else "")),
            ("owner", f"{escape(str(job.user))} @ {escape(str(job.tenant))}"),
            ("queue", escape(str(job.queue))),
            ("kind", f"{job.kind}, {job_size(job)} devices, priority {job.priority}"),
            ("submitted", when(job.submitted_at)),
        ]
        if job.started_at is not None:
            rows.append(("started", when(job.started_at)))
        if job.state == "pending":
            rows.append(("starts", relative(job.estimated_start)))
        if job.finished_at is not None:
            rows.append(("finished", when(job.finished_at)))
        elif job.estimated_finish is not None:
            rows.append(("finishes", relative(job.estimated_finish)))
        if job.placement is not None:
            p = job.placement
            rows.append(("placement", f"{p.model} in {p.pool} ({p.topology})"))
            for w in p.workers:
                rows.append((f"  rank {w.rank}", f"{escape(w.node)} devices {w.devices}"))
        for r in job.reasons:
            rows.append(("why", f"{escape(r.code)}: {escape(r.message)}"))
        if job.message:
            rows.append(("message", escape(job.message)))
        if job.exit_code is not None:
            rows.append(("exit code", str(job.exit_code)))
        _kv(console, rows)
        if events:
            t = Table(title="events", box=None, header_style="bold")
            for column in ("at", "event", "message"):
                t.add_column(column)
            for e in events[-10:]:
                t.add_row(when(e.at), e.kind, escape(e.message))
            console.print(t)

    emit(job.to_dict(), output, table)


@handle_errors
def logs(
    job_id: JobArg,
    follow: Annotated[bool, typer.Option("--follow", "-f", help="keep printing until the job ends")] = False,
    rank: Annotated[int, typer.Option(min=0, help="which worker's log")] = 0,
    poll: Annotated[float, typer.Option(help="with -f: seconds between polls", min=0.05)] = 0.5,
    url: UrlOpt = None,
    token: TokenOpt = None,
    profile: ProfileOpt = None,
    output: Annotated[
        Fmt, typer.Option("--output", "-o", help="table: the text as is; json/yaml: the API's log chunk (not with -f)")
    ] = Fmt.TABLE,
) -> None:
    """A worker's log (rank 0 by default); -f follows it until the job ends."""
    if follow and output is not Fmt.TABLE:
        raise fail("-o json/yaml reads the log once; leave out -f (or -o)", EXIT_USAGE)
    with connect(url, token, profile) as client:
        job_id = job_ref(client, job_id)
        if follow:
            for text in client.follow_logs(job_id, rank=rank, poll_s=poll):
                sys.stdout.write(text)
                sys.stdout.flush()
            return
        first = chunk = client.logs(job_id, rank=rank)
        texts = [chunk.text]
        while chunk.text and not chunk.complete and chunk.next_offset > chunk.offset:
            chunk = client.logs(job_id, rank=rank, offset=chunk.next_offset)
            if chunk.attempt != first.attempt:  # requeued while we read: what we have is the older attempt
                break
            texts.append(chunk.text)
    whole = {**chunk.to_dict(), "offset": first.offset, "text": "".join(texts)}
    if output is Fmt.TABLE:
        sys.stdout.write(whole["text"])
        sys.stdout.flush()
    else:
        emit(whole, output, lambda c: None)


@handle_errors
def cancel(
    job_id: JobArg,
    url: UrlOpt = None,
    token: TokenOpt = None,
    profile: ProfileOpt = None,
    output: OutputOpt = Fmt.TABLE,
) -> None:
    """Cancel a job: a pending one at once, a running one is stopped (cancelling, then cancelled)."""
    with connect(url, token, profile) as client:
        job = client.cancel(job_ref(client, job_id))
    emit(job.to_dict(), output, lambda c: c.print(f"{escape(job.id)}: {state_text(job.state)}"))


@handle_errors
def why(
    job_id: JobArg,
    url: UrlOpt = None,
    token: TokenOpt = None,
    profile: ProfileOpt = None,
    output: OutputOpt = Fmt.TABLE,
) -> None:
    """Why a job is waiting: the scheduler's reasons, pool by pool."""
    with connect(url, token, profile) as client:
        answer = client.why(job_ref(client, job_id))

    def table(console: Console) -> None:
        if not answer.reasons:
            if answer.state == "pending":
                console.print(f"{escape(answer.job_id)} is pending; the scheduler has not given a reason yet.")
            else:
                console.print(f"{escape(answer.job_id)} is {state_text(answer.state)}: it is not waiting.")
            return
        console.print(f"{escape(answer.job_id)} is {state_text(answer.state)} because:")
        t = Table(box=None, header_style="bold")
        for column in ("reason", "pool", "message"):
            t.add_column(column)
        for r in answer.reasons:
            t.add_row(escape(r.code), escape(r.pool or "-"), escape(r.message))
        console.print(t)
        if answer.updated_at is not None:
            console.print(f"[dim](as of {when(answer.updated_at)})[/dim]")

    emit(answer.to_dict(), output, table)


def eta_text(eta: EtaOut, now: float | None = None) -> str:
    """One line for humans: ``starts in 12 min (14:32 UTC), finishes in 2 h (16:32 UTC)``."""
    if eta.state == "pending":
        if eta.estimated_start is None:
            return "no estimate yet: no start is foreseen with the current queue and capacity"
        text = f"starts {relative(eta.estimated_start, now)}"
        if eta.estimated_finish is not None:
            text += f", finishes {relative(eta.estimated_finish, now)}"
        return text
    if eta.state in ("starting", "running", "cancelling"):
        if eta.estimated_finish is None:
            return f"{eta.state}; no finish estimate (no walltime given)"
        return f"{eta.state}; finishes {relative(eta.estimated_finish, now)}"
    return f"{eta.state}: nothing to estimate"


@handle_errors
def eta(
    job_id: JobArg,
    url: UrlOpt = None,
    token: TokenOpt = None,
    profile: ProfileOpt = None,
    output: OutputOpt = Fmt.TABLE,
) -> None:
    """When a job is expected to start and finish (the scheduler's own forecast)."""
    with connect(url, token, profile) as client:
        answer = client.eta(job_ref(client, job_id))

    def table(console: Console) -> None:
        console.print(f"{escape(answer.job_id)}: {eta_text(answer)}")
        if answer.computed_at is not None:
            console.print(f"[dim](forecast of {when(answer.computed_at)})[/dim]")

    emit(answer.to_dict(), output, table)


# ----------------------------------------------------------------------------------------- queues, usage, nodes


def _amount_text(value: float) -> str:
    return f"{round(value, 2):g}"


def _quota_text(queue: QueueOut) -> str:
    lines = []
    for flavor in sorted(set(queue.quota) | set(queue.usage)):
        q = queue.quota.get(flavor)
        used = queue.usage.get(flavor, 0.0)
        if q is None:
            lines.append(f"{flavor}: {_amount_text(used)} used")
            continue
        parts = [f"{_amount_text(used)} used"]
        if q.guarantee:
            parts.append(f"guarantee {q.guarantee:g}")
        if q.deserved is not None:
            parts.append(f"deserved {q.deserved:g}")
        if q.limit is not None:
            parts.append(f"limit {q.limit:g}")
        if q.borrowing_limit is not None:
            parts.append(f"borrow ≤ {q.borrowing_limit:g}")
        lines.append(f"{flavor}: {', '.join(parts)}")
    return "\n".join(lines) or "unlimited"


def queues_table(console: Console, items: list[QueueOut]) -> None:
    if not items:
        console.print("No queues.")
        return
    t = Table(box=None, header_style="bold", show_lines=False)
    for column in ("queue", "tenant", "parent", "quota (devices or ncu)", "pending", "running"):
        t.add_column(column, justify="right" if column in ("pending", "running") else "left")
    for q in items:
        t.add_row(
            escape(q.name),
            escape(q.tenant or "-"),
            escape(q.parent or "-"),
            escape(_quota_text(q)),
            str(q.pending),
            str(q.running),
        )
    console.print(t)


@handle_errors
def queues(
    url: UrlOpt = None, token: TokenOpt = None, profile: ProfileOpt = None, output: OutputOpt = Fmt.TABLE
) -> None:
    """Queues you can submit to (all of them for center admins), with quotas and usage."""
    with connect(url, token, profile) as client:
        items = client.queues()
    emit([q.to_dict() for q in items], output, lambda c: queues_table(c, items))


def month_range(month: str) -> tuple[float, float]:
    """``2026-11`` → epoch seconds of 2026-11-01 00:00 UTC and 2026-12-01 00:00 UTC."""
    match = re.fullmatch(r"(\d{4})-(\d{1,2})", month.strip())
    if not match or not 1 <= int(match.group(2)) <= 12:
        raise typer.BadParameter(f"{month!r} is not a month like 2026-11", param_hint="--month")
    year, mon = int(match.group(1)), int(match.group(2))
    start = calendar.timegm((year, mon, 1, 0, 0, 0))
    end = calendar.timegm((year + 1, 1, 1, 0, 0, 0)) if mon == 12 else calendar.timegm((year, mon + 1, 1, 0, 0, 0))
    return float(start), float(end)


def _usage_lines(console: Console, title: str, lines: dict[str, Any], currency: str) -> None:
    if not lines:
        return
    t = Table(title=title, box=None, header_style="bold")
    for column in (title.split()[-1], "NCU-h", "device-h", f"charge ({currency})"):
        t.add_column(column, justify="left" if column == title.split()[-1] else "right")
    for key, line in sorted(lines.items()):
        t.add_row(escape(key), f"{line.ncu_hours:,.2f}", f"{line.device_hours:,.2f}", f"{line.charge:,.2f}")
    console.print(t)


def usage_table(console: Console, u: UsageOut) -> None:
    rows = [
        ("tenant", escape(u.tenant or "-")),
        ("period", f"{when(u.start)} – {when(u.end)}"),
        ("NCU-hours", f"{u.ncu_hours:,.2f} ({u.free_ncu_hours:,.2f} free)"),
        ("device-hours", f"{u.device_hours:,.2f}"),
        ("charge", f"{u.charge:,.2f} {u.currency} (billable {u.billable_charge:,.2f})"),
        ("energy", f"{u.energy_kwh:,.1f} kWh"),
    ]
    if u.domestic_share is not None:
        rows.append(("domestic share", f"{u.domestic_share:.0%}"))
    _kv(console, rows)
    _usage_lines(console, "by model", u.by_model, u.currency)
    _usage_lines(console, "by queue", u.by_queue, u.currency)


@handle_errors
def usage(
    tenant: Annotated[str | None, typer.Option(help="tenant (center admins; default: yours)")] = None,
    month: Annotated[str | None, typer.Option(help="calendar month, e.g. 2026-11 (default: this month)")] = None,
    url: UrlOpt = None,
    token: TokenOpt = None,
    profile: ProfileOpt = None,
    output: OutputOpt = Fmt.TABLE,
) -> None:
    """UsageOut and bill in NCU-hours, device-hours and money."""
    start, end = month_range(month) if month else (None, None)
    with connect(url, token, profile) as client:
        answer = client.usage(tenant=tenant, start=start, end=end)
    emit(answer.to_dict(), output, lambda c: usage_table(c, answer))


def _node_detail(console: Console, n: NodeOut) -> None:
    _kv(
        console,
        [
            ("node", escape(n.id) + (f" ({escape(n.hostname)})" if n.hostname and n.hostname != n.id else "")),
            ("model", f"{n.model} ({n.vendor})"),
            ("pool", escape(str(n.pool))),
            ("where", " / ".join(escape(str(v)) for v in (n.region, n.site, n.switch, n.island) if v)),
            ("state", str(n.state)),
            ("heartbeat", ago(n.last_heartbeat)),
        ],
    )
    if n.devices:
        t = Table(box=None, header_style="bold")
        for column in ("index", "model", "healthy", "uuid"):
            t.add_column(column)
        for d in n.devices:
            health = "yes" if d.healthy else f"[red]no[/red] {escape(d.health_reason or '')}"
            t.add_row(str(d.index), str(d.model or n.model), health, escape(d.uuid or "-"))
        console.print(t)


@handle_errors
def nodes(
    node_id: Annotated[str | None, typer.Argument(help="one node's details and devices", show_default=False)] = None,
    pools: Annotated[bool, typer.Option("--pools", help="pools (a model at a site) instead of nodes")] = False,
    url: UrlOpt = None,
    token: TokenOpt = None,
    profile: ProfileOpt = None,
    output: OutputOpt = Fmt.TABLE,
) -> None:
    """Capacity: nodes, or pools with --pools (free and healthy devices)."""
    with connect(url, token, profile) as client:
        if pools:
            items = client.pools()

            def pool_table(console: Console) -> None:
                t = Table(box=None, header_style="bold")
                for column in ("pool", "model", "vendor", "site", "nodes", "devices", "free", "healthy", "domestic"):
                    t.add_column(
                        column, justify="right" if column in ("nodes", "devices", "free", "healthy") else "left"
                    )
                for p in items:
                    t.add_row(
                        escape(p.pool),
                        str(p.model),
                        str(p.vendor),
                        str(p.site),
                        str(p.nodes),
                        str(p.devices),
                        f"{p.devices_free:g}",
                        str(p.devices_healthy),
                        "yes" if p.domestic else "no",
                    )
                console.print(t if items else "No pools.")

            emit([p.to_dict() for p in items], output, pool_table)
            return
        if node_id is not None:
            node = client.node(node_id)
            emit(node.to_dict(), output, lambda c: _node_detail(c, node))
            return
        listed = client.nodes()

    def node_table(console: Console) -> None:
        t = Table(box=None, header_style="bold")
        for column in ("node", "model", "pool", "devices", "state", "heartbeat"):
            t.add_column(column)
        for n in listed:
            t.add_row(
                escape(n.id),
                str(n.model),
                escape(str(n.pool)),
                str(n.size),
                str(n.state),
                ago(n.last_heartbeat),
            )
        console.print(t if listed else "No nodes.")

    emit([n.to_dict() for n in listed], output, node_table)


# ---------------------------------------------------------------------------------------------------- admin

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
        lambda c: _kv(
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
    _stdout().print(f"Deleted queue {escape(name)}")


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
    _stdout().print(f"Revoked token {escape(token_id)}")


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


def register(app: typer.Typer) -> None:
    """Mount the API commands on the main ``zhisuan`` app."""
    app.command()(login)
    app.command()(logout)
    app.command()(whoami)
    app.command()(submit)
    app.command("list")(list_jobs)
    app.command()(status)
    app.command()(logs)
    app.command()(cancel)
    app.command()(why)
    app.command()(eta)
    app.command()(queues)
    app.command()(usage)
    app.command()(nodes)
    app.add_typer(admin_app, name="admin")
