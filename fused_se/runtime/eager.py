"""The plain-eager route's bodies: where nothing traces, transforms or intercepts a call
(trace.plain_eager), the ops run their bodies as a plain autograd.Function instead of through the
custom op (fused_se/op_spec.py makes both from one declaration). The custom op's dispatch and
generated autograd wrapper cost tens of microseconds of Python a call, more than a small block's
kernels take on a GPU.
"""

from __future__ import annotations

from collections.abc import Callable

from .replay import Replayed
from .trace import set_wrap_triton_enabled


def on_real_tensors(body: Callable) -> Callable:
    """body with wrap_triton off: its launches run the kernels directly, as a triton_op's body does
    on real tensors."""

    def run(*args):
        with set_wrap_triton_enabled(False):
            return body(*args)

    return run


def replayed_body(body: Callable, launches: Callable[[tuple], bool], settings: Callable[[], tuple]) -> Replayed:
    """An op's body as plain calls run it: replayed per signature (replay.py) where it launches
    kernels, with wrap_triton off; elsewhere (the CPU twins, which launch nothing) as it is."""
    return Replayed(on_real_tensors(body), launches, elsewhere=body, settings=settings)
