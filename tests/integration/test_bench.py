"""fused-se-bench: arguments, presets, traffic formulas, the JSON and CSV schema, and a tiny
run end to end on the CPU."""

import contextlib
import csv
import json
import re
import subprocess
import sys

import pytest
import torch

from fused_se import _dispatch, bench
from fused_se.kernels import heuristics as hz


def test_defaults():
    args = bench.parse_args(["--device", "cpu"])
    assert args.shape_list == bench.SERESNET50 and args.batch_list == [2] * 4
    assert args.dtype == "fp32" and args.layouts == ["nchw", "channels_last"] and args.modes == ["fwd", "fwd+bwd"]
    assert args.providers == ["eager", "eager-conv", "fused"]  # no compile by default on a CPU
    assert (args.warmup, args.reps) == (20, 300)  # ms, as on a GPU


def test_presets():
    assert [(s.c, s.h, s.w, s.hidden) for s in bench.PRESETS["seresnet50"]] == [
        (256, 56, 56, 16),
        (512, 28, 28, 32),
        (1024, 14, 14, 64),
        (2048, 7, 7, 128),
    ]
    assert {(s.act, s.gate) for s in bench.PRESETS["efficientnet_b0"]} == {("silu", "sigmoid")}
    assert {(s.act, s.gate) for s in bench.PRESETS["mobilenetv3"]} == {("relu", "hard_sigmoid")}
    for shapes in bench.PRESETS.values():
        assert all(1 <= s.hidden < s.c for s in shapes)


def test_explicit_shapes():
    args = bench.parse_args(["--device", "cpu", "--shapes", "4,64,7,7", "8,32,5,5,3"])
    assert args.batch_list == [4, 8]
    assert [(s.c, s.h, s.w, s.hidden) for s in args.shape_list] == [(64, 7, 7, 4), (32, 5, 5, 3)]


@pytest.mark.parametrize(
    "argv,message",
    [
        (["--shapes", "2,64,8"], "shape must be N,C,H,W"),
        (["--shapes", "2,64,8,x"], "shape must be N,C,H,W"),
        (["--shapes", "2,64,8,8", "--batch", "4"], "--batch applies to a preset"),
        (["--batch", "0"], "--batch must be positive"),
        (["--modes", "sideways"], "invalid choice: 'sideways'"),
        (["--preset", "vgg"], "invalid choice: 'vgg'"),
        (["--device", "tpu"], "--device"),
    ],
)
def test_bad_arguments_give_one_line(argv, message, capsys):
    with pytest.raises(SystemExit) as e:
        bench.parse_args(argv)
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and "Traceback" not in err


def test_traffic_formulas():
    n = 1000
    assert bench.traffic_bytes("fwd", n, "fused") == (2 * n, 3 * n)
    assert bench.traffic_bytes("bwd", n, "fused") == (3 * n, 4 * n)
    assert bench.traffic_bytes("fwd+bwd", n, "fused") == (5 * n, 7 * n)
    assert bench.traffic_bytes("fwd", n, "eager") == (2 * n, None)
    # the residual tail: + read the shortcut; backward + read out (the mask), + write d(shortcut)
    assert bench.traffic_bytes("fwd", n, "fused", tail=True) == (3 * n, 4 * n)
    assert bench.traffic_bytes("bwd", n, "fused", tail=True) == (5 * n, 6 * n)
    assert bench.traffic_bytes("fwd+bwd", n, "eager", tail=True) == (8 * n, None)


def test_tail_run_matches_the_unfused_tail(monkeypatch, capsys, tmp_path):
    """--tail: every provider computes relu(se(x) + shortcut); the fused one runs the kernels."""
    from fused_se.kernels import record_launches

    shape = bench.SEShape(32, 4, 4, 2)
    x, shortcut = torch.randn(2, 32, 4, 4), torch.randn(2, 32, 4, 4)
    eager = bench.build_provider("eager", shape, torch.device("cpu"), torch.float32, tail=True)
    fused = bench.build_provider("fused", shape, torch.device("cpu"), torch.float32, tail=True)
    with record_launches() as launched:
        y = fused(x, shortcut)
    # CPU tensors run the kernels through the interpreter (on without CUDA), else the torch-ops twins
    assert launched == (["squeeze", "excite", "scale"] if _dispatch.interpreter_enabled() else [])
    torch.testing.assert_close(y, eager(x, shortcut.clone()), rtol=1e-5, atol=1e-6)
    path = tmp_path / "tail.json"
    argv = ["--device", "cpu", "--tail", "--shapes", "2,32,4,4", "--layouts", "channels_last", "--modes", "fwd+bwd"]
    assert bench.main([*argv, "--warmup", "0", "--reps", "2", "--json", str(path)]) == 0
    assert "fwd+bwd+t " in capsys.readouterr().out  # the mode column: +t, the residual tail
    rows = json.loads(path.read_text())
    assert {r["provider"] for r in rows} == {"eager", "eager-conv", "fused"} and all(r["tail"] for r in rows)
    assert all(r["min_traffic_bytes"] == 8 * r["x_bytes"] for r in rows)


def test_tiny_run_end_to_end(tmp_path, capsys):
    out = {k: tmp_path / f"rows.{k}" for k in ("json", "csv", "png")}
    argv = ["--device", "cpu", "--shapes", "2,32,4,4", "--layouts", "nchw", "--modes", "fwd", "bwd", "fwd+bwd"]
    argv += [
        "--warmup",
        "0",
        "--reps",
        "3",
        "--json",
        str(out["json"]),
        "--csv",
        str(out["csv"]),
        "--plot",
        str(out["png"]),
    ]
    assert bench.main(argv) == 0
    text = capsys.readouterr().out
    assert "need a CUDA GPU" in text
    # on a CPU only the columns that mean something there: no copy, own traffic, memory or launches
    header = next(line for line in text.splitlines() if line.lstrip().startswith("shape,hidden"))
    assert header.split() == [
        "shape,hidden",
        "lay",
        "mode",
        "provider",
        "ms",
        "sprd",
        "vs",
        "eager",
        "GB/s",
        "path",
    ]
    assert "device-to-device copy" not in text and "2x32x4x4,2 " in text

    rows = json.loads(out["json"].read_text())
    assert len(rows) == 3 * 3  # modes x providers
    for r in rows:
        assert set(bench.ROW_FIELDS) <= set(r)
        assert r["device"].startswith("cpu") and r["torch"] == torch.__version__ and r["fused_se"]
        assert r["p20_ms"] <= r["median_ms"] <= r["p80_ms"]
        assert r["spread"] == pytest.approx((r["p80_ms"] - r["p20_ms"]) / r["median_ms"])
        assert r["noisy"] == (r["spread"] > bench.NOISY_SPREAD)
        assert r["copy_gbs"] is None and r["pct_of_copy"] is None  # the copy is measured on a GPU only
        assert r["x_bytes"] == 2 * 32 * 4 * 4 * 4
        assert r["min_traffic_bytes"] == bench.MIN_TRAFFIC[r["mode"]] * r["x_bytes"]
        assert r["gbs_min_traffic"] == pytest.approx(r["min_traffic_bytes"] / r["median_ms"] / 1e6)
        eager = next(e for e in rows if e["provider"] == "eager" and e["mode"] == r["mode"])
        assert r["speedup_vs_eager"] == pytest.approx(eager["median_ms"] / r["median_ms"])
        assert r["speedup_vs_compile"] is None  # compile did not run
    fused = [r for r in rows if r["provider"] == "fused"]
    expected = "triton three_launch (cpu)" if _dispatch.interpreter_enabled() else "decomposed (cpu)"
    assert {r["path"] for r in fused} == {expected}

    with open(out["csv"]) as f:
        table = list(csv.DictReader(f))
    assert list(table[0]) == bench.ROW_FIELDS and len(table) == len(rows)
    assert out["png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_module_entry_point_help():
    done = subprocess.run(
        [sys.executable, "-m", "fused_se.bench", "--help"], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0
    assert done.stdout.startswith("usage: python -m fused_se.bench ")
    for option in ("--preset", "--shapes", "--providers", "--modes", "--json", "--csv", "--plot", "--e2e"):
        assert option in done.stdout
    epilog = done.stdout[done.stdout.index("Providers:") :]
    for provider in bench.PROVIDERS:  # the paragraph names every provider
        assert re.search(rf"(?<![\w-]){re.escape(provider)}(?![\w-])", epilog), provider


def test_rows_name_the_paths_the_planner_chose(device, monkeypatch):
    from fused_se.kernels import PATHS, force_paths

    shape = bench.SEShape(32, 4, 4, 2)
    small, large = torch.randn(2, 32, 4, 4, device=device), torch.randn(9, 32, 4, 4, device=device)
    with force_paths(*PATHS):  # every path, as the library ships
        assert bench.fused_path(small, shape) == "triton one_launch"
        assert bench.fused_path(small, shape, "fwd+bwd") == "triton one_launch fwd, three_launch bwd"
        with monkeypatch.context() as m:
            m.setattr(hz, "ONE_LAUNCH_MAX_PROGRAM_BYTES", 0)
            assert bench.fused_path(small, shape) == "triton spread"
        assert bench.fused_path(large, shape) == bench.fused_path(large, shape, "fwd+bwd") == "triton three_launch"
        # an L2 of four forward samples (two backward ones): x of nine samples streams both ways
        monkeypatch.setenv("FUSED_SE_L2_BYTES", str(hz.STREAM_L2_FRACTION * 4 * 32 * 4 * 4 * 4))
        monkeypatch.setattr(hz, "STREAM_WEIGHT_RATIO", 0.1)
        assert [bench.fused_path(large, shape, mode) for mode in bench.MODES] == ["triton stream"] * 3
        # with the tail, the backward touches twice the bytes: a lag of one sample, too short
        assert bench.fused_path(large, shape, "fwd+bwd", tail=True) == "triton stream fwd, three_launch bwd"
        with bench.three_launch_paths():
            assert bench.fused_path(large, shape, "fwd+bwd") == "triton three_launch"


def test_three_pass_provider_holds_the_fused_block_to_three_launches(device, monkeypatch):
    """fused-3pass weighs the chosen paths against the passes they replace: where the fused
    block streams, it runs the three launches each way, in every mode; each row's path label
    names the kernels that ran."""
    from se_testing import BACKWARD_KERNELS, FORWARD_KERNELS, record_launches

    from fused_se.kernels.plan import enabled_paths

    before = enabled_paths()
    shape = bench.SEShape(32, 4, 4, 2)
    x = torch.randn(9, 32, 4, 4, device=device)
    monkeypatch.setenv("FUSED_SE_L2_BYTES", str(hz.STREAM_L2_FRACTION * 4 * x[0].numel() * 4))
    monkeypatch.setattr(hz, "STREAM_WEIGHT_RATIO", 0.1)
    STREAM_BWD = ["se_bwd_stream", "sum_partials"]  # chunks of one sample: their partials added up
    expect = {
        "fused": {"fwd": ["se_fwd_stream"], "bwd": STREAM_BWD, "fwd+bwd": ["se_fwd_stream", *STREAM_BWD]},
        "fused-3pass": {"fwd": FORWARD_KERNELS, "bwd": BACKWARD_KERNELS, "fwd+bwd": FORWARD_KERNELS + BACKWARD_KERNELS},
    }
    label = {"fused": "triton stream", "fused-3pass": "triton three_launch"}
    for provider in ("fused", "fused-3pass"):
        module = bench.build_provider(provider, shape, device, torch.float32)
        for mode in bench.MODES:
            call = bench.make_call(module, x, torch.randn_like(x), mode, three_pass=provider == "fused-3pass")
            with record_launches() as launched:
                call()
            assert launched == expect[provider][mode], (provider, mode)
            with bench.three_launch_paths() if provider == "fused-3pass" else contextlib.nullcontext():
                assert bench.fused_path(x, shape, mode) == label[provider]
    assert enabled_paths() == before  # the provider's hold ends with its calls


def _tiny_args(tmp_path, *extra):
    argv = ["--device", "cpu", "--shapes", "2,16,2,2,2", "3,16,2,2,2", "--layouts", "nchw", "--modes", "fwd"]
    argv += ["--warmup", "0", "--reps", "1", "--json", str(tmp_path / "r.json"), "--csv", str(tmp_path / "r.csv")]
    return [*argv, *extra]


def test_rows_are_written_as_they_are_measured(tmp_path, monkeypatch, capsys):
    """A run cut short keeps every row measured before it: after each row the JSON file is one
    valid document and the CSV holds the same rows; the row's line is already printed."""
    from fused_se.bench import runner

    seen, real = [], runner.time_ms

    def time_ms(*a, **k):
        if len(seen) == 4:  # the fifth row: cut the run here
            raise KeyboardInterrupt
        rows = json.loads((tmp_path / "r.json").read_text()) if seen else []
        with open(tmp_path / "r.csv") if seen else open(__file__) as f:
            table = list(csv.DictReader(f)) if seen else []
        printed = re.findall(r"^ *\d+x\d+x\S+ ", capsys.readouterr().out, re.MULTILINE)  # a row's line
        seen.append((len(rows), len(table), len(printed)))
        return real(*a, **k)

    monkeypatch.setattr(runner, "time_ms", time_ms)
    with pytest.raises(KeyboardInterrupt):
        bench.main(_tiny_args(tmp_path))
    # before the n-th row is timed, the n - 1 rows before it are in both files, each printed
    assert seen == [(0, 0, 0), (1, 1, 1), (2, 2, 1), (3, 3, 1)]
    rows = json.loads((tmp_path / "r.json").read_text())
    assert [(r["batch"], r["provider"]) for r in rows] == [(2, "eager"), (2, "eager-conv"), (2, "fused"), (3, "eager")]


def test_compile_providers_run_last_and_fill_in_the_speedups_against_them(tmp_path, monkeypatch, capsys):
    """The fast providers run on every case first; each compile row then gives its case's rows
    their speedup against it, in the files too. (Eager stands in for torch.compile here.)"""
    from fused_se.bench import runner

    assert bench.provider_passes(["compile", "fused", "eager", "compile-max-autotune", "fused-3pass"]) == [
        ["eager", "fused", "fused-3pass"],
        ["compile", "compile-max-autotune"],
    ]
    real = runner.build_provider
    monkeypatch.setattr(runner, "build_provider", lambda p, *a: real("eager" if p == "compile" else p, *a))
    assert bench.main(_tiny_args(tmp_path, "--providers", "compile", "fused", "eager")) == 0
    rows = json.loads((tmp_path / "r.json").read_text())
    assert [(r["batch"], r["provider"]) for r in rows] == [
        (2, "eager"), (2, "fused"), (3, "eager"), (3, "fused"), (2, "compile"), (3, "compile"),
    ]  # fmt: skip
    for r in rows:
        base = next(c for c in rows if c["provider"] == "compile" and c["batch"] == r["batch"])
        assert r["speedup_vs_compile"] == pytest.approx(base["median_ms"] / r["median_ms"])
    with open(tmp_path / "r.csv") as f:
        assert [float(r["speedup_vs_compile"]) for r in csv.DictReader(f)] == [
            pytest.approx(r["speedup_vs_compile"]) for r in rows
        ]
    out = capsys.readouterr().out
    assert "against torch.compile" in out and "vs comp" in out


def test_append_and_label_gather_runs_in_one_file(tmp_path):
    assert bench.main(_tiny_args(tmp_path, "--providers", "eager", "--label", "one")) == 0
    assert bench.main(_tiny_args(tmp_path, "--providers", "fused", "--label", "two", "--append")) == 0
    rows = json.loads((tmp_path / "r.json").read_text())
    assert [(r["run"], r["provider"]) for r in rows] == [("one", "eager")] * 2 + [("two", "fused")] * 2
    with open(tmp_path / "r.csv") as f:
        assert [r["run"] for r in csv.DictReader(f)] == ["one", "one", "two", "two"]


@pytest.mark.parametrize("option", ["--json", "--csv", "--plot"])
@pytest.mark.parametrize("where", ["no-folder", "a-folder"])
def test_unwritable_outputs_fail_before_the_run(option, where, tmp_path, capsys):
    path = tmp_path / "missing" / "out.x" if where == "no-folder" else tmp_path
    with pytest.raises(SystemExit) as e:
        bench.parse_args(["--device", "cpu", option, str(path)])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"{option} {path}:" in err and "Traceback" not in err


def test_noisy_rows_are_flagged_in_the_table():
    row = {
        "batch": 2, "C": 16, "H": 2, "W": 2, "hidden": 3, "layout": "nchw", "mode": "fwd", "tail": False,
        "provider": "eager", "median_ms": 1.0, "spread": 0.02, "noisy": False, "speedup_vs_eager": 1.0,
        "gbs_min_traffic": 1.0, "path": "torch (cpu)",
    }  # fmt: skip
    table = bench.se_table(gpu=False, providers=["eager", "fused"])
    quiet = {**row, "provider": "fused", "speedup_vs_eager": 1.5}
    assert "2x16x2x2,3" in table.line(row) and "1.50x " in table.line(quiet) and "!" not in table.line(quiet)
    noisy = {**quiet, "spread": 0.5, "noisy": True}
    assert "50%!" in table.line(noisy) and "1.50x?" in table.line(noisy)
    # a quiet row against a noisy eager row: its speedup is flagged too
    table = bench.se_table(gpu=False, providers=["eager", "fused"])
    table.line({**row, "spread": 0.5, "noisy": True})
    assert "1.50x?" in table.line(quiet)


def test_plot_titles_name_the_slice(tmp_path, monkeypatch):
    from matplotlib.figure import Figure

    titles = []
    monkeypatch.setattr(Figure, "savefig", lambda fig, *a, **k: titles.extend(ax.get_title() for ax in fig.axes))
    base = {
        "C": 16, "H": 2, "W": 2, "hidden": 2, "dtype": "fp32", "tail": False, "speedup_vs_eager": 1.0,
        "pct_of_copy": None, "gbs_min_traffic": 1.0, "fused_se": "0", "device": "cpu",
    }  # fmt: skip
    rows = [
        {**base, "batch": n, "mode": m, "layout": lay, "provider": p}
        for n in (4, 8)
        for m in ("fwd", "fwd+bwd")
        for lay in ("nchw", "channels_last")
        for p in ("eager", "fused")
    ]
    bench.write_plot(rows, str(tmp_path / "p.png"))
    assert len(titles) == 2
    for title in titles:
        assert "fwd+bwd, channels_last, fp32 (not plotted: fwd, nchw)" in title and "batch" not in title
    assert "GB/s" in titles[1]  # no copy measured: plain bandwidth


def test_cuda_graph_providers_time_gpu_inference_only(tmp_path):
    """On a CPU the graph replays have no rows (and cannot be built); on any device they time
    the forward alone."""
    path = tmp_path / "rows.json"
    argv = ["--device", "cpu", "--shapes", "2,32,4,4", "--layouts", "nchw", "--modes", "fwd", "fwd+bwd"]
    argv += ["--providers", "eager", "fused-cudagraph", "--warmup", "0", "--reps", "2", "--json", str(path)]
    assert bench.main(argv) == 0
    rows = json.loads(path.read_text())
    assert {r["provider"] for r in rows} == {"eager"} and len(rows) == 2
    shape = bench.SEShape(32, 4, 4, 2)
    with pytest.raises(ValueError, match="needs a CUDA device"):
        bench.build_provider("fused-cudagraph", shape, torch.device("cpu"), torch.float32)
    from fused_se.bench.providers import CudaGraphed

    graphed = CudaGraphed(torch.nn.Identity())
    with pytest.raises(ValueError, match="inference only"):
        bench.make_call(graphed, torch.zeros(1), torch.zeros(1), "fwd+bwd")


def test_every_printed_table_fits_100_columns_with_every_provider():
    """A GPU run's widest case: every provider, a tail, a long path, a large shape and wide numbers."""
    rows = []
    for provider in bench.PROVIDERS:
        fused = provider.startswith("fused")
        path = "triton spread fwd, three_launch bwd (cuda)" if fused else "torch (cuda)"
        rows.append(
            {
                "provider": provider, "path": path, "batch": 256, "C": 2048, "H": 7, "W": 7, "spatial": "7x7",
                "hidden": 128, "layout": "channels_last", "mode": "fwd+bwd", "tail": True, "median_ms": 123.4567,
                "spread": 1.5, "noisy": True, "speedup_vs_eager": 10.55, "speedup_vs_compile": 10.25,
                "gbs_min_traffic": 4321.5, "pct_of_copy": 101.2, "gbs_own_traffic": 4000.0, "peak_mem_mb": 12345.6,
                "launches": 123, "device": "NVIDIA H200",
            }
        )  # fmt: skip
    text = bench.format_table(rows, gpu=True) + "\n" + bench.format_vs_compile(rows)
    wide = [line for line in text.splitlines() if len(line) > 100]
    assert not wide, wide
    assert "spread/3L" in text and "fused-cg" in text and "comp-ro" in text  # the short forms, with their key
    for provider in bench.PROVIDERS:  # every provider's speedup against compile is shown
        if provider != "compile":
            assert bench.report.PROVIDER_SHORT.get(provider, provider) in text


@pytest.mark.parametrize(
    "path,short",
    [
        ("triton three_launch (cuda)", "3L"),
        ("triton one_launch fwd, three_launch bwd (cuda)", "1L/3L"),
        ("triton stream (cuda)", "stream"),
        ("decomposed (cpu)", "cpu"),
        ("reference (cpu)", "ref"),
        ("torch (cpu)", "torch"),
    ],
)
def test_paths_print_short(path, short):
    assert bench.report.path_short({"path": path}) == short
