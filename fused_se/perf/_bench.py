"""What fused_se.perf takes from the benchmark: presets, shapes, providers (one place to import them from)."""

from __future__ import annotations

from fused_se.bench import (
    DTYPES,
    LAYOUTS,
    MIN_TRAFFIC,
    MODES,
    PRESETS,
    SEShape,
    build_provider,
    parse_shape,
    three_launch_paths,
)

__all__ = [
    "DTYPES",
    "LAYOUTS",
    "MIN_TRAFFIC",
    "MODES",
    "PRESETS",
    "SEShape",
    "build_provider",
    "parse_shape",
    "three_launch_paths",
]
