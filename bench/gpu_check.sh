#!/usr/bin/env bash
# The one prepared device check (issue 18): two parts of at most 5.5 minutes each on one GPU.
#
#   part 1  build wmpo._C with its CUDA kernels for sm_90 (CMake directly: no pip, no network), then
#           bench/gpu_check_ops.py (every fused op and the attention kernel, compiled, against float64
#           at production shapes: GB/s, backward, torch.compile; a tiny-preset chunk captured in a CUDA
#           graph that must report the capture and match eager), then `pytest -m gpu`
#   part 2  bench/gpu_check_model.py: the paper-size world model in bf16 (fused vs reference, cached vs
#           uncached), ms and MFU at 16 and 64 trajectories, cache memory retained vs needed, VAE decode
#           memory per frame, the memory plan at 64 and 128 slots
#
# Usage: bench/gpu_check.sh [--part 1|2|all] [--out DIR] [--dry-run]
#   --dry-run  on the CPU: the same steps with tiny shapes (Triton in its interpreter, a CMake configure
#              instead of the CUDA build); what CI runs
# Needs: a Python with torch (CUDA build on the GPU), triton and this project's requirements
# (PYTHON=..., default .venv/bin/python if present, else python3); cmake >= 3.26 and nvcc for the build.
# Results: JSON per part under bench/results/ (gpu_check-part1-*.json, gpu_check-part2-*.json) and
# gpu_check-summary-*.json with every step's status and time; the exit status is 0 only if all passed.
set -uo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT"

PART=all
OUT="$ROOT/bench/results"
DRY=0
PART_LIMIT_S=${GPU_CHECK_PART_LIMIT_S:-330}  # 5.5 minutes per part
while [ $# -gt 0 ]; do
  case "$1" in
    --part) PART="$2"; shift 2 ;;
    --out) OUT="$2"; shift 2 ;;
    --dry-run) DRY=1; shift ;;
    -h|--help) sed -n '2,20p' "$0"; exit 0 ;;
    *) echo "gpu_check.sh: unknown argument '$1' (expected --part 1|2|all, --out DIR, --dry-run)" >&2; exit 2 ;;
  esac
done
case "$PART" in 1|2|all) ;; *) echo "gpu_check.sh: --part: expected 1, 2 or all, got '$PART'" >&2; exit 2 ;; esac
if [ -z "${PYTHON:-}" ]; then
  if [ -x "$ROOT/.venv/bin/python" ]; then PYTHON="$ROOT/.venv/bin/python"; else PYTHON=python3; fi
fi
mkdir -p "$OUT"
OUT="$(cd "$OUT" && pwd)"
STAMP="$(date -u +%Y%m%dT%H%M%SZ)"
LOG_DIR="$OUT/gpu_check-logs-$STAMP"
mkdir -p "$LOG_DIR"
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"  # a source checkout works without pip install
export WMPO_NO_PROGRESS=1

if [ "$DRY" = 1 ]; then
  DEVICE=cpu; QUICK=--quick
  export TRITON_INTERPRET=1
  BUILD_DIR="$ROOT/build/gpu-check-dryrun"
else
  DEVICE=cuda; QUICK=
  unset TRITON_INTERPRET  # compiled kernels, never the interpreter
  BUILD_DIR="$ROOT/build/gpu-check"
  if ! "$PYTHON" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
    echo "gpu_check.sh: $PYTHON has no CUDA device (torch.cuda.is_available() is False); use --dry-run on a CPU" >&2
    exit 2
  fi
fi

STEPS=()     # name|status|seconds|log
FAILED=0
T_PART=0
part_left() { echo $(( PART_LIMIT_S - ($(date +%s) - T_PART) )); }

# run_step NAME CMD...: runs under the time left in the current part; records status and time
run_step() {
  local name="$1"; shift
  local left; left=$(part_left)
  local log="$LOG_DIR/$name.log"
  if [ "$left" -le 5 ]; then
    echo "== $name: SKIPPED (the part's ${PART_LIMIT_S} s are spent)"
    STEPS+=("$name|skipped|0|$log"); FAILED=1; return
  fi
  echo "== $name (at most ${left} s)"
  local t0; t0=$(date +%s)
  timeout --signal=TERM --kill-after=10 "$left" "$@" 2>&1 | tee "$log"
  local rc=${PIPESTATUS[0]}
  local dt=$(( $(date +%s) - t0 ))
  local status=pass
  if [ "$rc" = 124 ] || [ "$rc" = 137 ]; then status=timeout; elif [ "$rc" != 0 ]; then status=fail; fi
  [ "$status" = pass ] || FAILED=1
  echo "== $name: $status (${dt} s)"
  STEPS+=("$name|$status|$dt|$log")
}

cmake_bin() {
  "$PYTHON" - <<'EOF'
import shutil, subprocess, sys
from pathlib import Path
cands = [shutil.which("cmake", path=str(Path(sys.executable).parent)), shutil.which("cmake")]
try:
    import cmake
    cands.insert(0, str(Path(cmake.CMAKE_BIN_DIR) / "cmake"))
except ImportError:
    pass
for c in cands:
    if c and Path(c).exists():
        v = subprocess.run([c, "--version"], capture_output=True, text=True).stdout.split()
        if len(v) > 2 and tuple(int(x) for x in v[2].split(".")[:2]) >= (3, 26):
            print(c); break
EOF
}

build_extension() {
  local cm; cm="$(cmake_bin)"
  if [ -z "$cm" ]; then echo "no cmake >= 3.26 (pip install cmake)"; return 1; fi
  local gen=() nj
  nj="$(command -v ninja || "$PYTHON" -c 'import ninja, os; print(os.path.join(ninja.BIN_DIR, "ninja"))' 2>/dev/null)"
  [ -n "$nj" ] && [ -x "$nj" ] && gen=(-G Ninja -DCMAKE_MAKE_PROGRAM="$nj")
  if [ "$DRY" = 1 ]; then
    # the same configure (CMake logic, torch discovery, CUDA decision); the CPU build itself is what
    # `make setup` already did, so the dry run does not rebuild
    rm -rf "$BUILD_DIR"
    "$cm" -S "$ROOT" -B "$BUILD_DIR" "${gen[@]}" -DPython_EXECUTABLE="$PYTHON" -DCMAKE_BUILD_TYPE=Release \
      -DWMPO_CUDA=AUTO -DTORCH_CUDA_ARCH_LIST=9.0 || return 1
    grep -q "WMPO_TORCH_VERSION_DETECTED" "$BUILD_DIR/wmpo_torch_info.cmake" || return 1
    echo "dry run: configured; the CUDA build (WMPO_CUDA=ON, sm_90) runs on the GPU"
    return 0
  fi
  "$cm" -S "$ROOT" -B "$BUILD_DIR" "${gen[@]}" -DPython_EXECUTABLE="$PYTHON" -DCMAKE_BUILD_TYPE=Release \
    -DWMPO_CUDA=ON -DTORCH_CUDA_ARCH_LIST=9.0 || return 1
  "$cm" --build "$BUILD_DIR" -j "$(nproc)" || return 1
  local so; so="$(ls "$BUILD_DIR"/_C*.so | head -1)"
  cp "$so" "$ROOT/wmpo/" || return 1
  # an editable install may load wmpo._C from its own build folder: replace that file too
  local loaded; loaded="$("$PYTHON" -c 'import importlib.util as u; s = u.find_spec("wmpo._C"); print(s.origin if s else "")' 2>/dev/null)"
  if [ -n "$loaded" ] && [ "$loaded" != "$ROOT/wmpo/$(basename "$so")" ]; then
    echo "replacing $loaded (editable install) with the CUDA build"; cp "$so" "$loaded" || return 1
  fi
  "$PYTHON" -c "import wmpo.ops as o; assert o.extension_has_cuda(), 'wmpo._C has no CUDA kernels'; print('wmpo._C with CUDA kernels:', o._C.__file__)"
}
export -f build_extension cmake_bin
export ROOT PYTHON DRY BUILD_DIR

gpu_tests() {
  # every test marked gpu (skipped without a CUDA device: the dry run only checks they collect and run)
  local files; files=$(grep -l "mark.gpu" "$ROOT"/tests/test_*.py | tr '\n' ' ')
  "$PYTHON" -m pytest -m gpu -q -p no:cacheprovider $files
}
export -f gpu_tests

if [ "$PART" = 1 ] || [ "$PART" = all ]; then
  T_PART=$(date +%s)
  echo "==== gpu_check part 1 (device=$DEVICE, dry_run=$DRY)"
  run_step build bash -c build_extension
  run_step ops "$PYTHON" "$ROOT/bench/gpu_check_ops.py" $QUICK --device "$DEVICE" --out "$OUT"
  run_step pytest_gpu bash -c gpu_tests
fi
if [ "$PART" = 2 ] || [ "$PART" = all ]; then
  T_PART=$(date +%s)
  echo "==== gpu_check part 2 (device=$DEVICE, dry_run=$DRY)"
  run_step model "$PYTHON" "$ROOT/bench/gpu_check_model.py" $QUICK --device "$DEVICE" --out "$OUT"
fi

SUMMARY="$OUT/gpu_check-summary-$DEVICE$([ "$DRY" = 1 ] && echo -dryrun)-$STAMP.json"
"$PYTHON" - "$SUMMARY" "$DRY" "$PART" "$LOG_DIR" "${STEPS[@]}" <<'EOF'
import datetime, json, subprocess, sys
from pathlib import Path
path, dry, part, log_dir, *steps = sys.argv[1:]
rows = []
for s in steps:
    name, status, secs, log = s.split("|", 3)
    text = Path(log).read_text(errors="replace") if Path(log).exists() else ""
    rows.append({"step": name, "status": status, "seconds": int(secs), "log": log,
                 "results": [l.split("wrote ", 1)[1].strip() for l in text.splitlines() if "wrote " in l]})
try:
    sha = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
except Exception:
    sha = "unknown"
out = {"check": "bench/gpu_check.sh", "dry_run": dry == "1", "part": part, "git_sha": sha,
       "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
       "ok": all(r["status"] == "pass" for r in rows), "steps": rows, "logs": log_dir}
Path(path).write_text(json.dumps(out, indent=1) + "\n")
print("==== gpu_check summary")
for r in rows:
    print(f"  {r['step']:12s} {r['status']:8s} {r['seconds']:5d} s  {' '.join(r['results'])}")
print(f"  {'PASS' if out['ok'] else 'FAILED'}; wrote {path}")
EOF
exit $FAILED
