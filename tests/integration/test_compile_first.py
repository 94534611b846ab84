"""torch.compile as a user calls it: the first call of the process is the compiled one.

Each case runs in a fresh process (compile_first_case.py), so that nothing fused_se keeps after an
eager call (a module imported on first use, a cache) is there when Dynamo first traces the blocks:
what Dynamo guards on then is what a user's first compiled call meets. The suite's other compile
tests run their models eagerly first.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

CASE = Path(__file__).with_name("compile_first_case.py")


def _case(name: str, interpret: bool, *device_and_mode: str) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    if interpret:
        env["TRITON_INTERPRET"] = "1"
    done = subprocess.run(
        [sys.executable, str(CASE), name, *device_and_mode],
        cwd=CASE.parent,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert done.returncode == 0, f"{name} failed:\n{done.stderr[-6000:]}"
    return json.loads(done.stdout.strip().splitlines()[-1])


def _assert_equal_to_eager(result: dict) -> None:
    assert result["max_diff"] <= 1e-4 * max(1.0, result["scale"]), result


@pytest.mark.parametrize("interpret", [True, False], ids=["interpreter", "cpu-kernel"])
def test_a_module_compiled_before_any_eager_call(interpret):
    result = _case("module", interpret)
    assert result["graphs"] == 1
    assert result["fused_ops"] == ["fused_se.squeeze_excite.default"]  # the fused op, not the reference's ops
    _assert_equal_to_eager(result)


@pytest.mark.parametrize("case", ["seresnet18", "seresnet18-tail"])
def test_a_converted_timm_model_compiled_before_any_eager_call(case):
    pytest.importorskip("timm")
    result = _case(case, interpret=True)
    assert result["graphs"] == 1  # fullgraph: no break anywhere
    assert result["fused_ops"] == ["fused_se.squeeze_excite.default"] * 8  # every SE block of the eight
    _assert_equal_to_eager(result)


def test_dynamic_shapes_compile_once_for_every_batch():
    result = _case("dynamic", interpret=True)
    assert result["graphs"] == 1, "a batch size of its own recompiled"
    assert result["fused_ops"] == ["fused_se.squeeze_excite.default"]
    _assert_equal_to_eager(result)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a CUDA device")
@pytest.mark.parametrize("case", ["module", "seresnet18-tail"])
def test_reduce_overhead_before_any_eager_call(case):
    if case != "module":
        pytest.importorskip("timm")
    result = _case(case, False, "cuda", "reduce-overhead")
    _assert_equal_to_eager(result)
