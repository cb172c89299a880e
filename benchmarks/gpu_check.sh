#!/usr/bin/env bash
# The whole product on a real NVIDIA GPU, from a fresh clone, in one run of under 8 minutes (issue 22).
#
#   benchmarks/gpu_check.sh                          # installs from the package registry, then every check
#   benchmarks/gpu_check.sh --wheels .whl            # a machine with no registry: wheels from prepare_wheels.py
#   benchmarks/gpu_check.sh --emulated               # no GPU here: every later step with the emulated shim
#   benchmarks/gpu_check.sh --venv .venv --from train   # reuse a venv, start at a later step
#
# It creates a virtual environment (with the interpreter's own packages visible, so a torch the machine already
# has is used), installs the project into it (`pip install -e .`), then runs benchmarks/gpu_check/steps.py:
# env, discover, bench, exporter, cluster, up, train, probe, inference, down (its docstring says what each
# checks). Everything printed also goes to one log file. Exit status: 0 every check passed; 1 a check failed
# (the line `FAILED at step S: why` names it; the run stops there); 3 every check passed but values disagreed
# or a target was missed (the `FINDING` lines); 2 bad options.
#
# A machine with no package registry (the workplace's lent GPU machines): on a machine with one, run
#   python3 benchmarks/gpu_check/prepare_wheels.py        (.whl/wheels.tar.xz: CPython 3.12 wheels, ~38 MiB)
# carry .whl to the GPU machine and pass --wheels .whl. torch is not among them (the GPU image brings its own,
# with CUDA): without a registry, the interpreter given by --python must already have torch.
set -uo pipefail

usage() {
  cat <<'EOF'
usage: benchmarks/gpu_check.sh [options]
  --wheels PATH      install offline from PATH: a folder of wheels, or of wheels.tar.xz, or that file
                     (benchmarks/gpu_check/prepare_wheels.py makes them)
  --venv DIR         virtual environment to use; created if missing, reused if it already has `zhisuan`
                     (default: $ZHISUAN_GPU_CHECK_VENV, else ${TMPDIR:-/tmp}/zhisuan-gpu-check/venv)
  --reinstall        recreate the virtual environment first
  --python PY        interpreter the environment is made from (default: python3)
  --log FILE         the run's log (default: benchmarks/results/gpu-check-<UTC time>.log)
  --work DIR         databases, configs and process logs (default: ${TMPDIR:-/tmp}/zhisuan-gpu-check/run-<UTC time>)
  --emulated [M:N]   the emulated shim instead of NVML, M:N devices (default H100:1); says EMULATED throughout
  --model MODEL      catalog model for the cluster file if the catalog lacks the GPU's name (e.g. H100)
  --from STEP        start at STEP (what it needs still runs); --only STEP: that step alone
  --bench-duration S seconds of the agent CPU measurement in the bench step (default 5)
  --deadline-s S     start no step after S seconds (default 540: the run fits a 10-minute device call)
  --list             list the steps and exit
Steps: env discover bench exporter cluster up train probe inference down
EOF
}

now() { date +%s.%N; }
elapsed() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }'; }

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
STAMP=$(date -u +%Y%m%dT%H%M%SZ)
WHEELS="" VENV="${ZHISUAN_GPU_CHECK_VENV:-${TMPDIR:-/tmp}/zhisuan-gpu-check/venv}" REINSTALL=0 PY=python3
LOG="$ROOT/benchmarks/results/gpu-check-$STAMP.log" WORK="${TMPDIR:-/tmp}/zhisuan-gpu-check/run-$STAMP"
STEP_ARGS=()
while (($#)); do
  case "$1" in
    --wheels) WHEELS=${2:?--wheels needs a folder}; shift 2 ;;
    --venv) VENV=${2:?--venv needs a folder}; shift 2 ;;
    --reinstall) REINSTALL=1; shift ;;
    --python) PY=${2:?--python needs an interpreter}; shift 2 ;;
    --log) LOG=${2:?--log needs a file}; shift 2 ;;
    --work) WORK=${2:?--work needs a folder}; shift 2 ;;
    --emulated)
      if [[ ${2:-} =~ ^[A-Za-z0-9._-]+:[0-9]+$ ]]; then STEP_ARGS+=(--emulated "$2"); shift 2
      else STEP_ARGS+=(--emulated H100:1); shift; fi ;;
    --model | --from | --only | --bench-duration | --deadline-s) STEP_ARGS+=("$1" "${2:?$1 needs a value}"); shift 2 ;;
    --list) awk '/::$/ { on = 1; next } on && /^$/ && seen { exit } on && NF { seen = 1; print }' \
      "$ROOT/benchmarks/gpu_check/steps.py"; exit 0 ;;
    -h | --help) usage; exit 0 ;;
    *) echo "gpu_check.sh: unknown option $1" >&2; usage >&2; exit 2 ;;
  esac
done
if [[ -n $WHEELS ]]; then
  [[ -e $WHEELS ]] || { echo "gpu_check.sh: --wheels $WHEELS does not exist" >&2; exit 2; }
  WHEELS=$(cd "$(dirname "$WHEELS")" && pwd)/$(basename "$WHEELS")
fi
mkdir -p "$(dirname "$LOG")" "$WORK" || exit 2
LOG=$(cd "$(dirname "$LOG")" && pwd)/$(basename "$LOG")
case "$VENV" in /*) ;; *) VENV="$PWD/$VENV" ;; esac

# The reason travels out of the install subshell in a file, for the one FAILED line at the end.
fail() { echo "    error: $*"; echo "$*" >"$WORK/install-failure"; exit 1; }

# Make the environment, install the project; prints what it did. Runs inside the tee below.
install() {
  if [[ $REINSTALL == 1 && -e $VENV ]]; then
    [[ -f $VENV/pyvenv.cfg ]] || fail "--reinstall: $VENV is not a virtual environment; not removing it"
    echo "    removing $VENV (--reinstall)"; rm -rf "$VENV"
  fi
  if [[ -x $VENV/bin/zhisuan && -x $VENV/bin/python ]]; then
    echo "    reusing $VENV (it has zhisuan; --reinstall makes a new one)"
    return 0
  fi
  command -v "$PY" >/dev/null || fail "no interpreter '$PY' (pass --python)"
  "$PY" -c 'import sys; raise SystemExit(sys.version_info < (3, 11))' \
    || fail "the project needs Python >= 3.11; $PY is $("$PY" -V 2>&1)"
  echo "    interpreter $(command -v "$PY"): $("$PY" -V 2>&1)"
  if [[ ! -x $VENV/bin/python ]]; then
    local existed=0
    [[ -e $VENV ]] && existed=1
    echo "    \$ $PY -m venv --system-site-packages $VENV"
    if ! "$PY" -m venv --system-site-packages "$VENV"; then
      # An interpreter without ensurepip (Debian without python3-venv, some uv-made ones): no pip of its own in the
      # venv; the pip of the interpreter's packages, visible through the .pth file below, installs into it instead.
      echo "    \$ $PY -m venv --system-site-packages --without-pip $VENV    (ensurepip failed)"
      [[ $existed == 0 && -f $VENV/pyvenv.cfg ]] && rm -rf "$VENV"  # only what this attempt made
      "$PY" -m venv --system-site-packages --without-pip "$VENV" || fail "could not create the virtual environment $VENV"
    fi
  fi
  # An interpreter that is itself a venv (the GPU image's python3, which holds torch) lends only its base
  # interpreter's packages to --system-site-packages; its own site-packages join through a .pth file, after ours.
  local outer purelib
  outer=$("$PY" -c 'import site, sys; print("\n".join(site.getsitepackages()) if sys.prefix != sys.base_prefix else "")')
  if [[ -n $outer ]]; then
    purelib=$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
    while IFS= read -r dir; do
      [[ -n $dir ]] && echo "import site; site.addsitedir('$dir')"
    done <<<"$outer" >"$purelib/zz_gpu_check_outer_env.pth"
    echo "    $PY is a virtual environment: its packages are visible through $purelib/zz_gpu_check_outer_env.pth"
  fi
  "$VENV/bin/python" -m pip --version >/dev/null 2>&1 || fail "no pip in $VENV, nor in the packages of $PY"
  local pip=("$VENV/bin/python" -m pip install --progress-bar off --quiet) archive=""
  if [[ -f $WHEELS ]]; then archive=$WHEELS; elif [[ -f $WHEELS/wheels.tar.xz ]]; then archive=$WHEELS/wheels.tar.xz; fi
  if [[ -n $archive ]]; then  # prepare_wheels.py's one-file form: uncompressed wheels in one xz archive
    WHEELS="$WORK/wheels"
    echo "    unpacking $archive into $WHEELS"
    "$PY" - "$archive" "$WHEELS" <<'EOF' || fail "could not unpack $archive"
import sys, tarfile
with tarfile.open(sys.argv[1], "r:xz") as tar:
    tar.extractall(sys.argv[2], **({"filter": "data"} if hasattr(tarfile, "data_filter") else {}))
EOF
  fi
  if [[ -n $WHEELS ]]; then
    compgen -G "$WHEELS/*.whl" >/dev/null || fail "no wheels (*.whl or wheels.tar.xz) in $WHEELS"
    pip+=(--no-index --find-links "$WHEELS")
  fi
  echo "    \$ ${pip[*]} -e .    (from ${WHEELS:-the package registry})"
  (cd "$ROOT" && "${pip[@]}" -e .) || fail "pip install -e . failed (its error is above)${WHEELS:+; a wheel missing from $WHEELS? prepare_wheels.py --extra NAME==VERSION adds one}"
  if ! "$VENV/bin/python" -c 'import torch' 2>/dev/null; then
    if [[ -z $WHEELS ]]; then
      echo "    torch is not importable: \$ ${pip[*]} -e '.[examples]'"
      (cd "$ROOT" && "${pip[@]}" -e '.[examples]') || fail "pip could not install torch (the examples extra)"
    elif compgen -G "$WHEELS/torch-*.whl" >/dev/null; then
      "${pip[@]}" torch || fail "pip could not install torch from $WHEELS"
    else
      echo "    WARNING: torch is not importable and $WHEELS has no torch wheel: the train and probe jobs will fail"
    fi
  fi
  "$VENV/bin/zhisuan" --help >/dev/null || fail "the zhisuan command does not run in $VENV"
  echo "    installed: $("$VENV/bin/python" -c 'import importlib.metadata as m; print(", ".join(f"{n} {m.version(n)}" for n in ("zhisuan", "ray", "nvidia-ml-py")))')"
}

main() {
  local started install_started install_s
  started=$(now)
  echo "Zhisuan GPU check, $(date -u '+%Y-%m-%d %H:%M:%S UTC'), from $ROOT"
  echo "log $LOG; work directory $WORK"
  local source="from the package registry"
  [[ -n $WHEELS ]] && source="offline, from the wheels in $WHEELS"
  echo "== [0] install: virtual environment and pip install -e . ($source)"
  install_started=$(now)
  if ! (install); then
    echo "-- install: FAILED in $(elapsed "$install_started") s"
    echo "FAILED at step install: $(cat "$WORK/install-failure" 2>/dev/null || echo "see the output above")"
    return 1
  fi
  install_s=$(elapsed "$install_started")
  echo "-- install: ok in $install_s s"
  cd "$ROOT" || return 1
  PYTHONUNBUFFERED=1 "$VENV/bin/python" "$ROOT/benchmarks/gpu_check/steps.py" --venv "$VENV" --work "$WORK" \
    --started-at "$started" --install-s "$install_s" ${STEP_ARGS[@]+"${STEP_ARGS[@]}"}
}

main 2>&1 | tee -a "$LOG"
status=${PIPESTATUS[0]}
echo "exit status $status; the whole output is in $LOG" | tee -a "$LOG"
exit "$status"
