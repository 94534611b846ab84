#!/usr/bin/env bash
# GPU check: the parity suite on the GPU, converted timm/torchvision models against their
# originals (bf16, channels_last), fused-se-bench's default run (SE-ResNet-50's SE shapes against
# eager and torch.compile), the same for the residual block's tail (SE + add + ReLU), inference
# at batch 1, the end-to-end training steps, and a one-GPU DDP step of a converted SE-ResNet-50.
#
#   OUT=/some/folder bash benchmarks/gpu_check.sh      (OUT defaults to benchmarks/results/)
#
# Writes into $OUT/<card>_<date>/: gpu_check.log (everything printed), command.txt, pytest.txt,
# check_models.json, bench.{json,csv,png}, tail.{json,csv}, batch1.{json,csv}, e2e.{json,csv} and
# ddp_smoke.json; commit that folder under benchmarks/results/ as it is.
# Runs from the source tree without installing anything: fused_se and kernels/ are laid out as
# the installed package (kernels/ as fused_se.kernels) in a temporary folder on PYTHONPATH.
# Budget: under 10 minutes on an H100, each step under its own timeout (the tests compile each
# kernel variant once; the torch.compile rows compile once per row).
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
# The two-process gloo tests run CPU tensors through the Triton interpreter: CI's job (ddp_smoke.py
# below is the GPU's); activation checkpointing, in one process, runs here on the GPU.
# PYTEST_ARGS adds to the command (a smoke test of this script on a CPU: PYTEST_ARGS="-k bench").
# shellcheck disable=SC2086
timeout 240 python -m pytest "$ROOT/tests" -q -p no:cacheprovider --durations=5 \
  -k "not test_kernels_compile_for_gpu and not _matches_single_process and not gradient_layout and not fsdp2" \
  ${PYTEST_ARGS:-} 2>&1 | tee "$OUT/pytest.txt"
[ "${PIPESTATUS[0]}" -eq 0 ] || status=1

# MODELS_ARGS replaces the defaults (batch 8 at 224x224, bf16, channels_last).
MODELS_ARGS="${MODELS_ARGS:-}"
echo "== converted models against their originals: check_models.py $MODELS_ARGS"
# shellcheck disable=SC2086
timeout 60 python "$ROOT/benchmarks/check_models.py" $MODELS_ARGS --json "$OUT/check_models.json" || status=1

# BENCH_ARGS adds to (or overrides) fused-se-bench's default run: SE-ResNet-50's SE shapes, bf16,
# both layouts, fwd and fwd+bwd, eager / eager-conv / torch.compile / fused, and fused-3pass (the
# fused block held to its three launches, against which the streamed paths are weighed).
BENCH_ARGS="${BENCH_ARGS:---providers eager eager-conv compile fused fused-3pass}"
PLOT=(--plot "$OUT/bench.png")
python -c "import matplotlib" 2>/dev/null || { PLOT=(); echo "no matplotlib here: no bench.png"; }
echo "== fused-se-bench $BENCH_ARGS"
# shellcheck disable=SC2086
timeout 110 python -m fused_se.bench $BENCH_ARGS --json "$OUT/bench.json" --csv "$OUT/bench.csv" "${PLOT[@]}" || status=1

# The block tail, relu(se(x) + shortcut), on the same shapes: channels_last, eager / compile / fused
# / fused-3pass.
TAIL_ARGS="${TAIL_ARGS:---layouts channels_last --providers eager compile fused fused-3pass}"
echo "== fused-se-bench --tail $TAIL_ARGS"
# shellcheck disable=SC2086
timeout 55 python -m fused_se.bench --tail $TAIL_ARGS --json "$OUT/tail.json" --csv "$OUT/tail.csv" || status=1

# Inference at batch 1 (the one-launch or spread forward): channels_last, eager / compile / fused /
# fused-3pass.
B1_ARGS="${B1_ARGS:---batch 1 --modes fwd --layouts channels_last --providers eager compile fused fused-3pass}"
echo "== fused-se-bench $B1_ARGS"
# shellcheck disable=SC2086
timeout 30 python -m fused_se.bench $B1_ARGS --json "$OUT/batch1.json" --csv "$OUT/batch1.csv" || status=1

E2E_ARGS="${E2E_ARGS:-}"
echo "== fused-se-bench --e2e $E2E_ARGS"
# shellcheck disable=SC2086
timeout 50 python -m fused_se.bench --e2e $E2E_ARGS --json "$OUT/e2e.json" --csv "$OUT/e2e.csv" || status=1

echo "== one-GPU DDP training step of a converted seresnet50: ddp_smoke.py"
timeout 45 python "$ROOT/benchmarks/ddp_smoke.py" --json "$OUT/ddp_smoke.json" || status=1

echo "== done (status $status)"
exit $status
