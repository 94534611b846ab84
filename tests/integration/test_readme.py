"""The README's examples run as written, and its links and docs/PERFORMANCE.md's point at files
that exist.

The examples are the ```python blocks that follow an HTML comment `<!-- readme-test: NAME -->`
in README.md. Each runs in a fresh interpreter from a temporary directory (so that the source
tree does not shadow the installed package) on the CPU: the quick start once with the Triton
interpreter (the kernels themselves) and once without it (the CPU kernel), the conversion
example without it (a timm model, random weights).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
MARKER = re.compile(r"<!--\s*readme-test:\s*([\w-]+)\s*-->\s*\n```python\n(.*?)\n```", re.DOTALL)
# [text](target) links; images too. Targets with a scheme, or only an anchor, are not files.
LINK = re.compile(r"\]\(([^)\s]+)\)")
# `benchmarks/...`-style paths in code spans: files cited from the repository's root
CITED = re.compile(r"`((?:benchmarks|docs|fused_se|kernels|tests)/[\w./-]+)`")


def readme_blocks() -> dict[str, str]:
    """The marked python blocks of README.md, by name."""
    blocks = {}
    for name, code in MARKER.findall(README.read_text()):
        assert name not in blocks, f"two README blocks are marked {name!r}"
        blocks[name] = code
    return blocks


def run_block(code: str, tmp_path: Path, interpret: bool) -> subprocess.CompletedProcess:
    script = tmp_path / "example.py"
    script.write_text(code + "\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("FUSED_SE_")}
    env.pop("TRITON_INTERPRET", None)
    env["CUDA_VISIBLE_DEVICES"] = ""  # the CPU, as the README says it runs there too
    if interpret:
        env["TRITON_INTERPRET"] = "1"
    return subprocess.run(
        [sys.executable, str(script)], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300
    )


def test_readme_marks_its_examples():
    assert set(readme_blocks()) == {"quickstart", "convert"}


@pytest.mark.parametrize("interpret", [True, False], ids=["triton-interpreter", "cpu-kernel"])
def test_quick_start_runs(tmp_path, interpret):
    done = run_block(readme_blocks()["quickstart"], tmp_path, interpret)
    assert done.returncode == 0, done.stderr
    # the quick start prints which path ran: the Triton kernels, or their twins in torch ops
    assert ("triton" if interpret else "decomposed") in done.stdout.split()


def test_convert_example_runs(tmp_path):
    pytest.importorskip("timm")
    done = run_block(readme_blocks()["convert"], tmp_path, interpret=False)
    assert done.returncode == 0, done.stderr
    assert "replaced" in done.stdout


@pytest.mark.parametrize("doc", ["README.md", "docs/PERFORMANCE.md", "docs/DESIGN.md"])
def test_links_point_at_files(doc):
    path = ROOT / doc
    missing = []
    prose = re.sub(r"```.*?```|`[^`\n]*`", "", path.read_text(), flags=re.DOTALL)  # code is not a link
    for target in LINK.findall(prose):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target) or target.startswith("#"):
            continue
        file = target.split("#", 1)[0]
        if not (path.parent / file).exists():
            missing.append(target)
    assert not missing, f"{doc} links to files that do not exist: {missing}"


@pytest.mark.parametrize("doc", ["README.md", "docs/PERFORMANCE.md"])
def test_cited_paths_exist(doc):
    cited = CITED.findall((ROOT / doc).read_text())
    missing = sorted({p for p in cited if not (ROOT / p).exists()})
    assert not missing, f"{doc} cites paths that do not exist: {missing}"
