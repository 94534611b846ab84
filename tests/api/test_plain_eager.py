"""Plain eager calls run the ops' bodies as an autograd.Function, without the custom op's dispatch;
anything that traces or intercepts takes the custom op. Both give the same bits, and neither
makes autograd fill the saved-only outputs' gradients with zeros."""

from __future__ import annotations

import pytest
import torch
from se_testing import FORM_KERNELS, make_variant_params, record_launches, record_ops, run_variant
from torch.overrides import TorchFunctionMode

import fused_se
from fused_se import ops


class PassThrough(TorchFunctionMode):
    """A function mode that changes nothing but is there, as modes that record or redirect are."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        return func(*args, **(kwargs or {}))


FORMS = [("mlp", "SqueezeExcite"), ("fc", "EffectiveSqueezeExcite"), ("conv", "EfficientChannelAttention")]


def _case(form, device, dtype=torch.float32):
    torch.manual_seed(0)
    x = torch.randn(3, 16, 3, 4, device=device, dtype=dtype).requires_grad_()
    params = [
        p.requires_grad_() if p is not None else None for p in make_variant_params(form, 16, 4, 3, True, device, dtype)
    ]
    return x, params


def _forward_backward(form, x, params):
    y = run_variant(fused_se, x, form, params, "relu", "sigmoid", False)
    leaves = [x, *(p for p in params if p is not None)]
    grads = torch.autograd.grad(y, leaves, torch.ones_like(y))
    return y, grads


@pytest.mark.parametrize("form,function", FORMS)
def test_eager_calls_take_the_autograd_function_and_match_the_custom_op(form, function, device):
    x, params = _case(form, device)
    with record_launches() as launched:
        y, grads = _forward_backward(form, x, params)
    assert type(y.grad_fn).__name__ == f"{function}Backward"
    assert launched[:3] == ["squeeze", FORM_KERNELS[form], "scale"]  # the kernels, not the reference
    # A pass-through function mode makes the call not plain: the custom op runs, as under tracing.
    with PassThrough():
        assert not ops.plain_eager((x,))
        y_op, grads_op = _forward_backward(form, x, params)
    assert type(y_op.grad_fn).__name__ != f"{function}Backward"
    assert torch.equal(y, y_op)
    for g, g_op in zip(grads, grads_op, strict=False):
        assert torch.equal(g, g_op)


def test_a_dispatch_mode_sees_the_custom_op(device):
    x, params = _case("mlp", device)
    with record_ops() as names:
        run_variant(fused_se, x, "mlp", params, "relu", "sigmoid", False)
    assert names[0] == "fused_se.squeeze_excite"
    with record_ops() as names:
        assert not ops.plain_eager((x,))


@pytest.mark.parametrize("form,function", FORMS)
def test_no_zero_filled_gradients_for_the_saved_outputs(form, function, device):
    """z, s and a are outputs only to be saved: the backward gets None for them, not three zeros
    (aten.zeros, before each backward, until autograd was told not to materialize them)."""
    x, params = _case(form, device)
    y = run_variant(fused_se, x, form, params, "relu", "sigmoid", False)
    with record_ops() as names:
        y.backward(torch.ones_like(y))
    assert not [n for n in names if "zero" in n], names
    # the custom op's path too
    with PassThrough():
        y = run_variant(fused_se, x, form, params, "relu", "sigmoid", False)
    with record_ops() as names:
        y.backward(torch.ones_like(y))
    assert names and not [n for n in names if "zero" in n], names


def test_double_backward_is_refused_on_the_plain_path(device):
    x, params = _case("mlp", device)
    y = run_variant(fused_se, x, "mlp", params, "relu", "sigmoid", False)
    assert type(y.grad_fn).__name__ == "SqueezeExciteBackward"
    (gx,) = torch.autograd.grad(y.sum(), x, create_graph=True)
    with pytest.raises(RuntimeError, match="double backward"):
        gx.sum().backward()


@pytest.mark.parametrize("form,function", FORMS)
def test_calls_without_gradients_run_the_body_alone(form, function, device):
    """Inference (no_grad, or no input that requires grad) needs no autograd node: same bits."""
    x, params = _case(form, device)
    y = run_variant(fused_se, x, form, params, "relu", "sigmoid", False)
    with torch.no_grad(), record_launches() as launched:
        y_inf = run_variant(fused_se, x, form, params, "relu", "sigmoid", False)
    assert launched == ["squeeze", FORM_KERNELS[form], "scale"]  # the kernels, not the reference
    plain = [t.detach() if t is not None else None for t in params]
    y_detached = run_variant(fused_se, x.detach(), form, plain, "relu", "sigmoid", False)
    assert type(y.grad_fn).__name__ == f"{function}Backward"
    assert y_inf.grad_fn is None and y_detached.grad_fn is None
    assert torch.equal(y.detach(), y_inf) and torch.equal(y_inf, y_detached)
