"""Reads of the switches (FUSED_SE_BACKEND, FUSED_SE_PATHS, ...) on the per-call path.

`os.environ.get` of a name that is not set raises a KeyError inside the mapping and catches it:
about 0.7 us a read on a 2-core EPYC, and a plain call reads up to four switches that are
usually unset. `getenv` reads the same mapping (its encoded-key dict), so it sees every change
made through os.environ (setenv in tests, mock.patch.dict), as os.environ.get does; neither sees
os.putenv. Where os.environ is not the standard mapping (replaced, or another implementation),
it is os.environ.get.
"""

from __future__ import annotations

import os
from typing import Optional

import torch

_ENVIRON = os.environ
_DATA = getattr(_ENVIRON, "_data", None)
_ENCODE = getattr(_ENVIRON, "encodekey", None)
_DECODE = getattr(_ENVIRON, "decodevalue", None)
_STANDARD = isinstance(_DATA, dict) and callable(_ENCODE) and callable(_DECODE)
_KEYS: dict[str, object] = {}  # name -> its key in _DATA


def getenv(name: str) -> Optional[str]:
    """os.environ.get(name): the value, or None where the name is not set."""
    environ = os.environ
    # Under torch.compile the cache of keys, which eager calls fill, would be guarded on: a name
    # cached after the trace would recompile it.
    if environ is not _ENVIRON or not _STANDARD or torch.compiler.is_compiling():
        return environ.get(name)
    key = _KEYS.get(name)
    if key is None:
        key = _KEYS[name] = _ENCODE(name)
    raw = _DATA.get(key)
    return None if raw is None else _DECODE(raw)
