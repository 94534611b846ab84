#!/usr/bin/env bash
# GPU check: stages ordered by value, each under its own time limit, the whole within BUDGET
# seconds (default 520: inside a 540 s slot on a cold H100 or H200):
#   0  the card (SM count, L2 size as torch reports it), the versions
#   1  the persistent (spread, streamed) and one-launch paths' GPU tests, the CUDA graph tests, then
#      the excitation kernels', the plain eager path's and the parity suite's tests
#   2  fused-se-bench on SE-ResNet-50's SE shapes at B=128, bf16, fwd and fwd+bwd: eager, fused,
#      fused-3pass on channels_last; torch.compile beside eager and fused (channels_last); NCHW
#   3  inference at batch 1 (also replayed from CUDA graphs), the residual tail (--tail), whole-model
#      training steps (--e2e)
#   4  converted models against their originals (check_models.py), a one-GPU DDP step
#      (ddp_smoke.py), then the rest of the GPU tests (pytest-xdist where installed)
# Then benchmarks/gpu_summary.py: each stage's outcome, the tests' failures, and the README's
# targets (Benchmarks > Targets) met, missed by how much, or not measured.
#
#   bash benchmarks/gpu_check.sh            all stages
#   bash benchmarks/gpu_check.sh --quick    stages 0 to 2
#   OUT=/some/folder BUDGET=520 bash benchmarks/gpu_check.sh
#
# Writes into $OUT/<card>_<date>/ (OUT defaults to benchmarks/results/): gpu_check.log (all
# output), bench.json (every bench row of every stage, each with its stage in "run"), bench.csv,
# bench.png, pytest.txt (every test run), summary.txt, and extras.tar.gz (check_models.json,
# ddp_smoke.json, the stages' times, the command). Rows are written as they are measured: a stage
# cut at its limit keeps what it measured.
# Runs from the source tree without installing anything: fused_se and kernels/ are laid out as
# the installed package (kernels/ as fused_se.kernels) in a temporary folder on PYTHONPATH.
# EXTRA_PYTEST and EXTRA_BENCH add arguments to every pytest and fused-se-bench run;
# BATCH sets the bench's batch (default 128); GPU_CHECK_ALLOW_CPU=1 goes on without a GPU (to try
# the script's plumbing on a CPU, e.g. with BATCH=2 EXTRA_BENCH="--device cpu --reps 5").
set -uo pipefail
export PYTHONUNBUFFERED=1

QUICK=0
for arg in "$@"; do
  case "$arg" in
    --quick) QUICK=1 ;;
    -h|--help) awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; exit 0 ;;
    *) echo "gpu_check.sh: unknown argument $arg (see --help)" >&2; exit 2 ;;
  esac
done

BUDGET="${BUDGET:-520}"
RESERVE=25  # seconds kept for the summary
DEADLINE=$((SECONDS + BUDGET))
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
OUT="${OUT:-$ROOT/benchmarks/results}"
mkdir -p "$OUT"
CARD="$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -n 1 | tr 'A-Z ' 'a-z-' | tr -cd 'a-z0-9-')"
OUT="$(cd "$OUT" && pwd)/${CARD:-unknown-gpu}_$(date -u +%Y-%m-%d)"
mkdir -p "$OUT"
LOG="$OUT/gpu_check.log"
ROWS="$OUT/bench.json"
TESTS="$OUT/pytest.txt"
: > "$LOG"
: > "$TESTS"
rm -f "$ROWS"
exec > >(tee -a "$LOG") 2>&1

WORK="$(mktemp -d)"  # the package laid out, and what goes into extras.tar.gz
trap 'rm -rf "$WORK"' EXIT
PKG="$WORK/pkg"
EXTRAS="$WORK/extras"
mkdir -p "$PKG" "$EXTRAS"
STAGES="$EXTRAS/stages.tsv"
echo "bash benchmarks/gpu_check.sh $* (BUDGET=$BUDGET)" > "$EXTRAS/command.txt"
cp -r "$ROOT/fused_se" "$PKG/fused_se"
cp -r "$ROOT/kernels" "$PKG/fused_se/kernels"
export PYTHONPATH="$PKG${PYTHONPATH:+:$PYTHONPATH}"
# From $PKG, `python -m` finds the laid-out package first, not the source tree's fused_se/.
cd "$PKG" || exit 1

# stage NAME CAP COMMAND...: runs COMMAND under `timeout -k 10` for CAP seconds or what is left
# of the budget, whichever is less (skipped below 15 s), and records its outcome in $STAGES.
# With TO_TESTS=1 the output also goes to pytest.txt.
TO_TESTS=0
stage() {
  local name="$1" cap="$2"
  shift 2
  local left=$((DEADLINE - SECONDS - RESERVE - 10))
  local limit=$((cap < left ? cap : left))
  if [ "$limit" -lt 15 ]; then
    echo "== stage $name: skipped, ${left}s left of the budget"
    printf '%s\tskipped\t0\t%s\n' "$name" "$cap" >> "$STAGES"
    return 0
  fi
  echo "== stage $name (limit ${limit}s) $(date -u +%H:%M:%S)"
  local t0=$SECONDS rc
  if [ "$TO_TESTS" = 1 ]; then
    echo "== stage $name" >> "$TESTS"
    timeout -k 10 "$limit" "$@" 2>&1 | tee -a "$TESTS"
    rc=${PIPESTATUS[0]}
  else
    timeout -k 10 "$limit" "$@"
    rc=$?
  fi
  printf '%s\t%s\t%s\t%s\n' "$name" "$rc" "$((SECONDS - t0))" "$limit" >> "$STAGES"
  echo "== stage $name: exit status $rc after $((SECONDS - t0))s"
  return 0
}

# finish: the summary (gpu_summary.py), the extras' tarball, and the exit status: 0 when every
# stage that ran exited 0.
finish() {
  echo "== summary $(date -u +%H:%M:%S)"
  timeout -k 5 "$RESERVE" python "$ROOT/benchmarks/gpu_summary.py" --rows "$ROWS" --readme "$ROOT/README.md" \
    --stages "$STAGES" --pytest "$TESTS" --csv "$OUT/bench.csv" --plot "$OUT/bench.png" --out "$OUT/summary.txt"
  rm -f "$OUT"/.*.tmp
  tar -czf "$OUT/extras.tar.gz" -C "$EXTRAS" .
  local status=0 rc
  while IFS=$'\t' read -r _ rc _ _; do
    [ "$rc" = 0 ] || [ "$rc" = skipped ] || status=1
  done < "$STAGES"
  echo "== done in ${SECONDS}s (status $status): $OUT"
  exit "$status"
}

# ---- stage 0: the card and the versions --------------------------------------------------------
stage "0 card and versions" 60 python - <<'EOF'
import importlib.metadata as md
import platform
import sys

import torch

print(f"python {platform.python_version()} | torch {torch.__version__} | cuda {torch.version.cuda}")
for pkg in ("triton", "pytest", "pytest-timeout", "pytest-xdist", "timm", "torchvision", "matplotlib", "hypothesis"):
    try:
        print(f"  {pkg} {md.version(pkg)}")
    except md.PackageNotFoundError:
        print(f"  {pkg}: not installed")
import fused_se

print(f"fused_se {fused_se.__version__} from {fused_se.__file__}")
if not torch.cuda.is_available():
    print("no CUDA device")
    sys.exit(3)
p = torch.cuda.get_device_properties(0)
l2 = getattr(p, "L2_cache_size", 0)
print(
    f"card {p.name} | {p.multi_processor_count} SMs | L2 {l2} bytes ({l2 / 2**20:.1f} MiB, as torch reports it) | "
    f"{p.total_memory / 2**30:.1f} GiB | compute capability {p.major}.{p.minor} | {torch.cuda.device_count()} device(s)"
)
from fused_se.kernels import heuristics as hz

device = torch.device("cuda", 0)
print(f"the planner assumes: L2 {hz.l2_bytes(device)} bytes, {hz.sm_count(device)} SMs")
EOF
STAGE0="$(tail -n 1 "$STAGES" | cut -f2)"
if [ "$STAGE0" = 3 ] && [ "${GPU_CHECK_ALLOW_CPU:-0}" != 1 ]; then
  echo "no CUDA device: nothing more to check here (GPU_CHECK_ALLOW_CPU=1 goes on, to try the plumbing)"
  finish
elif [ "$STAGE0" != 0 ] && [ "$STAGE0" != 3 ]; then
  echo "stage 0 failed: the rest cannot run"
  finish
fi

PYTEST=(python -m pytest "$ROOT/tests" -p no:cacheprovider -p faulthandler -rfE)
# Per-test limits (pytest-timeout). A hung kernel holds the main thread in a CUDA call, where only
# the thread method can stop it (it ends the pytest process, after dumping every thread's stack).
T60=() T90=() T120=()
if python -c "import pytest_timeout" 2>/dev/null; then
  PYTEST+=(--timeout-method=thread)
  T60=(--timeout=60) T90=(--timeout=90) T120=(--timeout=120)
fi
# shellcheck disable=SC2206
EXTRA_PYTEST_ARGS=(${EXTRA_PYTEST:-})
# shellcheck disable=SC2206
EXTRA_BENCH_ARGS=(${EXTRA_BENCH:-})
BATCH="${BATCH:-128}"  # the bench's batch (the README's targets are at 128)

# ---- stage 1: the persistent and one-launch paths, then CUDA graphs ------------------------------
# Selected by name, wherever the files live: the planner's, the streamed, spread and one-launch
# paths' and their hand-offs' tests, their GPU-only repeatability tests and their opcheck.
PATHS_K="test_plan or test_sync or test_stream or test_spread or test_one_launch or one_launch or streamed or spread or persistent"
TO_TESTS=1
stage "1a persistent and one-launch paths" 150 "${PYTEST[@]}" -v -x "${T90[@]}" \
  -k "($PATHS_K) and not cuda_graph" "${EXTRA_PYTEST_ARGS[@]}"
stage "1b CUDA graph capture" 60 "${PYTEST[@]}" -v -x "${T60[@]}" -k "cuda_graph" "${EXTRA_PYTEST_ARGS[@]}"
# the excitation kernels, the plain eager path (autograd.Function, no custom op) and the parity suite
stage "1c excitation, plain eager path, parity" 150 python -m pytest "$ROOT/tests/kernels/test_passes.py" \
  "$ROOT/tests/api/test_plain_eager.py" "$ROOT/tests/api/test_parity.py" -p no:cacheprovider -p faulthandler -rfE -q \
  "${T60[@]}" "${EXTRA_PYTEST_ARGS[@]}"
TO_TESTS=0

# ---- stage 2: the bench on SE-ResNet-50's shapes --------------------------------------------------
BENCH=(python -m fused_se.bench --json "$ROWS" --append)
# channels_last first (the README's targets are on it), then torch.compile, then NCHW
stage "2a bench: channels_last" 100 "${BENCH[@]}" --label stage2 --batch "$BATCH" --dtype bf16 \
  --layouts channels_last --providers eager fused fused-3pass "${EXTRA_BENCH_ARGS[@]}"
stage "2b bench: torch.compile" 150 "${BENCH[@]}" --label stage2-compile --batch "$BATCH" --dtype bf16 \
  --layouts channels_last --providers eager fused compile "${EXTRA_BENCH_ARGS[@]}"
stage "2c bench: NCHW" 80 "${BENCH[@]}" --label stage2-nchw --batch "$BATCH" --dtype bf16 \
  --layouts nchw --providers eager fused fused-3pass "${EXTRA_BENCH_ARGS[@]}"

if [ "$QUICK" = 0 ]; then
  # ---- stage 3: batch-1 inference, the residual tail, whole models ---------------------------------
  stage "3a bench: batch-1 inference" 60 "${BENCH[@]}" --label stage3-batch1 --batch 1 --dtype bf16 --modes fwd \
    --layouts channels_last --providers eager fused fused-3pass compile eager-cudagraph fused-cudagraph \
    "${EXTRA_BENCH_ARGS[@]}"
  stage "3b bench: --tail" 100 "${BENCH[@]}" --label stage3-tail --tail --batch "$BATCH" --dtype bf16 \
    --layouts channels_last --providers eager fused fused-3pass compile "${EXTRA_BENCH_ARGS[@]}"
  # scSE on segmentation_models_pytorch's Unet decoder shapes: smp's block, fused, torch.compile of smp's
  stage "3d bench: scSE" 90 "${BENCH[@]}" --label stage3-scse --preset unet_scse --batch 16 --dtype bf16 \
    --layouts channels_last --providers eager fused compile "${EXTRA_BENCH_ARGS[@]}"
  # whole models: ResNet-50 against SE-ResNet-50, eager only (every mode: benchmarks/gpu_e2e.sh); the e2e
  # harness takes no timer options, so not EXTRA_BENCH
  stage "3c bench: --e2e" 100 "${BENCH[@]}" --label stage3-e2e --e2e --models resnet50 seresnet50 --modes eager \
    --batches 64 --rounds 3

  # ---- stage 4: converted models, DDP, the rest of the tests ---------------------------------------
  stage "4a converted models" 90 python "$ROOT/benchmarks/check_models.py" --json "$EXTRAS/check_models.json"
  stage "4b one-GPU DDP step" 60 python "$ROOT/benchmarks/ddp_smoke.py" --json "$EXTRAS/ddp_smoke.json"
  # Not here: stage 1's tests; the ahead-of-time compile check (for machines without a GPU; here
  # the kernels compile for real); the two-process gloo tests, which run CPU tensors through the
  # Triton interpreter (CI's job; ddp_smoke.py is the GPU's).
  XDIST=()
  python -c "import xdist" 2>/dev/null && XDIST=(-n 8)
  TO_TESTS=1
  stage "4c the rest of the GPU tests" 400 "${PYTEST[@]}" -q "${XDIST[@]}" "${T120[@]}" \
    -k "not ($PATHS_K) and not cuda_graph and not test_kernels_compile_for_gpu and not _matches_single_process and not gradient_layout and not fsdp2" \
    "${EXTRA_PYTEST_ARGS[@]}"
  TO_TESTS=0
fi

# ---- the summary -----------------------------------------------------------------------------------
finish
