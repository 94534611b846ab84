"""Reads of the switches (FUSED_SE_BACKEND, FUSED_SE_PATHS, ...) on the per-call path: their
values (getenv, getenvs), and how a set of them is set, as a key (state_reader: replay signatures).

`os.environ.get` of a name that is not set raises a KeyError inside the mapping and catches it:
about 0.7 us a read on a 2-core EPYC, and a plain call reads up to four switches that are
usually unset. `getenv` reads the same mapping (its encoded-key dict, a private attribute checked
at import: checks.environ_data), so it sees every change made through os.environ (setenv in
tests, mock.patch.dict), as os.environ.get does; neither sees os.putenv. Where os.environ is not
the standard mapping (replaced, or another implementation), it is os.environ.get.
"""

from __future__ import annotations

import os
from collections.abc import Callable
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


def state_reader(names: tuple[str, ...]) -> Callable[[], tuple]:
    """A function of no arguments that says how the switches `names` are set, as a key to compare,
    not a value to read: () where none is set (the usual case: one set intersection), else each
    name's raw entry in os.environ's mapping (None where unset), in the order of `names`. A result
    equals an earlier one exactly when every name is set as it was then. Where os.environ is not
    the standard mapping, the entries are getenvs(names)."""
    encoded = tuple(_ENVIRON.encodekey(name) for name in names) if _STANDARD else ()  # made here once, as _KEYS
    wanted, present = frozenset(encoded), _DATA.keys() if _STANDARD else None

    def read() -> tuple:
        if os.environ is not _ENVIRON or not _STANDARD:
            values = getenvs(names)
            return values if any(v is not None for v in values) else ()
        if not present & wanted:
            return ()
        return tuple([_DATA.get(key) for key in encoded])

    return read
