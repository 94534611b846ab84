"""fused-se-bench: arguments, presets, traffic formulas, the JSON and CSV schema, and a tiny
run end to end on the CPU."""

import csv
import json
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
    assert (args.warmup, args.reps) == (2, 10)


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
        (["--tail", "--e2e"], "--tail times SE blocks"),
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
    assert "fwd+bwd+tail" in capsys.readouterr().out
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
    assert "need a CUDA GPU" in text and "device-to-device copy" in text

    rows = json.loads(out["json"].read_text())
    assert len(rows) == 3 * 3  # modes x providers
    for r in rows:
        assert set(bench.ROW_FIELDS) <= set(r)
        assert r["device"].startswith("cpu") and r["torch"] == torch.__version__ and r["fused_se"]
        assert r["p20_ms"] <= r["median_ms"] <= r["p80_ms"]
        assert r["x_bytes"] == 2 * 32 * 4 * 4 * 4
        assert r["min_traffic_bytes"] == bench.MIN_TRAFFIC[r["mode"]] * r["x_bytes"]
        assert r["gbs_min_traffic"] == pytest.approx(r["min_traffic_bytes"] / r["median_ms"] / 1e6)
        assert r["pct_of_copy"] == pytest.approx(100 * r["gbs_min_traffic"] / r["copy_gbs"])
        eager = next(e for e in rows if e["provider"] == "eager" and e["mode"] == r["mode"])
        assert r["speedup_vs_eager"] == pytest.approx(eager["median_ms"] / r["median_ms"])
        assert r["speedup_vs_compile"] is None  # compile did not run
    fused = [r for r in rows if r["provider"] == "fused"]
    expected = "triton 3-pass (cpu)" if _dispatch.interpreter_enabled() else "decomposed (cpu)"
    assert {r["path"] for r in fused} == {expected}

    with open(out["csv"]) as f:
        table = list(csv.DictReader(f))
    assert list(table[0]) == bench.ROW_FIELDS and len(table) == len(rows)
    assert out["png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_e2e_on_the_cpu(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("FUSED_SE_BACKEND", "reference")  # the interpreter would take minutes here
    path = tmp_path / "e2e.json"
    argv = ["--device", "cpu", "--e2e", "--e2e-batch", "2", "--e2e-size", "32", "--json", str(path)]
    assert bench.main([*argv, "--warmup", "0", "--reps", "1"]) == 0
    rows = json.loads(path.read_text())
    assert [(r["model"], r["variant"]) for r in rows] == bench.E2E_MODELS
    se = [r for r in rows if r["model"] == "seresnet50"]
    assert all(r["overhead_vs_resnet50_pct"] is not None and r["images_per_s"] > 0 for r in se)
    assert "SE overhead vs resnet50" in capsys.readouterr().out


def test_module_entry_point_help():
    done = subprocess.run(
        [sys.executable, "-m", "fused_se.bench", "--help"], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0
    for option in ("--preset", "--shapes", "--providers", "--modes", "--json", "--csv", "--plot", "--e2e"):
        assert option in done.stdout


def test_rows_name_the_path(one_launch, spread, device, monkeypatch):
    shape = bench.SEShape(32, 4, 4, 2)
    small, large = torch.randn(2, 32, 4, 4, device=device), torch.randn(9, 32, 4, 4, device=device)
    assert bench.fused_path(small, shape) == "triton 1-launch"
    assert bench.fused_path(small, shape, "fwd+bwd") == "triton 1-launch fwd, 3-pass bwd"
    with monkeypatch.context() as m:
        m.setattr(hz, "ONE_LAUNCH_MAX_PROGRAM_BYTES", 0)
        assert bench.fused_path(small, shape) == "triton spread"
    assert bench.fused_path(large, shape) == bench.fused_path(large, shape, "fwd+bwd") == "triton 3-pass"
    # an L2 of four forward samples (two backward ones): x of nine samples streams both ways
    monkeypatch.setattr(hz, "l2_bytes", lambda device: hz.STREAM_L2_FRACTION * 4 * 32 * 4 * 4 * 4)
    monkeypatch.setattr(hz, "STREAM_WEIGHT_RATIO", 0.1)
    assert [bench.fused_path(large, shape, mode) for mode in bench.MODES] == ["triton stream"] * 3
    # with the tail, the backward touches twice the bytes: a lag of one sample, too short
    assert bench.fused_path(large, shape, "fwd+bwd", tail=True) == "triton stream fwd, 3-pass bwd"


def test_three_pass_provider_holds_the_fused_block_to_three_launches(device, monkeypatch):
    """fused-3pass weighs the chosen paths against the passes they replace: where the fused
    block streams, it runs the three launches each way, in every mode."""
    from se_testing import BACKWARD_KERNELS, FORWARD_KERNELS, record_launches

    shape = bench.SEShape(32, 4, 4, 2)
    x = torch.randn(9, 32, 4, 4, device=device)
    monkeypatch.setattr(hz, "l2_bytes", lambda device: hz.STREAM_L2_FRACTION * 4 * x[0].numel() * 4)
    monkeypatch.setattr(hz, "STREAM_WEIGHT_RATIO", 0.1)
    expect = {
        "fused": {"fwd": ["se_fwd_stream"], "bwd": ["se_bwd_stream"], "fwd+bwd": ["se_fwd_stream", "se_bwd_stream"]},
        "fused-3pass": {"fwd": FORWARD_KERNELS, "bwd": BACKWARD_KERNELS, "fwd+bwd": FORWARD_KERNELS + BACKWARD_KERNELS},
    }
    for provider in bench.FUSED:
        module = bench.build_provider(provider, shape, device, torch.float32)
        for mode in bench.MODES:
            call = bench.make_call(module, x, torch.randn_like(x), mode, three_pass=provider == "fused-3pass")
            with record_launches() as launched:
                call()
            assert launched == expect[provider][mode], (provider, mode)
    # restored (the suite keeps the one-launch and spread forwards off)
    from fused_se.kernels.plan import enabled_paths

    assert enabled_paths() == {"three_launch", "stream"}
