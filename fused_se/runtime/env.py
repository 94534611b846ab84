"""Reads of the switches (FUSED_SE_BACKEND, FUSED_SE_PATHS, ...) on the per-call path.

`os.environ.get` of a name that is not set raises a KeyError inside the mapping and catches it:
about 0.7 us a read on a 2-core EPYC, and a plain call reads up to four switches that are
usually unset. `getenv` reads the same mapping (its encoded-key dict, a private attribute checked
at import: checks.environ_data), so it sees every change made through os.environ (setenv in
tests, mock.patch.dict), as os.environ.get does; neither sees os.putenv. Where os.environ is not
the standard mapping (replaced, or another implementation), it is os.environ.get.
"""

from __future__ import annotations

import os
from typing import Optional

from . import checks

SWITCHES = (
    "FUSED_SE_BACKEND",
    "FUSED_SE_PATHS",
    "FUSED_SE_L2_BYTES",
    "FUSED_SE_CHECK_WAITS",
    "FUSED_SE_REPLAY",
)

_ENVIRON = os.environ
_STANDARD = checks.check("os.environ._data", checks.environ_data)
_DATA = _ENVIRON._data if _STANDARD else None
_DECODE = _ENVIRON.decodevalue if _STANDARD else None
# each switch's key in _DATA, made here once: never filled in later, so that a traced call
# (torch.compile) assigns nothing here
_KEYS = {name: _ENVIRON.encodekey(name) for name in SWITCHES} if _STANDARD else {}


def getenv(name: str) -> Optional[str]:
    """os.environ.get(name): the value, or None where the name is not set."""
    environ = os.environ
    key = _KEYS.get(name)
    if key is None or environ is not _ENVIRON:
        return environ.get(name)
    raw = _DATA.get(key)
    return None if raw is None else _DECODE(raw)


def getenvs(names: tuple[str, ...]) -> tuple[Optional[str], ...]:
    """getenv of each name, in one call (the per-call settings read several)."""
    environ = os.environ
    if environ is not _ENVIRON or not _STANDARD:
        return tuple([environ.get(name) for name in names])
    values = []
    for name in names:
        key = _KEYS.get(name)
        raw = environ.get(name) if key is None else _DATA.get(key)
        values.append(raw if raw is None or key is None else _DECODE(raw))
    return tuple(values)
