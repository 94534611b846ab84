"""What may trace, transform or intercept a call, from torch's private flags (checked at import:
checks.trace_queries, wrap_toggle, fake_query). Torch only: `import fused_se` reads these
(_dispatch) without importing triton.
"""

from __future__ import annotations

from contextlib import nullcontext

import torch

from . import checks

TRACE_QUERIES = checks.check("torch's trace and mode flags", checks.trace_queries)

if checks.check("torch's wrap_triton toggle", checks.wrap_toggle):
    from torch._library.triton import is_wrap_triton_enabled, set_wrap_triton_enabled
else:

    def is_wrap_triton_enabled() -> bool:
        return True

    def set_wrap_triton_enabled(enabled: bool):
        return nullcontext()


if checks.check("torch's is_fake", checks.fake_query):
    from torch._subclasses.fake_tensor import is_fake
else:

    def is_fake(t: torch.Tensor) -> bool:
        """Whether t may be a fake tensor: any tensor subclass (fake, functional) is taken as one."""
        return type(t) is not torch.Tensor and not isinstance(t, torch.nn.Parameter)


if TRACE_QUERIES:  # the flags read on every call, bound once (no attribute lookups per call)
    _dispatch_stack_len = torch._C._len_torch_dispatch_stack
    _functorch_active = torch._C._are_functorch_transforms_active
    _function_mode = torch._C._is_torch_function_mode_enabled
    _jit_tracing = torch._C._is_tracing
_is_compiling = torch.compiler.is_compiling
_has_torch_function = torch.overrides.has_torch_function


def tracing() -> bool:
    """Whether something may be tracing a launch: torch.compile, a dispatch mode (fake tensors,
    make_fx, export, functionalization) or a functorch transform."""
    return _dispatch_stack_len() > 0 or _functorch_active() or _is_compiling()


def any_trace() -> bool:
    """Whether anything may be tracing this call, as an ONNX exporter always is: torch.jit.trace,
    torch.compile or torch.export's dynamo, a dispatch or function mode (fake tensors, make_fx,
    non-strict export)."""
    if _is_compiling():  # first: under dynamo the checks below could break the graph
        return True
    return (
        _jit_tracing()  # torch.jit.is_tracing outside TorchScript, without its Python frame
        or _dispatch_stack_len() > 0
        or _function_mode()
    )


def plain_eager(args: tuple) -> bool:
    """Whether nothing traces, transforms or intercepts a call with these arguments: nothing that
    may trace a launch (tracing), no function mode, no jit trace, no subclass."""
    if _is_compiling():  # first: under dynamo the checks below would break the graph
        return False
    return not (  # tracing()'s flags, inline (is_compiling is known False)
        _dispatch_stack_len() > 0
        or _functorch_active()
        or _function_mode()
        or _jit_tracing()  # torch.jit.is_tracing outside TorchScript, without its Python frame
        or _has_torch_function(args)  # non-tensors have none
    )


if not TRACE_QUERIES:  # the flags are not as checked: anything may trace, and the custom op runs every call

    def tracing() -> bool:
        return True

    def any_trace() -> bool:
        return True

    def plain_eager(args: tuple) -> bool:
        return False
