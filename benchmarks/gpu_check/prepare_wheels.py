"""Make the wheels ``benchmarks/gpu_check.sh --wheels PATH`` installs on a GPU machine with no package registry.

Run it where ``pip download`` reaches a registry; it needs only the standard library and pip::

    python3 benchmarks/gpu_check/prepare_wheels.py                    # .whl/wheels.tar.xz for CPython 3.12
    python3 benchmarks/gpu_check/prepare_wheels.py --loose --python-version 3.11 --dest /tmp/wheels311

It downloads every runtime dependency of the project (``[project] dependencies`` of ``pyproject.toml``, with
their own dependencies, resolved for the target Python on manylinux x86_64) and the build backend that
``pip install -e .`` needs (setuptools, wheel). A machine lent through this workplace's device tool receives at
most 64 MiB of working tree and carried files together, and the wheels as downloaded are about 80 MiB, so:

* Ray's wheel is rebuilt without what Zhisuan never uses — ``ray/jars`` (Java workers), RLlib, Tune, ``ray.llm``
  and the dashboard's web client (Ray is started without its dashboard) — and, where ``strip`` is installed, with
  the symbol tables of its three native binaries removed;
* by default every wheel is rewritten uncompressed and the lot packed into one ``wheels.tar.xz`` (about 38 MiB,
  against 65 MiB of deflated wheels: xz over the whole set compresses the binaries far better than zip does).
  ``gpu_check.sh`` unpacks it (two seconds) before installing. ``--loose`` leaves plain wheel files instead.

Each rewritten wheel gets a ``RECORD`` with the new hashes and sizes. A folder inside the repository is added to
``.git/info/exclude`` unless git ignores it already. Prints one JSON object: what is in it and how big it is.
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
import tarfile
import tempfile
import tomllib
import zipfile
from collections.abc import Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
ARCHIVE = "wheels.tar.xz"
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


def rewrite_wheel(
    wheel: Path, *, drop: Sequence[str] = (), binaries: Sequence[str] = (), strip: str | None = None, stored: bool
) -> int:
    """Rewrite a wheel in place: without the files under ``drop``, ``binaries`` stripped (with ``strip``), every
    entry stored uncompressed (``stored``) or deflated, and a fresh ``RECORD``. Returns the files dropped."""
    dropped = 0
    method = zipfile.ZIP_STORED if stored else zipfile.ZIP_DEFLATED
    out = io.BytesIO()
    with zipfile.ZipFile(wheel) as src, zipfile.ZipFile(out, "w", method) as dst:
        record_name = next(n for n in src.namelist() if n.endswith(".dist-info/RECORD"))
        rows: list[list[str]] = []
        for info in src.infolist():
            name = info.filename
            if name == record_name:
                continue
            if name.startswith(tuple(drop)):
                dropped += 1
                continue
            data = src.read(info)
            if strip and name in binaries:
                data = _strip(data, strip)
            kept = zipfile.ZipInfo(name, date_time=info.date_time)
            kept.external_attr = info.external_attr  # keeps the executables' mode bits
            kept.compress_type = method
            dst.writestr(kept, data, compresslevel=None if stored else 9)
            rows.append([name, _record_hash(data), str(len(data))])
        rows.append([record_name, "", ""])
        text = io.StringIO()
        csv.writer(text, lineterminator="\n").writerows(rows)
        dst.writestr(record_name, text.getvalue())
    wheel.write_bytes(out.getvalue())
    return dropped


def pack(dest: Path, wheels: list[Path]) -> Path:
    """Pack the (uncompressed) wheels into ``dest/wheels.tar.xz`` and remove them; returns the archive."""
    archive = dest / ARCHIVE
    with tarfile.open(archive, "w:xz", preset=9) as tar:
        for wheel in wheels:
            tar.add(wheel, arcname=wheel.name)
    for wheel in wheels:
        wheel.unlink()
    return archive


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
    parser.add_argument("--loose", action="store_true", help=f"plain wheel files, no {ARCHIVE}")
    parser.add_argument("--skip", default="", help="comma-separated packages the GPU image has, left out")
    parser.add_argument("--extra", action="append", default=[], help="another requirement to carry (repeatable)")
    parser.add_argument("--no-strip", action="store_true", help="keep the symbols of Ray's native binaries")
    parser.add_argument("--limit-mib", type=float, default=60.0, help="warn above this size (default 60 MiB)")
    args = parser.parse_args()

    dest: Path = args.dest
    dest.mkdir(parents=True, exist_ok=True)
    excluded = ignore_in_git(dest)
    for old in [*dest.glob("*.whl"), dest / ARCHIVE]:
        old.unlink(missing_ok=True)  # two versions of one package in the folder would stop the install there
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
    downloaded = sum(w.stat().st_size for w in dest.glob("*.whl"))
    strip = None if args.no_strip else shutil.which("strip")
    ray_dropped = rewrite_wheel(rays[0], drop=RAY_DROP, binaries=RAY_BINARIES, strip=strip, stored=not args.loose)
    wheels = sorted(dest.glob("*.whl"))
    if not args.loose:
        for wheel in wheels:
            if wheel not in rays:
                rewrite_wheel(wheel, stored=True)
        made = [pack(dest, wheels)]
    else:
        made = wheels
    size = sum(p.stat().st_size for p in made)
    report = {
        "dest": str(dest),
        "python_version": args.python_version,
        "wheels": [w.name for w in wheels],
        "files": [p.name for p in made],
        "mib": round(size / 2**20, 1),
        "downloaded_mib": round(downloaded / 2**20, 1),
        "ray_files_dropped": ray_dropped,
        "ray_binaries_stripped": bool(strip),
        "skipped": skipped,
        "added_to_git_info_exclude": excluded,
    }
    print(json.dumps(report, indent=2))
    if size / 2**20 > args.limit_mib:
        print(f"warning: {size / 2**20:.1f} MiB is over {args.limit_mib} MiB", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
