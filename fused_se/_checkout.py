"""`fused_se.kernels` in a source checkout.

setup.py installs the repository's kernels/ folder as fused_se.kernels; in a checkout the two folders
are siblings. A script or `python -m fused_se...` run from the checkout's root imports the checkout's
fused_se (the current directory comes first on sys.path), not the installed package, and would find
no fused_se.kernels. `install` adds a finder that answers for that one name, with the checkout's
kernels/, and only where the imported fused_se folder holds no kernels of its own (an installed one
does): an installed package is never redirected.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import importlib.util
import sys
from pathlib import Path

_PACKAGE = Path(__file__).resolve().parent
_NAME = f"{__package__}.kernels"


class CheckoutKernelsFinder(importlib.abc.MetaPathFinder):
    """Finds `fused_se.kernels` in the checkout's kernels/ folder, and nothing else."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def find_spec(self, fullname: str, path=None, target=None) -> importlib.machinery.ModuleSpec | None:
        if fullname != _NAME:
            return None
        return importlib.util.spec_from_file_location(
            fullname, self.folder / "__init__.py", submodule_search_locations=[str(self.folder)]
        )


def checkout_kernels(package: Path = _PACKAGE) -> Path | None:
    """The kernels/ folder beside `package` where `package` is a source checkout's fused_se (no
    kernels inside it, a setup.py and a kernels package beside it); None for an installed package."""
    folder = package.parent / "kernels"
    if (package / "kernels").is_dir() or not (package.parent / "setup.py").is_file():
        return None
    return folder if (folder / "__init__.py").is_file() else None


def install() -> None:
    folder = checkout_kernels()
    if folder is not None and not any(isinstance(f, CheckoutKernelsFinder) for f in sys.meta_path):
        sys.meta_path.append(CheckoutKernelsFinder(folder))
