"""API load benchmark (issue 5): the real server under locust, figures as JSON.

Starts the server the way ``python -m api.app`` does (uvicorn, uvloop, httptools with one write per response,
no access log) on a fresh database — SQLite (WAL) in a temporary directory, or with ``--database postgresql`` a
fresh database on the PostgreSQL server at ``--postgres-url`` (dropped afterwards) — bootstraps it (admin token
file, ``seeds/policy.yaml``, the nodes of ``seeds/clusters/example.yaml`` so that submissions are placeable),
runs locust headless on ``benchmarks/locustfile.py`` as a subprocess, reads its CSV statistics and prints:
sustained submissions/s, p50/p95/p99 per request type, errors, and whether every accepted job is in the
database afterwards (rows == successful submissions counted by locust).

    .venv/bin/python benchmarks/api_load.py                                  # submissions only, SQLite, 60 s
    .venv/bin/python benchmarks/api_load.py --database postgresql
    .venv/bin/python benchmarks/api_load.py --profile mixed                  # the tenant mix of the locustfile

Target (issue 5): ≥ 1,500 submissions/s sustained for 60 s, p99 ≤ 100 ms, 0 errors, SQLite WAL, 2 cores.
Locust runs on the same machine and competes with the server for the CPU; its own CPU time is reported.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))

LOCUSTFILE = HERE / "locustfile.py"
CLUSTER = ROOT / "seeds" / "clusters" / "example.yaml"
POLICY = ROOT / "seeds" / "policy.yaml"
PROFILES = {"submit": "Submitter", "mixed": "Tenant"}
TARGET = {"submissions_per_s": 1500, "p99_ms": 100, "errors": 0}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _with_database(url: str, database: str) -> str:
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, "/" + database, parts.query, parts.fragment))


def create_postgres_database(server_url: str) -> str:
    import psycopg

    name = f"zs_bench_{os.getpid()}_{secrets.token_hex(4)}"
    with psycopg.connect(server_url, autocommit=True, connect_timeout=5) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    return _with_database(server_url, name)


def drop_postgres_database(server_url: str, url: str) -> None:
    import psycopg

    name = urlsplit(url).path.lstrip("/")
    with psycopg.connect(server_url, autocommit=True, connect_timeout=5) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def wait_ready(url: str, server: subprocess.Popen[bytes], timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"the API server exited with {server.returncode}")
        try:
            with urllib.request.urlopen(url + "/readyz", timeout=2) as r:
                if r.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.2)
    raise RuntimeError("the API server did not become ready")


def count_rows(database_url: str) -> dict[str, int]:
    from sqlalchemy import func, select

    from api.db import make_engine
    from api.tables import JOB_EVENTS, JOBS

    engine = make_engine(database_url)
    try:
        with engine.connect() as conn:
            return {
                "jobs": conn.execute(select(func.count()).select_from(JOBS)).scalar_one(),
                "distinct_idempotency_keys": conn.execute(
                    select(func.count(func.distinct(JOBS.c.idempotency_key)))
                ).scalar_one(),
                "job_events": conn.execute(select(func.count()).select_from(JOB_EVENTS)).scalar_one(),
            }
    finally:
        engine.dispose()


def postgres_cpu_seconds() -> float:
    """CPU of every PostgreSQL server process on this machine so far (the database's share of the work)."""
    import psutil

    total = 0.0
    for proc in psutil.process_iter(["name"]):
        if proc.info["name"] in ("postgres", "postmaster"):
            with contextlib.suppress(psutil.Error):
                total += sum(proc.cpu_times()[:2])
    return total


def cpu_seconds(pid: int) -> float:
    """User + system CPU of a process and its children so far (Linux /proc)."""
    import psutil

    try:
        proc = psutil.Process(pid)
        total = sum(proc.cpu_times()[:2])
        for child in proc.children(recursive=True):
            with contextlib.suppress(psutil.Error):
                total += sum(child.cpu_times()[:2])
        return total
    except psutil.Error:
        return 0.0


# ------------------------------------------------------------------------------------------ locust output
#
# Read from locust's final ``--json-file`` rather than its CSV files: the CSV statistics are written before the
# users finish the requests in flight at the end (``--stop-timeout``), so they miss the last few dozen answers
# and the "every accepted job is stored" check could not be exact.


def percentile(response_times: dict[str, int], q: float) -> float | None:
    """The ``q`` quantile (ms) of locust's response-time histogram (ms rounded to 2 significant digits over 100)."""
    points = sorted((float(ms), n) for ms, n in response_times.items())
    total = sum(n for _, n in points)
    if not total:
        return None
    rank = q * total
    seen = 0
    for ms, n in points:
        seen += n
        if seen >= rank:
            return ms
    return points[-1][0]


def summarize(entry: dict[str, Any]) -> dict[str, Any]:
    count = entry["num_requests"]
    failures = entry["num_failures"]
    times = entry["response_times"]
    return {
        "requests": count,
        "failures": failures,
        "ok": count - failures,
        "mean_ms": round(entry["total_response_time"] / count, 2) if count else None,
        "p50_ms": percentile(times, 0.50),
        "p95_ms": percentile(times, 0.95),
        "p99_ms": percentile(times, 0.99),
        "p99.9_ms": percentile(times, 0.999),
        "max_ms": round(entry["max_response_time"], 1),
    }


def per_second(entry: dict[str, Any]) -> dict[str, Any]:
    """Successful requests per second over the whole seconds of the run (the first and last, partial, left out)."""
    requests = {int(t): n for t, n in entry["num_reqs_per_sec"].items()}
    failed = {int(t): n for t, n in entry["num_fail_per_sec"].items()}
    if len(requests) < 3:
        return {"seconds": 0}
    first, last = min(requests), max(requests)
    rates = sorted(requests.get(t, 0) - failed.get(t, 0) for t in range(first + 1, last))
    return {
        "seconds": len(rates),
        "mean_per_s": round(sum(rates) / len(rates), 1),
        "min_1s_per_s": rates[0],
        "p5_1s_per_s": rates[int(0.05 * (len(rates) - 1))],
        "median_1s_per_s": statistics.median(rates),
        "max_1s_per_s": rates[-1],
    }


def read_stats(path: Path) -> tuple[dict[str, dict[str, Any]], dict[str, Any]]:
    """Per request name: counts and latency percentiles; and the per-second rates of ``submit``."""
    entries = json.loads(path.read_text())
    stats = {e["name"]: summarize(e) for e in entries}
    rates = next((per_second(e) for e in entries if e["name"] == "submit"), {"seconds": 0})
    return stats, rates


# ----------------------------------------------------------------------------------------------------- run


def run(args: argparse.Namespace) -> dict[str, Any]:
    tmp = Path(tempfile.mkdtemp(prefix="zhisuan-bench-"))
    if args.database == "sqlite":
        database_url = f"sqlite:///{tmp / 'zhisuan.db'}"
    else:
        database_url = create_postgres_database(args.postgres_url)
    port = args.port or free_port()
    url = f"http://127.0.0.1:{port}"
    token_file = tmp / "admin-token"
    env = {
        **os.environ,
        "ZHISUAN_DATABASE_URL": database_url,
        "ZHISUAN_ADMIN_TOKEN_FILE": str(token_file),
        "ZHISUAN_POLICY_FILE": str(POLICY),
        "ZHISUAN_CLUSTER_FILE": str(CLUSTER),
        "PYTHONPATH": str(ROOT),
    }
    if args.rate_limit is not None:
        env["ZHISUAN_RATE_LIMIT"] = args.rate_limit
    serve = [sys.executable, "-m", "api.app", "--host", "127.0.0.1", "--port", str(port)]
    server = subprocess.Popen(serve, cwd=ROOT, env=env, stdout=sys.stderr)
    result: dict[str, Any] = {
        "profile": args.profile,
        "database": args.database,
        "users": args.users,
        "spawn_rate": args.spawn_rate,
        "duration_s": args.duration,
        "locust_processes": args.processes,
        "cpus": os.cpu_count(),
        "load_average_before": [round(x, 2) for x in os.getloadavg()],
    }
    prefix = tmp / "locust"
    errors_file = tmp / "errors.json"
    try:
        wait_ready(url, server)
        command = [
            str(Path(sys.executable).with_name("locust")),
            "-f",
            str(LOCUSTFILE),
            "--headless",
            "--only-summary",
            "-u",
            str(args.users),
            "-r",
            str(args.spawn_rate),
            "-t",
            f"{args.duration}s",
            "--stop-timeout",
            "30",  # users finish the request in flight: every answered job is counted
            "--host",
            url,
            "--json-file",
            str(prefix),
            "--loglevel",
            "WARNING",
        ]
        if args.processes > 1:
            # a private master port: another locust run with --processes on this machine (default port 5557)
            # would otherwise take this run's workers, or give it its own
            master = str(free_port())
            command += ["--processes", str(args.processes), "--master-bind-port", master, "--master-port", master]
        command.append(PROFILES[args.profile])
        tokens_file = tmp / "tokens.json"
        subprocess.run(
            [sys.executable, str(LOCUSTFILE), url, str(token_file), str(tokens_file)], cwd=ROOT, env=env, check=True
        )
        server_cpu = cpu_seconds(server.pid)
        database_cpu = postgres_cpu_seconds() if args.database == "postgresql" else 0.0
        locust_cpu = _children_cpu()
        started = time.monotonic()
        locust_env = {
            **env,
            "ZHISUAN_BENCH_TOKENS": str(tokens_file),
            "ZHISUAN_BENCH_ERRORS": str(errors_file),
            "ZHISUAN_BENCH_PROCESSES": str(max(1, args.processes)),
        }
        locust = subprocess.Popen(command, cwd=ROOT, env=locust_env, stdout=sys.stderr)
        result["locust_exit_code"] = locust.wait(timeout=args.duration + 120)  # 0: no failure, no exception
        wall = time.monotonic() - started
        locust_cpu = _children_cpu() - locust_cpu
        server_cpu = cpu_seconds(server.pid) - server_cpu
        database_cpu = postgres_cpu_seconds() - database_cpu if args.database == "postgresql" else 0.0
        result["load_average_after"] = [round(x, 2) for x in os.getloadavg()]
        result["cpu_seconds"] = {
            "server": round(server_cpu, 1),
            "locust": round(locust_cpu, 1),
            **({"postgresql": round(database_cpu, 1)} if args.database == "postgresql" else {}),
            "wall": round(wall, 1),
        }
    finally:
        server.send_signal(signal.SIGINT)
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
    try:
        stats, rates = read_stats(Path(f"{prefix}.json"))
        submit = stats.get("submit", {})
        rows = count_rows(database_url)
        result["submissions"] = {
            "ok": submit.get("ok", 0),
            "per_s_sustained": rates,
            "p50_ms": submit.get("p50_ms"),
            "p95_ms": submit.get("p95_ms"),
            "p99_ms": submit.get("p99_ms"),
        }
        result["requests"] = stats
        result["errors"] = sum(e["failures"] for e in stats.values())
        if errors_file.exists():
            result["error_samples"] = [
                {"name": e["name"], "error": str(e["error"])[:300], "occurrences": e["occurrences"]}
                for e in json.loads(errors_file.read_text())[:10]
            ]
        result["stored"] = rows
        result["every_accepted_job_stored"] = rows["jobs"] == submit.get("ok", 0) == rows["distinct_idempotency_keys"]
        sustained = result["submissions"]["per_s_sustained"].get("mean_per_s", 0)
        result["target"] = {
            **TARGET,
            "met": bool(
                sustained >= TARGET["submissions_per_s"]
                and (submit.get("p99_ms") or 1e9) <= TARGET["p99_ms"]
                and result["errors"] == 0
                and result.get("locust_exit_code") == 0
                and result["every_accepted_job_stored"]
            ),
        }
    finally:
        if args.database == "postgresql":
            drop_postgres_database(args.postgres_url, database_url)
        if not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            result["kept"] = str(tmp)
    return result


def _children_cpu() -> float:
    import resource

    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--database", choices=["sqlite", "postgresql"], default="sqlite")
    parser.add_argument(
        "--postgres-url",
        default=os.environ.get("ZHISUAN_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test"),
        help="a PostgreSQL server; the benchmark creates (and drops) its own database there",
    )
    parser.add_argument("--profile", choices=sorted(PROFILES), default="submit")
    parser.add_argument("-u", "--users", type=int, default=48, help="simulated users (closed loop, no think time)")
    parser.add_argument("-r", "--spawn-rate", type=float, default=48)
    parser.add_argument("-t", "--duration", type=int, default=60, help="seconds")
    parser.add_argument("--processes", type=int, default=2, help="locust processes (--processes of locust; 1: no fork)")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--rate-limit", default=None, help="ZHISUAN_RATE_LIMIT of the server (default: its own)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory (database, CSV files)")
    args = parser.parse_args(argv)
    print(json.dumps(run(args), indent=2))


if __name__ == "__main__":
    main()
