"""Fill a folder with the wheels ``benchmarks/gpu_check.sh --wheels DIR`` installs on a GPU machine with no registry.

Run it where ``pip download`` reaches a package registry; it needs only the standard library and pip::

    python3 benchmarks/gpu_check/prepare_wheels.py --dest .whl               # CPython 3.12, manylinux x86_64
    python3 benchmarks/gpu_check/prepare_wheels.py --dest .whl --python-version 3.11 --keep uvloop,pygments

It downloads every runtime dependency of the project (``[project] dependencies`` of ``pyproject.toml``, with
their own dependencies, resolved for the target Python and platform) plus the build backend ``pip install -e .``
needs (setuptools, wheel). Ray's wheel is rebuilt smaller, because a machine lent through this workplace's device
tool receives at most 64 MiB of working tree and carried files together: ``ray/jars`` (Java workers), RLlib, Tune,
``ray.llm`` and the dashboard's web client are dropped (Zhisuan starts Ray without a dashboard and imports none of
them), and, where ``strip`` is installed, the symbol tables of Ray's three native binaries are removed; the
wheel's ``RECORD`` is rewritten with the new hashes and sizes. Packages the GPU image already ships, and that no
exact pin of ours names, can be left out (``--skip``; by default ``uvloop`` and ``pygments``, 5.6 MB). A folder
inside the repository is added to ``.git/info/exclude`` unless git ignores it already.

Prints one JSON object: the wheels, their total size and what was dropped.
"""

from __future__ import annotations

import argparse
import base64
import csv
import hashlib
import io
import json
import re
import shutil
import subprocess
import sys
import tempfile
import tomllib
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PLATFORMS = (
    "manylinux_2_28_x86_64",
    "manylinux_2_27_x86_64",
    "manylinux_2_17_x86_64",
    "manylinux2014_x86_64",
    "manylinux_2_12_x86_64",
    "manylinux2010_x86_64",
    "manylinux_2_5_x86_64",
    "manylinux1_x86_64",
)
#: Trees of the Ray wheel that Zhisuan never imports and a head started without the dashboard never serves.
RAY_DROP = ("ray/jars/", "ray/rllib/", "ray/tune/", "ray/llm/", "ray/dashboard/client/build/")
#: Ray's native binaries: the Python extension, the raylet and the GCS server (symbols only are stripped).
RAY_BINARIES = ("ray/_raylet.so", "ray/core/src/ray/raylet/raylet", "ray/core/src/ray/gcs/gcs_server")
#: On this workplace's GPU image (KINDS.md lists it) and only ever required with a lower bound by our dependencies.
DEFAULT_SKIP = ("uvloop", "pygments")
BUILD = ("setuptools>=77", "wheel")


def project_requirements(pyproject: Path) -> list[str]:
    """The ``[project] dependencies`` of a pyproject.toml.

    >>> any(r.startswith("ray==") for r in project_requirements(ROOT / "pyproject.toml"))
    True
    """
    data = tomllib.loads(pyproject.read_text(encoding="utf-8"))
    deps = data.get("project", {}).get("dependencies")
    if not isinstance(deps, list) or not all(isinstance(d, str) for d in deps):
        raise SystemExit(f"{pyproject}: [project] dependencies is not a list of requirement strings")
    return list(deps)


def normalise(name: str) -> str:
    """PEP 503 name of a distribution, also of the name part of a wheel file (``PyYAML`` -> ``pyyaml``).

    >>> normalise("typing_extensions"), normalise("PyYAML")
    ('typing-extensions', 'pyyaml')
    """
    return re.sub(r"[-_.]+", "-", name).lower()


def wheel_name(path: Path) -> str:
    """The normalised distribution name of a wheel file.

    >>> wheel_name(Path("psycopg_binary-3.3.9-cp312-cp312-manylinux2014_x86_64.whl"))
    'psycopg-binary'
    """
    return normalise(path.name.split("-", 1)[0])


def download(requirements: list[str], dest: Path, python_version: str) -> None:
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--quiet",
        "--only-binary=:all:",
        "--implementation",
        "cp",
        "--python-version",
        python_version,
        *[arg for platform in PLATFORMS for arg in ("--platform", platform)],
        "--dest",
        str(dest),
        *requirements,
    ]
    done = subprocess.run(cmd, check=False)
    if done.returncode != 0:
        raise SystemExit(f"pip download failed (exit {done.returncode}): {' '.join(cmd)}")


def _record_hash(data: bytes) -> str:
    return "sha256=" + base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()


def _strip(data: bytes, strip: str) -> bytes:
    with tempfile.NamedTemporaryFile() as tmp:
        tmp.write(data)
        tmp.flush()
        subprocess.run([strip, "--strip-unneeded", tmp.name], check=True)
        return Path(tmp.name).read_bytes()


def slim_ray(wheel: Path, strip_binaries: bool) -> dict[str, object]:
    """Rewrite Ray's wheel in place without :data:`RAY_DROP`, binaries stripped; returns what changed."""
    strip = shutil.which("strip") if strip_binaries else None
    before = wheel.stat().st_size
    dropped = 0
    out = io.BytesIO()
    with zipfile.ZipFile(wheel) as src, zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as dst:
        record_name = next(n for n in src.namelist() if n.endswith(".dist-info/RECORD"))
        rows: list[list[str]] = []
        for info in src.infolist():
            name = info.filename
            if name == record_name:
                continue
            if name.startswith(RAY_DROP):
                dropped += 1
                continue
            data = src.read(info)
            if strip and name in RAY_BINARIES:
                data = _strip(data, strip)
            kept = zipfile.ZipInfo(name, date_time=info.date_time)
            kept.external_attr = info.external_attr  # keeps the executables' mode bits
            kept.compress_type = zipfile.ZIP_DEFLATED
            dst.writestr(kept, data, compresslevel=9)
            rows.append([name, _record_hash(data), str(len(data))])
        rows.append([record_name, "", ""])
        text = io.StringIO()
        csv.writer(text, lineterminator="\n").writerows(rows)
        dst.writestr(record_name, text.getvalue())
    wheel.write_bytes(out.getvalue())
    return {
        "ray_wheel_bytes_before": before,
        "ray_wheel_bytes_after": wheel.stat().st_size,
        "ray_files_dropped": dropped,
        "ray_binaries_stripped": bool(strip),
    }


def ignore_in_git(dest: Path) -> str | None:
    """Make a wheel folder inside the repository ignored by git (``.git/info/exclude``), so that the device tool
    can carry it and no commit picks it up; returns the line added, if one was."""
    try:
        rel = dest.resolve().relative_to(ROOT)
    except ValueError:
        return None  # outside the repository
    info = ROOT / ".git" / "info"
    if not (ROOT / ".git").is_dir() or not shutil.which("git"):
        return None
    ignored = subprocess.run(["git", "-C", str(ROOT), "check-ignore", "-q", str(rel)], check=False).returncode == 0
    if ignored:
        return None
    line = f"/{rel.as_posix()}/"
    info.mkdir(parents=True, exist_ok=True)
    with open(info / "exclude", "a", encoding="utf-8") as exclude:
        exclude.write(line + "\n")
    return line


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dest", type=Path, default=ROOT / ".whl", help="folder to fill (created; default .whl)")
    parser.add_argument("--python-version", default="3.12", help="CPython of the GPU machine (default 3.12)")
    parser.add_argument(
        "--skip",
        default=",".join(DEFAULT_SKIP),
        help="comma-separated packages the GPU image already has, left out (default: %(default)s; '' keeps all)",
    )
    parser.add_argument("--extra", action="append", default=[], help="another requirement to carry (repeatable)")
    parser.add_argument("--no-strip", action="store_true", help="keep the symbols of Ray's native binaries")
    parser.add_argument("--limit-mib", type=float, default=60.0, help="warn above this total (default 60 MiB)")
    args = parser.parse_args()

    dest: Path = args.dest
    dest.mkdir(parents=True, exist_ok=True)
    excluded = ignore_in_git(dest)
    for old in dest.glob("*.whl"):
        old.unlink()  # two versions of one package in the folder would stop the install there
    requirements = [*project_requirements(ROOT / "pyproject.toml"), *BUILD, *args.extra]
    download(requirements, dest, args.python_version)

    skip = {normalise(s) for s in args.skip.split(",") if s.strip()}
    pinned = {normalise(re.split(r"[\[=<>!~; ]", r, maxsplit=1)[0]) for r in requirements if "==" in r}
    if skip & pinned:
        raise SystemExit(f"--skip names exactly pinned packages, which must travel: {sorted(skip & pinned)}")
    skipped = []
    for wheel in sorted(dest.glob("*.whl")):
        if wheel_name(wheel) in skip:
            skipped.append(wheel.name)
            wheel.unlink()
    rays = sorted(dest.glob("ray-*.whl"))
    if len(rays) != 1:
        raise SystemExit(f"expected one Ray wheel in {dest}, found {[w.name for w in rays]}")
    slimmed = slim_ray(rays[0], strip_binaries=not args.no_strip)

    wheels = sorted(dest.glob("*.whl"))
    total = sum(w.stat().st_size for w in wheels)
    report = {
        "dest": str(dest),
        "python_version": args.python_version,
        "wheels": [w.name for w in wheels],
        "total_mib": round(total / 2**20, 1),
        "skipped_as_on_the_image": skipped,
        "added_to_git_info_exclude": excluded,
        **slimmed,
    }
    print(json.dumps(report, indent=2))
    if total / 2**20 > args.limit_mib:
        print(f"warning: {total / 2**20:.1f} MiB of wheels is over {args.limit_mib} MiB", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
