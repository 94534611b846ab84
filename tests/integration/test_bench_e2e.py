"""The whole-model harness (fused_se.bench.e2e, behind fused-se-bench --e2e and
benchmarks/profile_e2e.py): its CPU dry run, the groups a GPU run times together, its table,
its rows' schema, and the GPU commands that run it (benchmarks/gpu_e2e.sh)."""

from __future__ import annotations

import argparse
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from fused_se import bench
from fused_se.bench import e2e

REQUIRED = ("model", "variant", "mode", "batch", "wall_ms", "device_ms", "host_ms", "launches", "se_device_ms",
            "card", "torch", "triton")  # fmt: skip


def test_cpu_dry_run_writes_labelled_rows_as_it_goes(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("FUSED_SE_BACKEND", "reference")  # the interpreter would take minutes here
    argv = ["--e2e", "--device", "cpu", "--models", "seresnet50", "monai_seresnet50_3d",
            "--variants", "eager", "converted", "--batches", "2", "--size", "32", "--volume", "16",
            "--steps", "1", "--rounds", "1", "--warmup-steps", "1", "--out", str(tmp_path)]  # fmt: skip
    assert bench.main(argv) == 0
    rows = json.loads((tmp_path / "e2e.json").read_text())
    assert [(r["model"], r["variant"], r["mode"]) for r in rows] == [
        ("seresnet50", "eager", "eager"),
        ("seresnet50", "converted", "eager"),
        ("monai_seresnet50_3d", "eager", "eager"),
        ("monai_seresnet50_3d", "converted", "eager"),
    ]
    for r in rows:
        assert all(k in r for k in REQUIRED) and set(r) == set(e2e.FIELDS), r.get("error")
        assert r["dry_run"] is True and r["card"] == "cpu (dry run)" and r["error"] is None
        assert r["wall_ms"] > 0 and r["device_ms"] > 0 and r["host_ms"] > 0 and r["launches"] is None
        assert r["batch"] == 2 and r["size"] == (16 if r["model"].startswith("monai") else 32)
    # the SE blocks' share, from the record_function ranges
    assert all(r["se_device_ms"] > 0 and r["se_attribution"] == "ranges" for r in rows)
    out = capsys.readouterr().out
    assert "cpu dry run" in out and "[1/2] eager, batch 2: seresnet50 eager, seresnet50 converted" in out
    assert all(len(line) <= 100 for line in out.splitlines())
    table = (tmp_path / "e2e.txt").read_text().splitlines()
    assert len(table) >= 2 + len(rows) and all(len(line) <= 100 for line in table)
    assert (tmp_path / "e2e.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_case_that_fails_is_a_row_that_says_why(tmp_path, monkeypatch, capsys):
    def broken(name, variant, device):
        raise RuntimeError("no such model here")

    monkeypatch.setattr(e2e, "build_model", broken)
    argv = ["--device", "cpu", "--models", "efficientnet_b0", "--variants", "eager", "--json", str(tmp_path / "e.json")]
    assert e2e.main(argv) == 1  # every row failed
    (row,) = json.loads((tmp_path / "e.json").read_text())
    assert row["error"] == "RuntimeError: no such model here" and row["wall_ms"] is None
    assert "! error: efficientnet_b0 eager eager 2: RuntimeError" in capsys.readouterr().out


def test_gpu_runs_time_each_family_at_each_batch_and_mode_together():
    args = argparse.Namespace(device="cuda", models=list(e2e.MODELS), variants=list(e2e.VARIANTS),
                              modes=list(e2e.MODES), batches=None)  # fmt: skip
    groups = e2e.plan_groups(args)
    assert ("resnet50", 256, "cudagraph") in [g[:3] for g in groups]
    first = groups[0]
    assert first[:3] == ("resnet50", 64, "eager")
    assert first[3] == [("resnet50", "eager"), ("seresnet50", "eager"), ("seresnet50", "converted"),
                        ("seresnet50", "converted+tail")]  # fmt: skip
    assert {g[1] for g in groups if g[0] == "efficientnet_b0"} == {64}
    assert {g[1] for g in groups if g[0] == "monai_seresnet50_3d"} == {4}
    assert len(groups) == 3 * (2 + 1 + 1)
    args.batches, args.models, args.modes = [128], ["seresnet50"], ["compile"]
    args.variants = ["eager", "converted"]
    assert e2e.plan_groups(args) == [
        ("resnet50", 128, "compile", [("seresnet50", "eager"), ("seresnet50", "converted")])
    ]


@pytest.mark.parametrize(
    "argv,message",
    [
        (["--tail"], "unrecognized arguments: --tail"),
        (["--modes", "cudagraph"], "--modes cudagraph needs a CUDA device"),
        (["--models", "vgg"], "invalid choice: 'vgg'"),
        (["--batches", "0"], "--batches must be positive"),
    ],
)
def test_bad_e2e_arguments_give_one_line(argv, message, capsys):
    with pytest.raises(SystemExit) as e:
        bench.main(["--e2e", "--device", "cpu", *argv])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


@pytest.mark.parametrize("columns", ["60", "250"])
def test_e2e_help_and_table_fit_100_columns(columns, monkeypatch):
    monkeypatch.setenv("COLUMNS", columns)
    lines = e2e.build_parser("fused-se-bench --e2e").format_help().splitlines()
    assert all(len(line) <= 100 for line in lines), max(lines, key=len)
    row = {"model": "monai_seresnet50_3d", "variant": "converted+tail", "mode": "cudagraph", "batch": 256,
           "wall_ms": 12345.67, "device_ms": 12345.67, "host_ms": 1234.56, "launches": 12345, "se_device_ms": 1234.56,
           "compile_s": 123.4, "error": "x"}  # fmt: skip
    table = e2e.e2e_table()
    assert all(len(line) <= 100 for line in [*table.header().splitlines(), table.line(row)])


BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


def _gpu_e2e_steps(tmp_path) -> dict[str, list[str]]:
    """benchmarks/gpu_e2e.sh's steps as it would run them on a GPU: name -> the command's words."""
    env = {"PATH": "/usr/bin:/bin", "PRINT_ONLY": "1", "OUT": str(tmp_path / "out"), "PYTHON": sys.executable}
    done = subprocess.run(
        ["bash", str(BENCHMARKS / "gpu_e2e.sh")], env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert not (tmp_path / "out").exists()  # printing only writes nothing
    steps = [line.split("\t") for line in done.stdout.splitlines() if "\t" in line]
    return {name: words for name, *words in steps}


def test_every_gpu_e2e_step_is_a_command_its_harness_accepts(tmp_path, monkeypatch):
    """Each step of benchmarks/gpu_e2e.sh (the GPU commands, each under 10 minutes) parses as its
    harness parses it on a GPU, and together the steps time what the whole-step and block tables
    need: every model's variants in every mode at the GPU batches (seresnet50 and resnet50 at 64
    and 256, compiled at 128 first), and the block's providers in both layouts, Inductor's two
    modes included. A renamed option or a step left out fails here, not on a GPU."""
    steps = _gpu_e2e_steps(tmp_path)
    assert list(steps) == ["1", "2a", "2b", "2c", "2d", "3a", "3b", "3c", "3d", "3e", "3f", "3g", "3h", "3i", "3j"]
    spec = importlib.util.spec_from_file_location("profile_gpu", BENCHMARKS / "profile_gpu.py")
    blocks_parser = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(blocks_parser)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # parse as on a GPU; nothing runs
    cases, blocks = set(), set()
    for name, (python, script, *argv) in steps.items():
        assert python == sys.executable
        if script.endswith("profile_e2e.py"):
            args = e2e.parse_args(argv)
            assert args.device == "cuda" and args.append and args.label == name
            for _, batch, mode, pairs in e2e.plan_groups(args):
                cases |= {(model, variant, mode, batch) for model, variant in pairs}
        else:
            assert script.endswith("profile_gpu.py"), script
            args = blocks_parser.build_parser().parse_args(argv)
            assert (args.batch, args.dtype) == (128, "bf16") and not args.dry_run
            for provider in args.providers:
                for compile_mode in args.compile_modes if provider == "compile" else [None]:
                    blocks |= {(layout, mode, provider, compile_mode)
                               for layout in args.layouts.split(",") for mode in args.modes.split(",")}  # fmt: skip
    assert e2e.parse_args(steps["1"][2:]).batches == [128]  # the first step: compiled, at B=128
    need = {("seresnet50", v, "compile", 128) for v in ("eager", "converted")}
    for model, batches in (("resnet50", (64, 256)), ("seresnet50", (64, 256)), ("efficientnet_b0", (64,)),
                           ("monai_seresnet50_3d", (4,))):  # fmt: skip
        need |= {(model, v, m, b) for v in e2e.MODELS[model].variants for m in e2e.MODES for b in batches}
    assert need <= cases, sorted(need - cases)
    need = {(layout, mode, provider, "default" if provider == "compile" else None)
            for layout in ("channels_last", "nchw") for mode in ("fwd", "fwd+bwd")
            for provider in ("eager", "compile", "fused", "fused-3pass")}  # fmt: skip
    need |= {("channels_last", mode, "compile", "max-autotune-no-cudagraphs") for mode in ("fwd", "fwd+bwd")}
    need |= {("nchw", mode, "fused-stream", None) for mode in ("fwd", "fwd+bwd")}
    assert need <= blocks, sorted(need - blocks)
