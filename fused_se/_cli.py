"""What the command lines share (fused-se-bench, its --e2e and python -m fused_se.perf): the name
the user typed, the check that an output can be written, a parser whose errors are one line, and a
help formatter within 100 columns."""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from typing import Optional


def prog_name(module: str) -> str:
    """The name the user typed: `python -m <module>` or the console script's (fused-se-bench)."""
    base = os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else ""
    if not base or base in ("__main__.py", "-c") or base.endswith(".py"):
        return f"python -m {module}"
    return base


def check_writable(path: str) -> Optional[str]:
    """Why `path` cannot be written, or None: checked before a run, not found after it."""
    if os.path.isdir(path):
        return f"{path} is a folder"
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        return f"no folder {folder}"
    if os.path.exists(path) and not os.access(path, os.W_OK):
        return f"{path} is not writable"
    if not os.access(folder, os.W_OK):
        return f"folder {folder} is not writable"
    return None


class Parser(argparse.ArgumentParser):
    """An argparse parser whose errors are one line, not the usage block."""

    def error(self, message: str):  # one line, not the usage block
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


HELP_WIDTH = 100  # every line of --help within this many columns


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Descriptions as written; options wrapped to the terminal, at most HELP_WIDTH columns."""

    def __init__(self, prog: str) -> None:
        width = min(HELP_WIDTH, shutil.get_terminal_size().columns) - 2
        super().__init__(prog, width=width, max_help_position=28)
