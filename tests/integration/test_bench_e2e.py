"""The whole-model harness (fused_se.bench.e2e, behind fused-se-bench --e2e and
benchmarks/profile_e2e.py): its CPU dry run, the groups a GPU run times together, its table and
its rows' schema."""

from __future__ import annotations

import argparse
import json

import pytest

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
