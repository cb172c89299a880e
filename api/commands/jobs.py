"""Jobs: ``zhisuan submit | list | status | logs | cancel | why | eta``."""

from __future__ import annotations

import sys
import time
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, Literal

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from api.client import ZhisuanClient
from api.commands.common import (
    EXIT_API,
    EXIT_USAGE,
    JOB_ID,
    JobArg,
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
    ago,
    duration,
    emit,
    job_size,
    key_values,
    reasons_line,
    relative,
    state_text,
    stderr,
    when,
)
from api.models import EtaOut, JobOut
from scheduler.errors import validate_model
from scheduler.spec import JobSpec, load_spec


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
            parts.append(escape(reasons_line(job.reasons)))
        if job.estimated_start is not None:
            parts.append(f"starts {relative(job.estimated_start)}")
    parts.append(f"waited {duration(time.time() - started)}")
    return " — ".join(parts)


class Until(StrEnum):
    END = "end"
    RUNNING = "running"


@handle_errors
def submit(
    file: Annotated[Path, typer.Argument(help="job spec, YAML or JSON (see seeds/examples/)", show_default=False)],
    wait: Annotated[
        bool,
        typer.Option("--wait", help="wait for the job to end, printing rank 0's log; exit with the job's status"),
    ] = False,
    until: Annotated[
        Until, typer.Option(help="with --wait: 'end' (as sbatch --wait and ray job submit do) or 'running'")
    ] = Until.END,
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
    """Submit a job spec. The spec is checked here before anything is sent.

    With --wait the command follows the job: a status line while it waits, then rank 0's log as it is written,
    and it exits 0 when the job succeeded, or with the job's exit code (1 if it has none) when it failed or was
    cancelled. With --until running it returns as soon as the job runs. With -o json/yaml nothing but the final job
    is printed."""
    spec = _load(file, queue)
    with connect(url, token, profile) as client:
        job = client.submit(spec, idempotency_key=idempotency_key)
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
        deadline = None if timeout is None else time.monotonic() + timeout
        human = output is Fmt.TABLE
        if human:
            stderr().print(
                f"Submitted [bold]{escape(job.id)}[/bold] ({escape(job.name)}) to queue {escape(str(job.queue))}"
            )
        job = _wait_for(client, job, "running", deadline, show=human)
        if until is Until.END:
            if human:  # the log, also of a job that ended before we saw it run
                for text in client.follow_logs(job.id, rank=0):
                    sys.stdout.write(text)
                    sys.stdout.flush()
                    if deadline is not None and time.monotonic() > deadline:
                        break
            job = _wait_for(client, client.get_job(job.id), "terminal", deadline, show=False)
    emit(job.to_dict(), output, lambda c: stderr().print(f"{escape(job.id)}: {state_text(job.state)}{_ended(job)}"))
    if job.state in ("failed", "cancelled"):
        raise typer.Exit(job.exit_code if job.exit_code and 0 < job.exit_code < 256 else EXIT_API)


def _wait_for(client: ZhisuanClient, job: JobOut, until: Literal["running", "terminal"], deadline: float | None,
              show: bool) -> JobOut:  # fmt: skip
    """Poll until ``until``, with a status line on stderr when ``show``; a timeout keeps the job queued."""
    started = time.time()
    timeout = None if deadline is None else max(0.0, deadline - time.monotonic())
    try:
        if not show:
            return client.wait(job.id, until=until, timeout=timeout)
        with stderr().status(_progress_line(job, started)) as status:
            return client.wait(
                job.id, until=until, timeout=timeout, on_update=lambda j: status.update(_progress_line(j, started))
            )
    except TimeoutError as exc:
        raise fail(f"{exc}; it stays queued (see `zhisuan why {job.id}`)", EXIT_API) from exc


def _ended(job: JobOut) -> str:
    """What a finished or started job's last line adds: where it ran, or why it failed."""
    if job.state in ("failed", "cancelled"):
        detail = f": {job.message.splitlines()[0]}" if job.message else ""
        code = f" (exit code {job.exit_code})" if job.exit_code is not None else ""
        return f"{escape(detail)}{code}"
    return _placement_suffix(job)


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
                note = reasons_line(j.reasons) or (f"starts {relative(j.estimated_start)}" if j.estimated_start else "")
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
    from api.commands.services import service_of_job, service_rows
    from api.models import ServiceOut

    with connect(url, token, profile) as client:
        job = client.get_job(job_ref(client, job_id))
        events = client.events(job.id) if output is Fmt.TABLE else []
        # A replica of a served service: show the service's endpoint and live figures too.
        service_id = service_of_job(job.spec) if output is Fmt.TABLE else None
        served = next(
            (
                ServiceOut.from_api(s)
                for s in (client.request("GET", "/v1/services")["items"] if service_id else [])
                if s["id"] == service_id
            ),
            None,
        )

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
        if served is not None:
            rows.extend((f"  {k}" if k != "service" else "replica of", v) for k, v in service_rows(served))
        key_values(console, rows)
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
    """One line for humans: ``starts between 14:05 and 14:20 UTC (most likely in 12 min, 14:12 UTC), finishes in
    2 h (16:32 UTC)``; without a band (an older server), ``starts in 12 min (14:32 UTC), ...``."""
    if eta.state == "pending":
        if eta.estimated_start is None:
            return "no estimate yet: no start is foreseen with the current queue and capacity"
        if eta.start_earliest is not None and eta.start_latest is not None:
            likely = relative(eta.estimated_start, now)
            text = f"starts between {when(eta.start_earliest)} and {when(eta.start_latest)} (most likely {likely})"
        else:
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
