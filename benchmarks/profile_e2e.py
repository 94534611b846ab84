"""Where a whole-model training step's time goes: the harness of `fused-se-bench --e2e`
(fused_se/bench/e2e.py), run from the source tree. Per model, variant (eager, converted,
converted+tail), mode (eager, compile, cudagraph) and batch: wall, device, host and the SE blocks'
ms per step, kernels per step and the compiling step apart, in e2e.json (a row written as each is
measured), e2e.txt (the table) and e2e.png.

    python benchmarks/profile_e2e.py --out DIR [--models M ...] [--variants V ...] [--modes M ...]
        [--batches B ...] [--steps 5] [--rounds 5]
    python benchmarks/profile_e2e.py --device cpu --out DIR     a dry run: tiny inputs, no timings

Every option: python benchmarks/profile_e2e.py --help. A GPU run is best split into commands of at
most 10 minutes: Inductor compiles a ResNet-50 training step in 1-3 minutes (benchmarks/gpu_e2e.sh).
"""

from __future__ import annotations

import sys

from fused_se.bench.e2e import main

if __name__ == "__main__":
    sys.exit(main(prog="python benchmarks/profile_e2e.py"))
