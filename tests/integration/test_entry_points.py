"""The package's commands and a user's script, run from the repository's root and from another folder.

From the root, `python -m fused_se...` and `python -c` put the checkout's fused_se first on sys.path,
ahead of the installed package: the checkout has no fused_se/kernels folder (setup.py installs the
root's kernels/ under that name), so these tests are what keeps that case working
(fused_se/_checkout.py). CI installs the package non-editable (`pip install ".[test]"`), the case a
user has after `pip install .`.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent

DEMO_ARGS = ["--batch", "1", "--channels", "16", "--reduction", "4", "--size", "4", "--dtype", "fp32"]
HOST_ARGS = ["--host", "--host-channels", "16", "--host-modes", "fwd", "--host-paths", "three_launch"]
HOST_ARGS += ["--number", "1", "--repeat", "1"]

COMMANDS = {
    "python -m fused_se.demo": [sys.executable, "-m", "fused_se.demo", *DEMO_ARGS],
    "fused-se-demo": [str(BIN / "fused-se-demo"), *DEMO_ARGS],
    "python -m fused_se.bench --help": [sys.executable, "-m", "fused_se.bench", "--help"],
    "fused-se-bench --help": [str(BIN / "fused-se-bench"), "--help"],
    "python -m fused_se.perf --host": [sys.executable, "-m", "fused_se.perf", *HOST_ARGS],
}

# A user's script: the kernels imported, and one fused call on the CPU.
SCRIPT = """
import torch, fused_se
from fused_se.kernels import common
m = fused_se.FusedSEModule(16, 4)
x = torch.randn(2, 16, 3, 3, requires_grad=True)
m(x).sum().backward()
print(fused_se.__file__)
print(common.__file__)
"""


def _run(cmd: list[str], cwd: Path, interpret: bool) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("TRITON_INTERPRET", "PYTHONPATH")}
    if interpret:
        env["TRITON_INTERPRET"] = "1"
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


@pytest.fixture(params=["root", "elsewhere"])
def cwd(request, tmp_path) -> Path:
    return ROOT if request.param == "root" else tmp_path


@pytest.mark.parametrize("name", list(COMMANDS))
def test_commands_run_from_the_root_and_elsewhere(name, cwd):
    cmd = COMMANDS[name]
    if not Path(cmd[0]).exists():
        pytest.fail(f"{cmd[0]} is not installed beside {sys.executable}: install the package (pip install .)")
    done = _run(cmd, cwd, interpret=True)
    assert done.returncode == 0, f"{name} failed in {cwd}:\n{done.stdout[-2000:]}\n{done.stderr[-4000:]}"
    assert "No module named" not in done.stderr


@pytest.mark.parametrize("interpret", [True, False], ids=["interpreter", "cpu-kernel"])
def test_a_users_script_runs_from_the_root_and_elsewhere(cwd, interpret):
    done = _run([sys.executable, "-c", SCRIPT], cwd, interpret)
    assert done.returncode == 0, f"failed in {cwd}:\n{done.stderr[-4000:]}"
    package, kernels = (Path(line) for line in done.stdout.split()[-2:])
    # the kernels come from the same tree as the package that was imported
    assert kernels.parent.name == "kernels"
    if package.parent.parent == ROOT:  # the checkout's fused_se: its kernels are the root's kernels/
        assert kernels.parent == ROOT / "kernels"
    else:
        assert kernels.parent == package.parent / "kernels"


def test_the_checkout_finder_answers_only_for_a_checkout(tmp_path):
    from fused_se import _checkout

    assert _checkout.checkout_kernels(ROOT / "fused_se") == ROOT / "kernels"
    installed = tmp_path / "site" / "fused_se"
    (installed / "kernels").mkdir(parents=True)
    (installed / "kernels" / "__init__.py").write_text("")
    assert _checkout.checkout_kernels(installed) is None
    finder = _checkout.CheckoutKernelsFinder(ROOT / "kernels")
    assert finder.find_spec("fused_se.ops") is None
    assert finder.find_spec("kernels") is None
    assert finder.find_spec("fused_se.kernels").origin == str(ROOT / "kernels" / "__init__.py")
