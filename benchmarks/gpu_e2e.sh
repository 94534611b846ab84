#!/usr/bin/env bash
# GPU commands for the whole-model steps (e2e.json, benchmarks/profile_e2e.py) and the SE block
# against Inductor on device time (blocks.json, benchmarks/profile_gpu.py), in order of value.
# Each step is one command under a 590 s limit (a device call may run 10 minutes), so that a
# session runs the steps it has time for, one call each:
#
#   1    compiled seresnet50 against compiled converted seresnet50, B=128: wall and device ms
#   2a   blocks.json: eager, compile (default), fused, fused-3pass; channels_last, fwd and fwd+bwd, B=128
#   2b   blocks.json: compile max-autotune-no-cudagraphs; channels_last, fwd, B=128
#   2c   blocks.json: compile max-autotune-no-cudagraphs; channels_last, fwd+bwd, B=128
#   2d   blocks.json: eager, compile (default), fused, fused-3pass, fused-stream; NCHW, B=128
#   3a   e2e: resnet50 and seresnet50 (every variant), eager and cudagraph, B=64
#   3b   e2e: the same, eager, B=256
#   3c   e2e: cudagraph, B=256, resnet50 and seresnet50 eager (a captured step keeps its memory:
#        two models at a time)
#   3d   e2e: cudagraph, B=256, seresnet50 converted and converted+tail
#   3e   e2e: compile, B=64, resnet50 and seresnet50 eager (Inductor: 1-3 minutes a model)
#   3f   e2e: compile, B=64, seresnet50 converted and converted+tail
#   3g   e2e: compile, B=256, resnet50 and seresnet50 eager
#   3h   e2e: compile, B=256, seresnet50 converted and converted+tail
#   3i   e2e: efficientnet_b0 eager and converted; eager, cudagraph and compile; B=64
#   3j   e2e: MONAI SEResNet50(spatial_dims=3) eager and converted on 96^3 volumes, B=4; every mode
#
#   bash benchmarks/gpu_e2e.sh 1            step 1 only
#   bash benchmarks/gpu_e2e.sh 2a 2b        those steps
#   bash benchmarks/gpu_e2e.sh              every step, in order (at most 10 minutes a step)
#   OUT=/some/folder PYTHON=python3 bash benchmarks/gpu_e2e.sh 1
#   PRINT_ONLY=1 bash benchmarks/gpu_e2e.sh  each step's command, run by nothing: its name, then its
#                                            words, tab-separated, a line a step (the CPU test of the
#                                            steps' arguments reads them)
#
# Writes under $OUT (default benchmarks/results/<card>_<date>_e2e/): e2e/e2e.json (every e2e row of
# every step, each with its step in "run", written as measured), e2e/e2e.txt and e2e/e2e.png (all
# rows so far), blocks_<step>/blocks.json, <step>.log per step, and command.txt. Runs from the
# source tree: fused_se and kernels/ laid out as the installed package in a temporary folder on
# PYTHONPATH, as gpu_check.sh does.
set -uo pipefail
export PYTHONUNBUFFERED=1

case "${1:-}" in
  -h|--help) awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; exit 0 ;;
esac
ALL=(1 2a 2b 2c 2d 3a 3b 3c 3d 3e 3f 3g 3h 3i 3j)
STEPS=("$@")
[ "${#STEPS[@]}" -gt 0 ] || STEPS=("${ALL[@]}")
LIMIT="${LIMIT:-590}"
PYTHON="${PYTHON:-python}"

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
CARD="$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -n 1 | tr 'A-Z ' 'a-z-' | tr -cd 'a-z0-9-')"
OUT="${OUT:-$ROOT/benchmarks/results/${CARD:-unknown-gpu}_$(date -u +%Y-%m-%d)_e2e}"
if [ "${PRINT_ONLY:-0}" != 1 ]; then  # (printing only: nothing written, nothing laid out)
  mkdir -p "$OUT/e2e"
  OUT="$(cd "$OUT" && pwd)"
  echo "bash benchmarks/gpu_e2e.sh ${STEPS[*]} (LIMIT=$LIMIT)" >> "$OUT/command.txt"

  WORK="$(mktemp -d)"
  trap 'rm -rf "$WORK"' EXIT
  cp -r "$ROOT/fused_se" "$WORK/fused_se"
  cp -r "$ROOT/kernels" "$WORK/fused_se/kernels"
  export PYTHONPATH="$WORK${PYTHONPATH:+:$PYTHONPATH}"
  cd "$WORK" || exit 1
fi

E2E=("$PYTHON" "$ROOT/benchmarks/profile_e2e.py" --out "$OUT/e2e" --append)
BLOCKS=("$PYTHON" "$ROOT/benchmarks/profile_gpu.py" --batch 128 --dtype bf16 --iters 20)

step() {
  local name="$1"
  shift
  if [ "${PRINT_ONLY:-0}" = 1 ]; then
    printf '%s' "$name"
    printf '\t%s' "$@"
    printf '\n'
    return
  fi
  echo "== step $name (limit ${LIMIT}s) $(date -u +%H:%M:%S): $*" | tee -a "$OUT/command.txt"
  local t0=$SECONDS
  timeout -k 10 "$LIMIT" "$@" 2>&1 | tee "$OUT/$name.log"
  local rc=${PIPESTATUS[0]}
  echo "== step $name: exit status $rc after $((SECONDS - t0))s" | tee -a "$OUT/command.txt"
  [ "$rc" = 0 ] || status=1
}

status=0
for s in "${STEPS[@]}"; do
  case "$s" in
    1) step 1 "${E2E[@]}" --label 1 --models seresnet50 --variants eager converted --modes compile --batches 128 ;;
    2a) step 2a "${BLOCKS[@]}" --out "$OUT/blocks_2a" --layouts channels_last --modes fwd,fwd+bwd \
          --providers eager compile fused fused-3pass --compile-modes default ;;
    2b) step 2b "${BLOCKS[@]}" --out "$OUT/blocks_2b" --layouts channels_last --modes fwd \
          --providers compile --compile-modes max-autotune-no-cudagraphs ;;
    2c) step 2c "${BLOCKS[@]}" --out "$OUT/blocks_2c" --layouts channels_last --modes fwd+bwd \
          --providers compile --compile-modes max-autotune-no-cudagraphs ;;
    2d) step 2d "${BLOCKS[@]}" --out "$OUT/blocks_2d" --layouts nchw --modes fwd,fwd+bwd \
          --providers eager compile fused fused-3pass fused-stream --compile-modes default ;;
    3a) step 3a "${E2E[@]}" --label 3a --models resnet50 seresnet50 --modes eager cudagraph --batches 64 ;;
    3b) step 3b "${E2E[@]}" --label 3b --models resnet50 seresnet50 --modes eager --batches 256 ;;
    3c) step 3c "${E2E[@]}" --label 3c --models resnet50 seresnet50 --variants eager --modes cudagraph --batches 256 ;;
    3d) step 3d "${E2E[@]}" --label 3d --models seresnet50 --variants converted converted+tail --modes cudagraph \
          --batches 256 ;;
    3e) step 3e "${E2E[@]}" --label 3e --models resnet50 seresnet50 --variants eager --modes compile --batches 64 ;;
    3f) step 3f "${E2E[@]}" --label 3f --models seresnet50 --variants converted converted+tail --modes compile \
          --batches 64 ;;
    3g) step 3g "${E2E[@]}" --label 3g --models resnet50 seresnet50 --variants eager --modes compile --batches 256 ;;
    3h) step 3h "${E2E[@]}" --label 3h --models seresnet50 --variants converted converted+tail --modes compile \
          --batches 256 ;;
    3i) step 3i "${E2E[@]}" --label 3i --models efficientnet_b0 --modes eager cudagraph compile --batches 64 ;;
    3j) step 3j "${E2E[@]}" --label 3j --models monai_seresnet50_3d --modes eager cudagraph compile --batches 4 ;;
    *) echo "gpu_e2e.sh: no step $s (see --help)" >&2; status=2; continue ;;
  esac
done
echo "== done: $OUT"
exit "$status"
