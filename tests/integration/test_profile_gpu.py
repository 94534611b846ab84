"""benchmarks/profile_gpu.py (the SE block against Inductor, on device time): without a GPU it
refuses, or with --dry-run runs its plumbing on tiny CPU shapes and writes blocks.json rows marked so."""

from __future__ import annotations

import importlib.util
import json
import pathlib

import pytest
import torch

SCRIPT = pathlib.Path(__file__).resolve().parents[2] / "benchmarks" / "profile_gpu.py"
REQUIRED = ("shape", "layout", "mode", "provider", "device_us", "launches", "n_bytes", "copy_gbps", "card")


@pytest.fixture(scope="module")
def profile_gpu():
    spec = importlib.util.spec_from_file_location("profile_gpu", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_dry_run_writes_labelled_block_rows(profile_gpu, tmp_path, capsys):
    argv = ["--dry-run", "--out", str(tmp_path), "--providers", "eager", "fused", "fused-3pass", "fused-stream",
            "--shapes", "16,4,4,4", "--iters", "1"]  # fmt: skip
    assert profile_gpu.main(argv) == 0
    rows = json.loads((tmp_path / "blocks.json").read_text())
    cases = [(r["layout"], r["mode"], r["provider"]) for r in rows]
    assert cases == [
        (layout, mode, provider)
        for layout in ("channels_last", "nchw")
        for mode in ("fwd", "fwd+bwd")
        for provider in ("eager", "fused", "fused-3pass", "fused-stream")
    ]
    for r in rows:
        assert all(k in r for k in REQUIRED)
        assert r["dry_run"] is True and r["card"] == "cpu (dry run)" and r["copy_gbps"] is None
        assert r["shape"] == "2x16x4x4" and r["n_bytes"] == 2 * 16 * 4 * 4 * 4 and r["launches"] is None
        assert r["device_us"] > 0 and r["kernels"]
    assert "cpu dry run" in capsys.readouterr().out


@pytest.mark.skipif(torch.cuda.is_available(), reason="the refusal is for machines without a GPU")
def test_without_a_gpu_it_refuses_unless_a_dry_run(profile_gpu, tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        profile_gpu.main(["--out", str(tmp_path)])
    assert e.value.code == 2
    assert "no CUDA device here" in capsys.readouterr().err and not (tmp_path / "blocks.json").exists()


def test_compile_rows_name_each_inductor_mode(profile_gpu):
    variants = [
        (p, m) for p in profile_gpu.PROVIDERS for m in (profile_gpu.COMPILE_MODES if p == "compile" else [None])
    ]
    assert ("compile", "default") in variants and ("compile", "max-autotune-no-cudagraphs") in variants
    assert set(profile_gpu.PROVIDERS) == {"eager", "compile", "fused", "fused-3pass", "fused-stream"}
