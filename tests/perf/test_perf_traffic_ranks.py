"""--traffic on every rank the bench takes (sequences and volumes as well as image maps), its rows
printed as they are counted, and every line of its table and of the CLIs' help within 100 columns."""

from __future__ import annotations

import json

import pytest

from fused_se import bench, workloads
from fused_se.bench.cli import build_parser as bench_parser
from fused_se.perf import traffic
from fused_se.perf.cli import build_parser as perf_parser
from fused_se.runtime import launch

WIDTH = 100
interpreted = pytest.mark.skipif(not launch.INTERPRETED, reason="counts bytes through the Triton interpreter")


@pytest.fixture(autouse=True)
def _no_poison(monkeypatch):
    monkeypatch.setattr(launch, "POISON_OUTPUTS", False)


@interpreted
def test_traffic_counts_sequences_and_volumes_as_the_bench_takes_them(tmp_path, capsys):
    path = tmp_path / "traffic.json"
    argv = ["--traffic", "--shapes", "2,16,L9,4", "2,16,2x3x4,4", "--providers", "eager", "fused"]
    assert bench.main([*argv, "--modes", "fwd", "fwd+bwd", "--jobs", "1", "--json", str(path)]) == 0
    out = capsys.readouterr().out
    rows = json.loads(path.read_text())
    assert {(r["shape"], r["spatial"]) for r in rows} == {("2x16x9", "9"), ("2x16x2x3x4", "2x3x4")}
    assert all(r["x_bytes"] == 2 * 16 * r["H"] * 2 for r in rows)  # bf16, H the map's positions
    assert len(rows) == 2 * 2 * 2 * 2  # shapes x layouts x providers x modes
    fused = [r for r in rows if r["provider"] == "fused"]
    assert all(r["path"].startswith("triton") and r["model_speedup_vs_eager"] is not None for r in fused)
    lines = out.splitlines()
    # a progress line per shape, ahead of that shape's rows
    starts = [i for i, line in enumerate(lines) if line.startswith("[")]
    assert [lines[i].split(":")[0] for i in starts] == ["[1/2] 2x16x9,4", "[2/2] 2x16x2x3x4,4"]
    assert starts[0] == 2 and starts[1] - starts[0] == 1 + 8  # header (2 lines), then 8 rows per shape
    assert all(len(line) <= WIDTH for line in lines), max(lines, key=len)


@interpreted
def test_rows_reach_the_sink_one_by_one_in_order():
    args = bench_like(["--shapes", "1,16,L5,4", "--providers", "fused", "eager", "--modes", "fwd", "--layouts", "nchw"])
    seen = []
    rows = traffic.run_traffic(args, lambda kind, item: seen.append((kind, item)))
    assert [k for k, _ in seen] == ["progress", "row", "row"]
    assert [item["provider"] for k, item in seen if k == "row"] == ["eager", "fused"]  # eager first
    assert rows == [item for k, item in seen if k == "row"]


def bench_like(argv: list[str]):
    p = perf_parser()
    args = p.parse_args(["--traffic", "--jobs", "1", *argv])
    traffic.check_args(p, args)
    return args


@pytest.mark.parametrize("preset", ["ecapa_tdnn", "seresnet50_3d"])
def test_presets_of_other_ranks_plan_their_full_batch(preset):
    """The paths at the modeled batch are planned on the (B, C, positions, 1) view the ops take."""
    args = bench_like(["--preset", preset])
    runs = traffic.plan_runs(args)
    assert [s for s, *_ in runs] == workloads.PRESETS[preset]
    for shape, batch, full, _ in runs:
        assert batch <= full == traffic.FULL_BATCH
        for layout in workloads.LAYOUTS:
            fwd, bwd = traffic.full_size_paths("fused", shape, full, layout, workloads.DTYPES["bf16"])
            assert fwd in ("three_launch", "one_launch", "spread", "stream") and bwd in ("three_launch", "stream")


def _row(**kw) -> dict:
    row = {
        "card": "h100", "provider": "fused-3pass", "shape": "128x2048x24x24x24", "batch": 1, "batch_modeled": 128,
        "scale": 128.0, "layout": "channels_last", "mode": "fwd+bwd", "path": "triton one_launch fwd, stream bwd",
        "path_at_full_batch": "triton spread fwd, three_launch bwd", "launches": 123456, "requested_n": 12.3456,
        "dram_n": 10.5, "model_time_us": 123456.7, "model_speedup_vs_eager": 12.34, "l2_bytes": 400 * 2**20,
        "minimal_bytes": 5, "x_bytes": 1,
    }  # fmt: skip
    row.update(kw)
    return row


def test_traffic_table_fits_100_columns():
    rows = [_row(), _row(provider="eager", path="torch", path_at_full_batch="torch", model_speedup_vs_eager=None)]
    text = traffic.format_traffic(rows)
    assert all(len(line) <= WIDTH for line in text.splitlines()), max(text.splitlines(), key=len)
    assert "one_launch/stream" in text and "at batch 128 the planner takes spread/three_launch" in text
    line = traffic.progress_line(1, 4, workloads.SERESNET50_3D[0], 1, 128, 128.0, 50 * 2**20, 8)
    assert len(line) <= WIDTH and line.startswith("[1/4] 1x256x24x24x24,16: batch 1 for 128")


@pytest.mark.parametrize("columns", ["60", "100", "250"])
@pytest.mark.parametrize("which", ["bench", "bench --traffic", "perf"])
def test_help_leads_with_a_short_usage_and_fits_100_columns(which, columns, monkeypatch):
    monkeypatch.setenv("COLUMNS", columns)
    text = (perf_parser() if which != "bench" else bench_parser()).format_help()
    lines = text.splitlines()
    assert all(len(line) <= WIDTH for line in lines), max(lines, key=len)
    usage = text[: text.index("\n\n")]
    assert usage.startswith("usage: ") and len(usage.splitlines()) <= 3
    description = text[len(usage) : text.index("\noptions:")]
    examples = [line for line in description.splitlines() if line.startswith("  ")]
    assert 3 <= len(examples) <= 5


def test_a_run_outside_the_interpreter_streams_its_childs_rows(tmp_path):
    """fused-se-bench --traffic in a process without the interpreter counts in a child process that
    has it, and prints the child's rows as they come."""
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    argv = ["--traffic", "--shapes", "1,16,L5,4", "--providers", "eager", "--modes", "fwd", "--layouts", "nchw"]
    done = subprocess.run(
        [sys.executable, "-m", "fused_se.bench", *argv, "--json", str(tmp_path / "t.json")],
        capture_output=True, text=True, timeout=120, env=env, cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[2].startswith("[1/1] 1x16x5,4") and lines[3].split()[:3] == ["nchw", "fwd", "eager"]
    assert json.loads((tmp_path / "t.json").read_text())[0]["spatial"] == "5"
