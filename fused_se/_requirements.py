"""Version pairs that install together but do not run together.

Triton's interpreter, which runs the kernels on the CPU (TRITON_INTERPRET=1), computes with numpy;
before triton 3.7 it needs numpy < 2.4. A requirement cannot say "numpy < 2.4 where triton < 3.7"
(markers name the platform, not other packages), so the kernels check the pair when they are
imported with the interpreter on, and say what to install.
"""

from __future__ import annotations

INTERPRETER_NUMPY_FIX = (3, 7)  # the first triton whose interpreter takes numpy 2.4
NUMPY_LIMIT = (2, 4)


def _release(version: str) -> tuple[int, ...]:
    parts = []
    for part in version.split("+")[0].split(".")[:2]:
        digits = "".join(ch for ch in part if ch.isdigit())
        parts.append(int(digits) if digits else 0)
    return tuple(parts)


def check_interpreter_numpy(triton_version: str, numpy_version: str, interpreted: bool) -> None:
    """ImportError where the interpreter is on with a triton before 3.7 and a numpy of 2.4 or newer."""
    if not interpreted:
        return
    if _release(triton_version) < INTERPRETER_NUMPY_FIX and _release(numpy_version) >= NUMPY_LIMIT:
        raise ImportError(
            f"triton {triton_version}'s interpreter (TRITON_INTERPRET=1) needs numpy < 2.4; numpy "
            f"{numpy_version} is installed: pip install 'numpy<2.4' (or a triton >= 3.7)"
        )
