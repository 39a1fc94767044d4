#!/usr/bin/env bash
# gpu_check.sh: every GPU check of gpuconv in one call, results in one folder.
#
#   benchmarks/gpu_check.sh OUT_DIR [CIFAR10]
#
# Runs from a plain checkout without installing anything (PYTHONPATH points at
# the checkout) on a machine with an NVIDIA GPU, CuPy and a CUDA build of
# PyTorch; needs no internet. CIFAR10 is cifar-10-python.tar.gz,
# cifar-10-binary.tar.gz (unpacked into OUT_DIR/data, removed at the end unless
# GPU_CHECK_KEEP_DATA=1) or a folder in an official layout (the folder holding
# cifar-10-batches-py/ or cifar-10-batches-bin/, or that folder itself);
# without it the training steps are skipped.
#
# Steps, each under its own `timeout` and all within GPU_CHECK_BUDGET seconds
# (default 450; with the 15 s grace of a step killed at the deadline, under 8
# minutes); a step that fails or runs out of time is recorded and the next one
# runs:
#   machine      machine.json, nvidia-smi.txt: GPU, driver, CUDA, CuPy, torch
#   data         unpack / locate CIFAR-10 (CPU only)
#   gpu-tests    python -m pytest -m gpu tests/   (NumPy vs CuPy parity, raw kernels)
#   bench        gpuconv bench --device cuda: seed-cnn rows (train, train-amp, eval)
#                and the airbench rows when the benchmark has them
#   train        gpuconv train on the real CIFAR-10, a few epochs on the GPU
#   train-amp    the same with --amp
#   airbench     gpuconv train --recipe airbench (skipped with a note while the
#                train command has no --recipe airbench)
#
# OUT_DIR gets summary.json / summary.txt (status, seconds, command and log
# of every step), logs/<step>.log and the steps' own files (bench/, runs/,
# tests/junit.xml). Exit status: 0 all steps that ran passed; 1 a step failed
# or timed out; 2 bad arguments; 3 no usable CUDA device (GPU steps skipped).
#
# Environment: PYTHON (default python3), GPU_CHECK_BUDGET, GPU_CHECK_EPOCHS
# (default 3), GPU_CHECK_KEEP_DATA.
set -uo pipefail

usage() {
  echo "usage: $0 OUT_DIR [CIFAR10]  (CIFAR10: cifar-10-python.tar.gz," \
       "cifar-10-binary.tar.gz or a folder in an official layout)" >&2
  exit 2
}

[ $# -ge 1 ] && [ $# -le 2 ] || usage
case "$1" in -h|--help) usage ;; esac
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
OUT=$1
CIFAR=${2:-}
PY=${PYTHON:-python3}
BUDGET=${GPU_CHECK_BUDGET:-450}
EPOCHS=${GPU_CHECK_EPOCHS:-3}

command -v timeout >/dev/null || { echo "gpu_check: needs coreutils timeout" >&2; exit 2; }
command -v "$PY" >/dev/null || { echo "gpu_check: no $PY (set PYTHON)" >&2; exit 2; }
[[ "$BUDGET" =~ ^[0-9]+$ ]] || { echo "gpu_check: GPU_CHECK_BUDGET=$BUDGET is not a number of seconds" >&2; exit 2; }
[[ "$EPOCHS" =~ ^[1-9][0-9]*$ ]] || { echo "gpu_check: GPU_CHECK_EPOCHS=$EPOCHS is not a positive integer" >&2; exit 2; }
if [ -e "$OUT" ] && [ -n "$(ls -A "$OUT" 2>/dev/null)" ]; then
  echo "gpu_check: $OUT exists and is not empty; give a new folder (nothing is written over)" >&2
  exit 2
fi
if [ -n "$CIFAR" ] && [ ! -e "$CIFAR" ]; then
  echo "gpu_check: $CIFAR: no such file or folder" >&2
  exit 2
fi
mkdir -p "$OUT/logs" || { echo "gpu_check: cannot create $OUT" >&2; exit 2; }
OUT=$(cd "$OUT" && pwd)
[ -n "$CIFAR" ] && CIFAR=$(cd "$(dirname "$CIFAR")" && pwd)/$(basename "$CIFAR")

export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONDONTWRITEBYTECODE=1
GPUCONV=("$PY" -m gpuconv)
START=$(date +%s)
STEPS="$OUT/.steps.tsv"
: >"$STEPS"
FAILED=0

# summary.json / summary.txt from the steps so far (rewritten after every step,
# so a killed run still leaves them)
write_summary() {
  "$PY" - "$STEPS" "$OUT" "$START" "$BUDGET" <<'EOF'
import json, sys, time
steps_file, out, start, budget = sys.argv[1], sys.argv[2], float(sys.argv[3]), int(sys.argv[4])
steps = []
for line in open(steps_file, encoding="utf-8"):
    name, status, rc, seconds, log, note, command = line.rstrip("\n").split("\t")
    steps.append({"step": name, "status": status, "rc": None if rc == "" else int(rc),
                  "seconds": None if seconds == "" else float(seconds),
                  "log": log or None, "note": note or None, "command": command or None})
summary = {"schema": "gpuconv-gpu-check/1", "out": out, "budget_s": budget,
           "started": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(start)),
           "elapsed_s": round(time.time() - start, 1), "steps": steps}
with open(f"{out}/summary.json", "w", encoding="utf-8") as f:
    json.dump(summary, f, indent=2)
    f.write("\n")
with open(f"{out}/summary.txt", "w", encoding="utf-8") as f:
    for s in steps:
        secs = "" if s["seconds"] is None else f"{s['seconds']:7.1f} s"
        f.write(f"{s['step']:<10} {s['status']:<9} {secs:>9}  {s['note'] or ''}\n")
    f.write(f"elapsed {summary['elapsed_s']} s of a {budget} s budget\n")
EOF
}

record() {  # name status rc seconds log note command
  local note=${6//[$'\t\n']/ } command=${7//[$'\t\n']/ }  # one TSV line per step
  printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$1" "$2" "$3" "$4" "$5" "$note" "$command" >>"$STEPS"
  printf 'gpu_check: %-10s %s%s\n' "$1" "$2" "${6:+ ($6)}" >&2
  write_summary
}

skip() {  # name reason
  record "$1" skipped "" "" "" "$2" ""
}

# run_step NAME MAX_SECONDS CMD...: run CMD under timeout (at most MAX_SECONDS and
# never past the budget), log in logs/NAME.log
run_step() {
  local name=$1 max=$2
  shift 2
  local now left limit log t0 rc status note=""
  now=$(date +%s)
  left=$((START + BUDGET - now))
  if [ "$left" -lt 20 ]; then
    skip "$name" "out of time: ${left} s of the ${BUDGET} s budget left"
    FAILED=1
    return 1
  fi
  limit=$((max < left ? max : left))
  log="$OUT/logs/$name.log"
  echo "\$ $*" >"$log"
  t0=$(date +%s.%N)
  timeout --signal=TERM --kill-after=15 "$limit" "$@" >>"$log" 2>&1
  rc=$?
  local secs
  secs=$("$PY" -c "import sys; print(round($(date +%s.%N) - $t0, 1))")
  if [ "$rc" -eq 0 ]; then
    status=passed
  elif [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then
    status=timeout; note="stopped after its ${limit} s limit"; FAILED=1
  else
    status=failed; note="exit $rc; last line: $(grep -v '^\s*$' "$log" | tail -n1 | cut -c1-160)"
    FAILED=1
  fi
  record "$name" "$status" "$rc" "$secs" "logs/$name.log" "$note" "$*"
  [ "$rc" -eq 0 ]
}

cleanup() {
  if [ -d "$OUT/data" ] && [ "${GPU_CHECK_KEEP_DATA:-0}" != 1 ]; then
    rm -rf "$OUT/data"
  fi
  rm -f "$STEPS"
}
trap 'write_summary; cleanup' EXIT
trap 'echo "gpu_check: interrupted" >&2; exit 130' INT TERM

# ---- machine ---------------------------------------------------------------------------
(command -v nvidia-smi >/dev/null && nvidia-smi >"$OUT/nvidia-smi.txt" 2>&1) \
  || echo "nvidia-smi not found or failed" >"$OUT/nvidia-smi.txt"
run_step machine 60 "$PY" - "$OUT/machine.json" "$REPO" <<'EOF'
import json, os, platform, socket, subprocess, sys, time
out, repo = sys.argv[1], sys.argv[2]
info = {"date": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "hostname": socket.gethostname(),
        "platform": platform.platform(), "python": sys.version.split()[0],
        "cpu_count": os.cpu_count()}
try:
    info["commit"] = subprocess.run(["git", "-C", repo, "rev-parse", "HEAD"], capture_output=True,
                                    text=True, timeout=10).stdout.strip() or None
except Exception as exc:
    info["commit"] = None
try:
    q = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total",
                        "--format=csv,noheader"], capture_output=True, text=True, timeout=30)
    info["nvidia_smi"] = [line.strip() for line in q.stdout.splitlines() if line.strip()]
except Exception as exc:
    info["nvidia_smi"] = f"unavailable ({type(exc).__name__})"
import numpy
info["numpy"] = numpy.__version__
from gpuconv import __version__
from gpuconv.backend import cuda_is_available, cuda_unavailable_reason
info["gpuconv"] = __version__
info["cuda_usable"] = cuda_is_available()
info["cuda_unusable_reason"] = cuda_unavailable_reason() or None
try:
    import cupy
    info["cupy"] = cupy.__version__
    if info["cuda_usable"]:
        rt = cupy.cuda.runtime
        props = rt.getDeviceProperties(0)
        name = props.get("name", b"")
        info["gpu"] = name.decode() if isinstance(name, bytes) else str(name)
        info["gpu_count"] = rt.getDeviceCount()
        info["gpu_memory_bytes"] = int(props.get("totalGlobalMem", 0))
        info["compute_capability"] = f"{props.get('major')}.{props.get('minor')}"
        info["cuda_runtime"] = rt.runtimeGetVersion()
        info["cuda_driver"] = rt.driverGetVersion()
except Exception as exc:
    info["cupy_error"] = f"{type(exc).__name__}: {exc}"
try:
    import torch
    info["torch"] = torch.__version__
    info["torch_cuda"] = torch.version.cuda
    info["torch_cuda_available"] = torch.cuda.is_available()
    if torch.cuda.is_available():
        info["torch_gpu"] = torch.cuda.get_device_name(0)
        info["cudnn"] = torch.backends.cudnn.version()
except Exception as exc:
    info["torch_error"] = f"{type(exc).__name__}: {exc}"
with open(out, "w", encoding="utf-8") as f:
    json.dump(info, f, indent=2)
    f.write("\n")
print(json.dumps(info, indent=2))
EOF
CUDA_REASON=$("$PY" -c "from gpuconv.backend import cuda_unavailable_reason as r; print(r())" 2>&1 | tail -n1)
if [ -n "$CUDA_REASON" ]; then
  GPU_SKIP="no usable CUDA device: $CUDA_REASON"
else
  GPU_SKIP=""
fi

# ---- data ------------------------------------------------------------------------------
DATA=""
DATA_SKIP="no CIFAR-10 given (second argument)"
if [ -n "$CIFAR" ]; then
  if [ -d "$CIFAR" ]; then
    for d in "$CIFAR" "$CIFAR/.."; do
      if [ -d "$d/cifar-10-batches-py" ] || [ -d "$d/cifar-10-batches-bin" ]; then
        DATA=$(cd "$d" && pwd); break
      fi
    done
    if [ -n "$DATA" ]; then
      record data passed 0 0 "" "using the folder $DATA" ""
    else
      DATA_SKIP="$CIFAR holds neither cifar-10-batches-py/ nor cifar-10-batches-bin/"
      record data failed "" "" "" "$DATA_SKIP" ""
      FAILED=1
    fi
  else
    mkdir -p "$OUT/data"
    if run_step data 90 "$PY" -c "
import sys
from gpuconv.data.datasets.download import safe_extract
safe_extract(sys.argv[1], sys.argv[2])" "$CIFAR" "$OUT/data"; then
      if [ -d "$OUT/data/cifar-10-batches-py" ] || [ -d "$OUT/data/cifar-10-batches-bin" ]; then
        DATA="$OUT/data"
      else
        DATA_SKIP="$CIFAR unpacked to neither cifar-10-batches-py/ nor cifar-10-batches-bin/"
        record data-layout failed "" "" "" "$DATA_SKIP" ""
        FAILED=1
      fi
    else
      DATA_SKIP="$CIFAR could not be unpacked (logs/data.log)"
    fi
  fi
else
  skip data "$DATA_SKIP"
fi

# ---- GPU steps -------------------------------------------------------------------------
gpu_step() {  # name max_seconds needs_data cmd...
  local name=$1 max=$2 needs=$3
  shift 3
  if [ -n "$GPU_SKIP" ]; then skip "$name" "$GPU_SKIP"; return; fi
  if [ "$needs" = data ] && [ -z "$DATA" ]; then skip "$name" "$DATA_SKIP"; return; fi
  run_step "$name" "$max" "$@"
}

gpu_step gpu-tests 150 - "$PY" -m pytest -q -m gpu -p no:cacheprovider \
  --junitxml "$OUT/tests/junit.xml" "$REPO/tests"

BENCH_PATTERNS=(seed-cnn)
if [ -z "$GPU_SKIP" ] && "${GPUCONV[@]}" bench --list 2>/dev/null | grep -q airbench; then
  BENCH_PATTERNS+=(airbench)
fi
mkdir -p "$OUT/bench"
gpu_step bench 150 - "${GPUCONV[@]}" bench --device cuda --workloads "${BENCH_PATTERNS[@]}" \
  --batch-sizes 128 256 --json "$OUT/bench/bench-cuda.json" --png "$OUT/bench/bench-cuda.png"

mkdir -p "$OUT/runs"
gpu_step train 120 data "${GPUCONV[@]}" train --data-dir "$DATA" --device cuda \
  --epochs "$EPOCHS" --out "$OUT/runs/seed-cnn" --quiet
gpu_step train-amp 90 data "${GPUCONV[@]}" train --data-dir "$DATA" --device cuda --amp \
  --epochs "$EPOCHS" --out "$OUT/runs/seed-cnn-amp" --quiet

if "${GPUCONV[@]}" train --help 2>/dev/null | grep -q -- "--recipe"; then
  gpu_step airbench 120 data "${GPUCONV[@]}" train --recipe airbench --data-dir "$DATA" \
    --device cuda --out "$OUT/runs/airbench" --quiet
else
  skip airbench "gpuconv train has no --recipe flag in this checkout (the airbench recipe is not available yet)"
fi

write_summary
if [ -n "$GPU_SKIP" ]; then
  echo "gpu_check: $GPU_SKIP; the GPU steps were skipped (results in $OUT)" >&2
  exit 3
fi
echo "gpu_check: done in $(( $(date +%s) - START )) s; results in $OUT" >&2
exit "$FAILED"
