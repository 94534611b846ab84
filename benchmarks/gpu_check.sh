#!/usr/bin/env bash
# GPU check: the parity suite on the GPU, converted timm/torchvision models against their
# originals (bf16, channels_last), then fused vs eager timings on the SE-ResNet-50 shapes.
#
#   OUT=/some/folder bash benchmarks/gpu_check.sh      (OUT defaults to benchmarks/results/)
#
# Writes into $OUT/<card>_<date>/: gpu_check.log (everything printed), command.txt, pytest.txt,
# check_models.json and bench_se.json; commit that folder under benchmarks/results/ as it is.
# Runs from the source tree without installing anything: fused_se and kernels/ are laid out as
# the installed package (kernels/ as fused_se.kernels) in a temporary folder on PYTHONPATH.
# Budget: well under 8 minutes on an H100 (the tests compile each kernel variant once).
set -uo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
OUT="${OUT:-$ROOT/benchmarks/results}"
mkdir -p "$OUT"
CARD="$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -n 1 | tr 'A-Z ' 'a-z-' | tr -cd 'a-z0-9-')"
OUT="$(cd "$OUT" && pwd)/${CARD:-unknown-gpu}_$(date -u +%Y-%m-%d)"
mkdir -p "$OUT"
echo "OUT=<folder> bash benchmarks/gpu_check.sh" > "$OUT/command.txt"
LOG="$OUT/gpu_check.log"
: > "$LOG"
exec > >(tee -a "$LOG") 2>&1

PKG="$(mktemp -d)"
trap 'rm -rf "$PKG"' EXIT
cp -r "$ROOT/fused_se" "$PKG/fused_se"
cp -r "$ROOT/kernels" "$PKG/fused_se/kernels"
export PYTHONPATH="$PKG${PYTHONPATH:+:$PYTHONPATH}"
# From $PKG, `python -m` finds the laid-out package first, not the source tree's fused_se/.
cd "$PKG"

echo "== gpu_check $(date -u +%Y-%m-%dT%H:%M:%SZ)"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true
python -c "import torch, triton; print('torch', torch.__version__, '| triton', triton.__version__, '| cuda', torch.version.cuda, '|', torch.cuda.get_device_name())"

status=0
echo "== tests on the GPU"
# The ahead-of-time compile check is for machines without a GPU; here the kernels compile for real.
timeout 300 python -m pytest "$ROOT/tests" -q -p no:cacheprovider --durations=5 \
  -k "not test_kernels_compile_for_gpu" 2>&1 | tee "$OUT/pytest.txt"
[ "${PIPESTATUS[0]}" -eq 0 ] || status=1

# MODELS_ARGS replaces the defaults (batch 8 at 224x224, bf16, channels_last).
MODELS_ARGS="${MODELS_ARGS:-}"
echo "== converted models against their originals: check_models.py $MODELS_ARGS"
# shellcheck disable=SC2086
timeout 120 python "$ROOT/benchmarks/check_models.py" $MODELS_ARGS --json "$OUT/check_models.json" || status=1

# BENCH_ARGS replaces the defaults (a smaller run, or a smoke test of this script on a CPU).
BENCH_ARGS="${BENCH_ARGS:---batch 64 --dtype bf16 --preset seresnet50}"
echo "== timings: bench_se.py $BENCH_ARGS"
# shellcheck disable=SC2086
timeout 120 python "$ROOT/benchmarks/bench_se.py" $BENCH_ARGS --json "$OUT/bench_se.json" || status=1

echo "== done (status $status)"
exit $status
