"""The host-speed seam (fused_se/runtime): each private API it uses is checked at import, what the
checks read without a GPU, and a failed check takes the public path with one warning and the
same results."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import warnings

import pytest
import torch

import fused_se
from fused_se.runtime import checks, launch, trace


def test_every_private_api_is_as_checked_on_this_stack():
    """torch 2.14 / triton 3.8 here, torch 2.11 / triton 3.6 in CI's second stage: no fallback."""
    assert checks.FALLBACKS == {}
    for probe in (checks.compiled_call, checks.trace_queries, checks.wrap_toggle, checks.fake_query):
        assert probe() is None, probe.__name__
    assert checks.environ_data() is None and checks.version_counter() is None
    assert launch.DIRECT and trace.TRACE_QUERIES


def test_the_launcher_check_takes_both_call_forms_and_refuses_another():
    """triton 3.6's CudaLauncher takes (gridX, gridY, gridZ, stream, function, *args), 3.8's names
    the metadata and hooks before *args: both keep the order run_compiled passes; a changed one fails."""
    old = "class CudaLauncher:\n    def __call__(self, gridX, gridY, gridZ, stream, function, *args):\n        pass\n"
    new = (
        "class CudaLauncher:\n    def __call__(self, gridX, gridY, gridZ, stream, function, kernel_metadata,\n"
        "                 launch_metadata, launch_enter_hook, launch_exit_hook, *args):\n        pass\n"
    )
    moved = "class CudaLauncher:\n    def __call__(self, stream, gridX, gridY, gridZ, function, *args):\n        pass\n"
    assert checks.launcher_params(old) is None
    assert checks.launcher_params(new) is None
    assert "not (gridX" in checks.launcher_params(moved)
    assert "no CudaLauncher" in checks.launcher_params("class Other:\n    pass\n")


def test_the_jit_call_check_reads_triton_3_6_and_3_8_alike():
    """The JIT's call of its compiled kernel, as triton 3.6 wraps its lines and as 3.8 does."""
    v36 = """
            kernel.run(grid_0, grid_1, grid_2, stream, kernel.function, kernel.packed_metadata, launch_metadata,
                       knobs.runtime.launch_enter_hook, knobs.runtime.launch_exit_hook, *bound_args.values())
    """
    v38 = """
        kernel.run(grid_0, grid_1, grid_2, stream, kernel.function, kernel.packed_metadata,
                   launch_metadata, knobs.runtime.launch_enter_hook, knobs.runtime.launch_exit_hook,
                   *bound_args.values())
    """
    for text in (v36, v38):
        assert checks.JIT_CALL in checks._squash(text)
    assert checks.JIT_CALL not in checks._squash(v38.replace("stream, kernel.function", "kernel.function, stream"))


def test_a_failed_check_warns_once_and_says_why(monkeypatch):
    monkeypatch.setattr(checks, "FALLBACKS", {})
    with pytest.warns(RuntimeWarning, match="a test's API .* its public path runs instead"):
        assert not checks.check("a test's API", lambda: "changed")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert not checks.check("a test's API", lambda: 1 / 0)  # a second failure: no second warning
        assert checks.check("another API", lambda: None)
    assert checks.FALLBACKS == {"a test's API": "changed"}


def test_without_the_direct_call_a_cuda_launch_binds_through_the_jit(monkeypatch):
    """checks.compiled_call failed: no launch cache, and no compiled kernel a replay would call."""
    monkeypatch.setattr(launch, "INTERPRETED", False)
    monkeypatch.setattr(launch, "DIRECT", False)
    monkeypatch.setattr(launch, "tracing", lambda: False)

    class Kernel:
        def __getitem__(self, grid):
            return ("jit", grid)

    assert launch.bind(Kernel(), (1,)) == ("jit", (1,))
    assert not launch.direct_call(type("Compiled", (), {"run": 0, "function": 0})())
    monkeypatch.setattr(launch, "DIRECT", True)
    assert isinstance(launch.bind(Kernel(), (1,)), launch.CachedLauncher)


def _forward_and_grads(device):
    torch.manual_seed(0)
    m = fused_se.FusedSEModule(24, 6).to(device)
    x = torch.randn(2, 24, 5, 5, device=device, requires_grad=True)
    y = m(x)
    return [y, *torch.autograd.grad(y, [x, *m.parameters()], torch.ones_like(y))]


def test_without_the_trace_flags_every_call_takes_the_custom_op_and_gives_the_same_bits(monkeypatch, device):
    """What trace.py defines where its check fails (plain_eager always False), in this process."""
    from fused_se import op_spec

    plain = _forward_and_grads(device)
    monkeypatch.setattr(op_spec, "plain_eager", lambda args: False)
    through_op = _forward_and_grads(device)
    for a, b in zip(plain, through_op, strict=False):
        assert torch.equal(a, b)


_CHILD = """
import hashlib, warnings
warnings.simplefilter("always")
import torch
with warnings.catch_warnings(record=True) as caught:
    import fused_se
    from fused_se.runtime import checks, env, launch, trace
    torch.manual_seed(0)
    m = fused_se.FusedSEModule(24, 6)
    x = torch.randn(2, 24, 5, 5, generator=torch.Generator().manual_seed(0), requires_grad=True)
    y = m(x)
    grads = torch.autograd.grad(y, [x, *m.parameters()], torch.ones_like(y))
digest = hashlib.sha256(b"".join(t.detach().numpy().tobytes() for t in (y, *grads))).hexdigest()
print(digest, sorted(checks.FALLBACKS), len([w for w in caught if "public path" in str(w.message)]))
"""


def _child(force: bool) -> list[str]:
    env = dict(os.environ, FUSED_SE_PATHS="three_launch", FUSED_SE_PRIVATE_APIS="0" if force else "1")
    code = textwrap.dedent(_CHILD)
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, cwd="/", timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    return out.stdout.strip().splitlines()[-1].split(" ", 1)


@pytest.mark.skipif(torch.cuda.is_available(), reason="the child runs on the CPU")
def test_every_check_failed_at_import_gives_public_paths_one_warning_each_and_the_same_bits():
    """A fresh process whose checks all fail (FUSED_SE_PRIVATE_APIS=0): the public paths (os.environ.get, the custom op on
    every call, triton's JIT) with one warning per API, and the bits of a process whose checks pass."""
    digest, rest = _child(False)
    forced_digest, forced_rest = _child(True)
    assert rest == "[] 0"
    assert forced_digest == digest
    names = [
        "Tensor._version",
        "nn.Module._modules and _parameters",
        "os.environ._data",
        "torch's is_fake",
        "torch's trace and mode flags",
        "torch's wrap_triton toggle",
        "triton's compiled-kernel call",
    ]
    assert forced_rest == f"{names!r} {len(names)}"
