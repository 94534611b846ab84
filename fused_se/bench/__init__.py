"""fused-se-bench: the fused SE block against eager PyTorch and torch.compile, on your device.

    fused-se-bench                                  the default: SE-ResNet-50's SE shapes
    fused-se-bench --preset efficientnet_b0 --modes fwd --providers eager fused
    fused-se-bench --shapes 32,256,56,56 --dtype fp16 --json out.json --csv out.csv --plot out.png
    fused-se-bench --tail                           SE + residual add + ReLU: a ResNet block's tail
    fused-se-bench --providers fused fused-3pass    the chosen paths against the three launches
    fused-se-bench --e2e                            training steps of whole models (its own --help)
    python -m fused_se.bench --help

Each row times one provider on one (shape, layout, mode): median and p20/p80 in ms
(triton.testing.do_bench on a GPU; torch.utils.benchmark's adaptive_autorange on a CPU) and
their spread, the speedup against eager and against torch.compile, the effective bandwidth
against the minimal traffic of the SE block (N = bytes of x: 2N forward, 3N backward, 5N
forward+backward); on a GPU also against the implementation's own traffic where it is known
(fused: 3N, 4N, 7N), the percent of a device-to-device copy's bandwidth measured in the same
run, the peak memory of a training step and the kernel launches per call (from the profiler).
fused-3pass is the fused block held to its three-launch passes (the one-launch, spread and
streamed paths off). Rows are printed and written to --json / --csv as they are measured; the
torch.compile providers run after the others.

The traffic budgets are in docs/DESIGN.md. Modules: presets (shapes, modes, providers'
names, traffic; the shapes and blocks are fused_se.workloads', shared with fused_se.perf), providers (the timed modules and calls), measure (timer, copy bandwidth, memory,
launches, environment), runner (the SE-block run), report (table, JSON, CSV, plot), e2e
(whole-model training steps), cli (options and main).
"""

from .cli import build_parser, check_writable, main, parse_args, prog_name
from .e2e import MODELS as E2E_MODELS
from .e2e import run_e2e
from .measure import (
    CPU_TIMER_THRESHOLD,
    NOISY_SPREAD,
    copy_bandwidth_gbs,
    default_batch,
    environment,
    kernel_launches,
    peak_memory_mb,
    spread,
    time_ms,
)
from .presets import (
    COMPILE_MODES,
    DTYPES,
    EFFICIENTNET_B0,
    FUSED,
    FUSED_TRAFFIC,
    FUSED_TRAFFIC_TAIL,
    LAYOUTS,
    MIN_TRAFFIC,
    MIN_TRAFFIC_TAIL,
    MOBILENETV3,
    MODES,
    PRESETS,
    PROVIDERS,
    SERESNET50,
    SEShape,
    parse_shape,
    traffic_bytes,
)
from .providers import EagerSE, FusedTail, build_provider, fused_path, make_call, three_launch_paths
from .report import (
    E2E_FIELDS,
    ROW_FIELDS,
    RowWriter,
    format_table,
    format_vs_compile,
    read_rows,
    se_table,
    write_csv,
    write_json,
    write_plot,
)
from .runner import provider_passes, run

__all__ = [
    "COMPILE_MODES", "CPU_TIMER_THRESHOLD", "DTYPES", "E2E_FIELDS", "E2E_MODELS", "EFFICIENTNET_B0", "FUSED",
    "FUSED_TRAFFIC", "FUSED_TRAFFIC_TAIL", "LAYOUTS", "MIN_TRAFFIC", "MIN_TRAFFIC_TAIL", "MOBILENETV3", "MODES",
    "NOISY_SPREAD", "PRESETS", "PROVIDERS", "ROW_FIELDS", "SERESNET50", "EagerSE", "FusedTail", "RowWriter",
    "SEShape", "build_parser", "build_provider", "check_writable", "copy_bandwidth_gbs", "default_batch",
    "environment", "format_table", "format_vs_compile", "fused_path", "kernel_launches",
    "main", "make_call", "parse_args", "parse_shape", "peak_memory_mb", "prog_name", "provider_passes",
    "read_rows", "run", "run_e2e", "se_table", "spread", "three_launch_paths", "time_ms", "traffic_bytes",
    "write_csv", "write_json", "write_plot",
]  # fmt: skip
