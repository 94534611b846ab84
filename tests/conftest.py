"""Test set-up: without a CUDA device the Triton kernels run in the interpreter on the CPU.

TRITON_INTERPRET must be set before triton is imported (triton.jit reads it when a kernel is
defined), so it is set here, before anything imports fused_se's kernels.

The interpreter runs tl.dot as numpy.matmul, whose fp32 sums follow the OpenBLAS kernels picked
for the CPU at hand; OPENBLAS_CORETYPE pins them (before torch imports numpy, which loads
OpenBLAS) to a set that every x86-64 CPU runs, so that the golden digests
(tests/kernels/test_golden.py) hold on any such machine.
"""

import os

os.environ.setdefault("OPENBLAS_CORETYPE", "Nehalem")

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest

import fused_se

try:
    from fused_se.kernels import common as kernels_common  # noqa: F401  (the installed package has it)
except ModuleNotFoundError as e:  # neither an installed fused_se nor a checkout's kernels/ beside fused_se/
    raise ImportError(
        f"fused_se was imported from {fused_se.__file__}, which has no fused_se.kernels: install the package "
        "(pip install '.[test]') and run `pytest` from the repository's root"
    ) from e

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
# The references the kernels are held to are IEEE fp32 on the GPU too: cuDNN's convolutions (ECA's
# reference) and cuBLAS's fp32 products default to TF32 there, whose error is far past fp32's.
torch.backends.cudnn.allow_tf32 = False
torch.backends.cuda.matmul.allow_tf32 = False

# The tests' small batches would all take the one-launch or the spread forward: both are off
# for the whole session (module-scoped fixtures included) unless a test turns them on with the
# `one_launch` or `spread` fixture, so that the rest exercise the three-launch path. The streamed
# paths stay on: only tests that shrink the L2 they are planned for reach them.
SUITE_PATHS = "three_launch,stream"
os.environ["FUSED_SE_PATHS"] = SUITE_PATHS


def pytest_report_header(config):
    where = torch.cuda.get_device_name() if DEVICE.type == "cuda" else "cpu, Triton interpreter"
    return f"fused_se {fused_se.__version__}: kernels run on {where} (TRITON_INTERPRET={os.environ.get('TRITON_INTERPRET')})"


@pytest.fixture(autouse=True)
def _poison_and_seed(monkeypatch):
    """Every buffer a kernel writes starts as NaN; every test starts from the same seed and with no
    replayed call recorded (tests change the heuristics the recordings were made under)."""
    from fused_se.runtime import launch, replay

    replay.clear()
    monkeypatch.setattr(launch, "POISON_OUTPUTS", True)
    monkeypatch.delenv("FUSED_SE_BACKEND", raising=False)
    monkeypatch.delenv("FUSED_SE_L2_BYTES", raising=False)
    monkeypatch.setenv("FUSED_SE_PATHS", SUITE_PATHS)
    # every persistent launch checks that none of its waits gave up (free in the interpreter; a
    # host sync each on a GPU)
    monkeypatch.setenv("FUSED_SE_CHECK_WAITS", "1")
    torch.manual_seed(0)
    yield


def _allow(monkeypatch, path: str) -> None:
    monkeypatch.setenv("FUSED_SE_PATHS", f"{os.environ['FUSED_SE_PATHS']},{path}")


@pytest.fixture
def one_launch(monkeypatch):
    """The one-launch forward on, as the library ships it."""
    _allow(monkeypatch, "one_launch")


@pytest.fixture
def spread(monkeypatch):
    """The spread forward on, as the library ships it (where the one-launch forward is also on,
    it takes the batches that one launch does not)."""
    _allow(monkeypatch, "spread")


@pytest.fixture
def device():
    return DEVICE
