"""Measuring: the timer, a device-to-device copy's bandwidth, peak memory and kernel launches of
one call, the default batch, the environment every row carries, and a progress bar."""

from __future__ import annotations

import datetime
import platform
import sys
import time
from collections.abc import Callable
from typing import Optional

import torch

from ..version import __version__
from .presets import SEShape

# A row whose p20-p80 range is wider than this fraction of its median is flagged: a speedup read
# from it (or against it) is within the noise.
NOISY_SPREAD = 0.10
# The CPU timer (torch.utils.benchmark's adaptive_autorange) stops once the interquartile range of
# its blocks is within this fraction of the median, or at --reps milliseconds.
CPU_TIMER_THRESHOLD = 0.05


def time_ms(fn: Callable[[], object], device: torch.device, warmup: int, reps: int) -> tuple[float, float, float]:
    """(median, p20, p80) in ms of one call. warmup and reps are milliseconds: on a GPU for
    triton.testing.do_bench; on a CPU of warm-up calls, then at most reps ms of
    torch.utils.benchmark.Timer.adaptive_autorange on one thread, whose blocks of calls give the
    quantiles."""
    if device.type == "cuda":
        import triton.testing

        return tuple(triton.testing.do_bench(fn, warmup=warmup, rep=reps, quantiles=[0.5, 0.2, 0.8]))
    Timer = _timer_class()
    t0 = time.perf_counter()
    fn()
    while (time.perf_counter() - t0) * 1e3 < warmup:
        fn()
    # one thread, Timer's default: on a CPU shared with other work, more threads wait on each other
    # for whole scheduler slices, and rows swing by orders of magnitude
    timer = Timer(stmt="fn()", globals={"fn": fn}, num_threads=1)
    budget = max(reps, 1) / 1e3
    measured = timer.adaptive_autorange(CPU_TIMER_THRESHOLD, min_run_time=budget / 5, max_run_time=budget)
    median, p20, p80 = torch.tensor(measured.times, dtype=torch.float64).quantile(
        torch.tensor([0.5, 0.2, 0.8], dtype=torch.float64)
    )
    return median.item() * 1e3, p20.item() * 1e3, p80.item() * 1e3


def _timer_class() -> type:
    """torch.utils.benchmark.Timer, imported without the warning that importing it logs on a
    machine without CUDA (torch.utils.cpp_extension looks for a CUDA toolkit)."""
    import logging

    log = logging.getLogger("torch.utils.cpp_extension")
    level = log.level
    log.setLevel(logging.ERROR)
    try:
        from torch.utils.benchmark import Timer
    finally:
        log.setLevel(level)
    return Timer


def spread(median: float, p20: float, p80: float) -> float:
    """The p20-p80 range relative to the median."""
    return (p80 - p20) / median if median > 0 else float("inf")


def copy_bandwidth_gbs(device: torch.device, warmup: int, reps: int) -> float:
    """Device-to-device copy bandwidth (read + write) of a buffer far larger than the caches (1 GiB).
    Measured on a GPU only: a CPU's copy says little of what the SE block's passes, on maps its
    caches hold, can reach."""
    n = 1 << 30
    src = torch.empty(n, dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)
    ms = time_ms(lambda: dst.copy_(src), device, warmup, reps)[0]
    return 2 * n / ms / 1e6


def peak_memory_mb(fn: Callable[[], object], device: torch.device) -> Optional[float]:
    """Peak memory allocated during one call beyond what was allocated before it (GPU only)."""
    if device.type != "cuda":
        return None
    torch.cuda.synchronize(device)
    base = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    fn()
    torch.cuda.synchronize(device)
    return (torch.cuda.max_memory_allocated(device) - base) / 2**20


def kernel_launches(fn: Callable[[], object], device: torch.device) -> Optional[int]:
    """GPU kernels launched by one call, as the profiler counts them (GPU only)."""
    if device.type != "cuda":
        return None
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        fn()
        torch.cuda.synchronize(device)
    # not the device-timeline spans of record_function ranges, which the profiler lists as CUDA events
    return sum(
        1
        for e in prof.events()
        if e.device_type == torch.autograd.DeviceType.CUDA and not getattr(e, "is_user_annotation", False)
    )


def default_batch(device: torch.device, shapes: list[SEShape], dtype: torch.dtype) -> int:
    """128 on a GPU where the largest map fits 16 times over in a quarter of the free memory;
    less where it does not; 2 on a CPU, so that the default run stays short."""
    if device.type != "cuda":
        return 2
    free, _ = torch.cuda.mem_get_info(device)
    per_sample = max(s.c * s.h * s.w for s in shapes) * torch.empty(0, dtype=dtype).element_size()
    return max(1, min(128, free // 4 // (16 * per_sample)))


def environment(device: torch.device) -> dict:
    try:
        import triton

        triton_version = triton.__version__
    except ImportError:
        triton_version = None
    name = (
        torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else f"cpu ({platform.processor() or platform.machine()})"
    )
    return {
        "device": name,
        "torch": torch.__version__,
        "triton": triton_version,
        "fused_se": __version__,
        "timestamp": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }


class Progress:
    """A one-line progress bar on stderr, drawn only when stderr is a terminal."""

    def __init__(self, total: int) -> None:
        self.total, self.done = total, 0
        self.live = sys.stderr.isatty()

    def step(self, what: str) -> None:
        self.done += 1
        if self.live:
            filled = int(30 * self.done / self.total)
            sys.stderr.write(f"\r[{'#' * filled}{'.' * (30 - filled)}] {self.done}/{self.total} {what[:50]:50s}")
            sys.stderr.flush()

    def close(self) -> None:
        """Clear the bar (before a row is printed, and at the end)."""
        if self.live:
            sys.stderr.write("\r" + " " * 100 + "\r")
            sys.stderr.flush()
