"""nn.Modules that run the fused SE block.

FusedSEModule is the drop-in for the classic SEModule, and the base class of every fused block:
one forward serves all, each block naming its form ("mlp": two FCs, "fc": one C x C FC, "conv": a
k-tap conv across channels) and the functional op and arguments it runs (``_excitation``). The
subclasses hold their parameters the way timm and torchvision lay them out (1x1 convs, a single
C x C conv, a k-tap Conv1d), so that fused_se.convert can swap a model's SE blocks for them with
the state_dict unchanged.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Optional

import torch
from torch import fx, nn

from . import reference
from .functional import (
    RANKS,
    _dtype_pairs,
    _effective_squeeze_excite,
    _efficient_channel_attention,
    _spatial_channel_squeeze_excite,
    _squeeze_excite,
)
from .runtime.modules import children
from .runtime.modules import weight_and_bias as _weight_and_bias

_ACT_MODULES = {"relu": nn.ReLU, "silu": nn.SiLU}
_GATE_MODULES = {"sigmoid": nn.Sigmoid, "hard_sigmoid": nn.Hardsigmoid}


def _check_int(name: str, value: object, low: int, high: Optional[int] = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int; got {type(value).__name__}")
    if value < low or (high is not None and value > high):
        bound = f"between {low} and {high}" if high is not None else f">= {low}"
        raise ValueError(f"{name} must be {bound}; got {value}")
    return value


def _check_bool(name: str, value: object) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be a bool; got {type(value).__name__}")
    return value


def _check_name(name: str, value: object, choices: tuple[str, ...]) -> str:
    if value not in choices:
        raise ValueError(f"{name} must be one of {choices}; got {value!r}")
    return value  # type: ignore[return-value]


def refuse_script(*_) -> None:
    """torch.jit.script's hook on a fused block (and on a block whose forward convert replaced)."""
    raise RuntimeError(
        "torch.jit.script cannot compile fused_se's blocks (they launch Triton kernels from Python): "
        "call fused_se.revert(model) before scripting, or use torch.compile or torch.export"
    )


def install_forward(block: nn.Module, forward: Callable, **kwargs) -> None:
    """Gives `block` an instance forward, forward(block, ..., **kwargs), which shadows its class's
    (convert's fused residual tails and inline SE); torch.jit.script of the block is refused with
    `refuse_script`'s message."""
    block.__dict__["forward"] = functools.partial(forward, block, **kwargs)
    block.__dict__["__prepare_scriptable__"] = refuse_script


def has_forward(block: nn.Module, forward: Callable) -> bool:
    """Whether `install_forward` gave `block` this forward."""
    installed = block.__dict__.get("forward")
    return isinstance(installed, functools.partial) and installed.func is forward


def remove_forward(block: nn.Module, forward: Callable) -> None:
    """Undoes `install_forward(block, forward, ...)`; nothing where it was not installed."""
    if has_forward(block, forward):
        del block.__dict__["forward"]
        block.__dict__.pop("__prepare_scriptable__", None)


def traced_as_leaf(module: nn.Module, x: fx.Proxy, args: tuple, kwargs: dict) -> fx.Proxy:
    """A fused block under an FX trace: one call_module node, as if the tracer took it for a leaf,
    so that symbolic_trace, torchvision's create_feature_extractor and timm's FX features see the
    block as a whole (its checks would ask the proxies for values) and the traced module calls it."""
    tracer = x.tracer
    path = tracer.path_of_module(module)
    if not path:
        raise RuntimeError("a fused SE block cannot be the root of an FX trace: trace the model that holds it")
    return tracer.create_proxy("call_module", path, (x, *args), kwargs)


class FusedSEModule(nn.Module):
    """Drop-in for the classic SEModule, with the fused forward and backward.

    With the defaults, the same constructor and the same parameters as

        SEModule(channel, reduction=16):
            avg_pool = AdaptiveAvgPool2d(1)
            fc = Sequential(Linear(C, C // r, bias=False), ReLU(inplace=True),
                            Linear(C // r, C, bias=False), Sigmoid())

    so state_dicts (``fc.0.weight``, ``fc.2.weight``) load both ways. The fc Sequential is
    kept as the container of the parameters; forward does not call it.

    Keyword options give the variants of other code bases: ``rd_channels`` sets the hidden
    width directly (any width >= 1, instead of ``channel // reduction``), ``bias`` adds biases
    to both layers (``fc.0.bias``, ``fc.2.bias``), ``act`` is the inner activation ("relu" or
    "silu") and ``gate`` the outer one ("sigmoid" or "hard_sigmoid", torch's hardsigmoid).

    The subclasses (FusedConv2dSEModule, FusedEffectiveSEModule, FusedEcaModule) hold their
    parameters in other layers; every fused block is an instance of this class. ``form`` says
    which excitation a block runs; ``channel``, ``hidden`` and ``act`` are None where its form has
    no such thing (the FC form has no hidden layer; the conv form takes any channel count).
    """

    form = "mlp"

    def __init__(
        self,
        channel: int,
        reduction: int = 16,
        *,
        rd_channels: Optional[int] = None,
        bias: bool = False,
        act: str = "relu",
        gate: str = "sigmoid",
    ) -> None:
        super().__init__()
        _check_int("channel", channel, 1)
        if rd_channels is None:
            hidden = channel // _check_int("reduction", reduction, 1, channel)
        else:
            hidden = _check_int("rd_channels", rd_channels, 1)
        self._configure(channel, hidden, act, gate)
        self.reduction = reduction if rd_channels is None else None
        bias = _check_bool("bias", bias)
        self.fc = nn.Sequential(
            nn.Linear(channel, hidden, bias=bias),
            _ACT_MODULES[act](inplace=True),
            nn.Linear(hidden, channel, bias=bias),
            _GATE_MODULES[gate](),
        )

    @classmethod
    def from_sequential(cls, fc: nn.Sequential, *, act: str, gate: str) -> FusedSEModule:
        """A fused block around an existing classic ``fc = Sequential(Linear(C, hidden), act,
        Linear(hidden, C), gate)``, sharing its Parameters (the activation modules are kept as
        they are; ``act`` and ``gate`` name what they compute)."""
        if not (isinstance(fc, nn.Sequential) and len(fc) == 4):
            raise TypeError(f"fc must be an nn.Sequential of four modules; got {type(fc).__name__}")
        fc1, fc2 = fc[0], fc[2]
        if not (isinstance(fc1, nn.Linear) and isinstance(fc2, nn.Linear)):
            raise TypeError(f"fc[0] and fc[2] must be nn.Linear; got {type(fc1).__name__}, {type(fc2).__name__}")
        if (fc2.in_features, fc2.out_features) != (fc1.out_features, fc1.in_features):
            raise ValueError(
                f"fc[0] and fc[2] must map C -> hidden -> C; got {fc1.in_features} -> {fc1.out_features} and "
                f"{fc2.in_features} -> {fc2.out_features}"
            )
        module = cls.__new__(cls)
        # Not __init__: this block holds the given layers instead of new ones.
        nn.Module.__init__(module)
        module._configure(fc1.in_features, fc1.out_features, act, gate)
        module.reduction = None
        module.fc = fc
        return module

    def _configure(self, channel: Optional[int], hidden: Optional[int], act: Optional[str], gate: str) -> None:
        # channel, hidden and act are None where the form has no such thing (ESE: no hidden
        # layer; ECA: any channel count).
        self.channel = channel
        self._hidden = hidden
        self.act = None if act is None else _check_name("act", act, reference.ACTIVATIONS)
        self.gate = _check_name("gate", gate, reference.GATES)

    @property
    def hidden(self) -> Optional[int]:
        """The hidden width; None for the forms without a hidden layer."""
        return self._hidden

    def _excitation(self) -> tuple[Callable[..., torch.Tensor], tuple]:
        """The functional op of this block's form, with every argument positional, and its
        arguments between x and the tail (parameters, options)."""
        # the layers by position, without Module.__getattr__ or Sequential's indexing (each a
        # per-call cost on small inputs)
        fc1, _, fc2, _ = children(children(self)["fc"]).values()
        return _squeeze_excite, (*_weight_and_bias(fc1), *_weight_and_bias(fc2), self.act, self.gate)

    def forward(
        self,
        x: torch.Tensor,
        residual: Optional[torch.Tensor] = None,
        *,
        out_act: str = "identity",
        sample_scale: Optional[torch.Tensor] = None,
        lengths: Optional[torch.Tensor] = None,
    ) -> torch.Tensor:
        """x * s, or a residual block's tail fused into the same pass: out_act(x * s *
        sample_scale[b] + residual) (see fused_se.functional.squeeze_excite). x: (B, C, L),
        (B, C, H, W) or (B, C, D, H, W). lengths: (B,) counts of each sequence's valid positions,
        for a (B, C, L) x and the two-FC form only."""
        if isinstance(x, fx.Proxy):
            tail = {"out_act": out_act, "sample_scale": sample_scale, "lengths": lengths}
            return traced_as_leaf(self, x, (residual,), {k: v for k, v in tail.items() if v is not None})
        op, args = self._excitation()
        try:  # free where nothing raises
            if lengths is None:
                return op(x, *args, residual, out_act, sample_scale)
            if self.form != "mlp":
                raise ValueError(f"lengths is for the two-FC form only; this block's form is {self.form!r}")
            return op(x, *args, residual, out_act, sample_scale, lengths)
        except (TypeError, ValueError) as e:
            error = self._input_error(x)
            if error is None:
                raise
            raise error from e

    def _input_error(self, x: object) -> Optional[Exception]:
        """The error of an x that does not fit this block, in the block's own terms (its channel
        count, its parameters' dtype) rather than the functional form's arguments; None otherwise."""
        if not isinstance(x, torch.Tensor) or x.dim() not in RANKS:  # the functional form's error says it
            return None
        block = f"{type(self).__name__}({self.extra_repr()})"
        if self.channel is not None and x.shape[1] != self.channel:
            return ValueError(
                f"{block} was built with channel={self.channel}: x must have {self.channel} channels in dim 1; "
                f"got shape {tuple(x.shape)}"
            )
        for name, p in self.named_parameters():
            if not _dtype_pairs(x.dtype, p):
                return TypeError(
                    f"{block}'s parameter {name} is {p.dtype} but x is {x.dtype}: the parameters must have x's "
                    "dtype, or be float32 with a float16 or bfloat16 x (autocast's convention); "
                    f"cast one of them (e.g. module.to({x.dtype}))"
                )
        return None

    __prepare_scriptable__ = refuse_script

    def describe(self) -> str:
        """One line for conversion reports: the block's sizes and choices."""
        return f"C={self.channel} hidden={self.hidden} act={self.act} gate={self.gate}"

    def extra_repr(self) -> str:
        reduction = "" if self.reduction is None else f", reduction={self.reduction}"
        return f"channel={self.channel}{reduction}, hidden={self.hidden}, act={self.act}, gate={self.gate}"


def descendant(module: nn.Module, parts: tuple[str, ...]) -> nn.Module:
    """module.get_submodule(".".join(parts)) through the children's dicts (runtime.modules): a
    fused block's per-call lookup of its layers."""
    for part in parts:
        module = children(module)[part]
    return module


_POINTWISE_CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)


def _check_pointwise_conv(name: str, conv: nn.Module, in_channels: int, out_channels: int) -> None:
    if not isinstance(conv, _POINTWISE_CONVS):
        raise TypeError(f"{name} must be an nn.Conv1d, nn.Conv2d or nn.Conv3d; got {type(conv).__name__}")
    ones = (1,) * len(conv.kernel_size)
    # "same" pads nothing around a kernel of one tap, whatever the padding mode
    if conv.kernel_size != ones or conv.groups != 1 or conv.padding not in ((0,) * len(ones), "valid", "same"):
        raise ValueError(
            f"{name} must be a pointwise (1x1) conv without padding or groups; got kernel_size={conv.kernel_size}, "
            f"padding={conv.padding}, groups={conv.groups}"
        )
    if (conv.in_channels, conv.out_channels) != (in_channels, out_channels):
        raise ValueError(
            f"{name} must map {in_channels} to {out_channels} channels; got {conv.in_channels} to {conv.out_channels}"
        )


class FusedConv2dSEModule(FusedSEModule):
    """The two-layer SE with 1x1 Conv2d layers, as timm's SEModule and SqueezeExcite and
    torchvision's SqueezeExcitation hold them (``from_layers`` also takes pointwise Conv1d and
    Conv3d layers, as the SE blocks of sequence and volume models hold them).

    ``names`` are the attributes of the two layers: ("fc1", "fc2") for timm's SEModule and
    torchvision, ("conv_reduce", "conv_expand") for timm's EfficientNet blocks. Their weights
    keep the conv shapes ((hidden, C, 1, 1), (C, hidden, 1, 1)), which the kernels take as they are
    (their first two strides: no view of a parameter, an autograd node, a call).
    """

    def __init__(
        self,
        channels: int,
        rd_channels: int,
        *,
        bias: bool = True,
        act: str = "relu",
        gate: str = "sigmoid",
        names: tuple[str, str] = ("fc1", "fc2"),
    ) -> None:
        channels = _check_int("channels", channels, 1)
        rd_channels = _check_int("rd_channels", rd_channels, 1)
        bias = _check_bool("bias", bias)
        self._init_from_layers(
            nn.Conv2d(channels, rd_channels, 1, bias=bias),
            nn.Conv2d(rd_channels, channels, 1, bias=bias),
            act,
            gate,
            names,
        )

    @classmethod
    def from_layers(
        cls, reduce: nn.Conv2d, expand: nn.Conv2d, *, act: str, gate: str, names: tuple[str, str] = ("fc1", "fc2")
    ) -> FusedConv2dSEModule:
        """A fused block around two existing 1x1 convs: their Parameters are shared, not copied."""
        module = cls.__new__(cls)
        module._init_from_layers(reduce, expand, act, gate, names)
        return module

    def _init_from_layers(self, reduce: nn.Conv2d, expand: nn.Conv2d, act: str, gate: str, names) -> None:
        # Not FusedSEModule.__init__: this block holds the given layers, not a Linear fc.
        nn.Module.__init__(self)
        if not (isinstance(names, tuple) and len(names) == 2 and all(isinstance(n, str) for n in names)):
            raise TypeError(f"names must be a tuple of two attribute names; got {names!r}")
        channels = getattr(reduce, "in_channels", None)
        hidden = getattr(reduce, "out_channels", None)
        _check_pointwise_conv(names[0], reduce, channels, hidden)
        _check_pointwise_conv(names[1], expand, hidden, channels)
        self._configure(channels, hidden, act, gate)
        self.reduction = None
        self._names = names
        setattr(self, names[0], reduce)
        setattr(self, names[1], expand)

    def _excitation(self) -> tuple[Callable[..., torch.Tensor], tuple]:
        own, (reduce, expand) = children(self), self._names
        return _squeeze_excite, (*_weight_and_bias(own[reduce]), *_weight_and_bias(own[expand]), self.act, self.gate)


class FusedEffectiveSEModule(FusedSEModule):
    """Effective SE (VoVNet's ESE): one C x C 1x1 conv ``fc`` and a gate, no hidden layer,
    as timm's EffectiveSEModule holds it."""

    form = "fc"

    def __init__(self, channels: int, *, bias: bool = True, gate: str = "hard_sigmoid") -> None:
        channels = _check_int("channels", channels, 1)
        self._init_from_layer(nn.Conv2d(channels, channels, 1, bias=_check_bool("bias", bias)), gate)

    @classmethod
    def from_layer(cls, fc: nn.Conv2d, *, gate: str) -> FusedEffectiveSEModule:
        """A fused block around an existing C x C 1x1 conv, sharing its Parameters."""
        module = cls.__new__(cls)
        module._init_from_layer(fc, gate)
        return module

    def _init_from_layer(self, fc: nn.Conv2d, gate: str) -> None:
        # Not FusedSEModule.__init__: this block holds the given layer, not a Linear fc.
        nn.Module.__init__(self)
        channels = getattr(fc, "in_channels", None)
        _check_pointwise_conv("fc", fc, channels, channels)
        self._configure(channels, None, None, gate)
        self.reduction = None
        self.fc = fc

    def _excitation(self) -> tuple[Callable[..., torch.Tensor], tuple]:
        return _effective_squeeze_excite, (*_weight_and_bias(children(self)["fc"]), self.gate)

    def describe(self) -> str:
        return f"C={self.channel} gate={self.gate}"

    def extra_repr(self) -> str:
        return f"channel={self.channel}, gate={self.gate}"


class FusedEcaModule(FusedSEModule):
    """Efficient channel attention (ECA): a k-tap Conv1d ``conv`` across the channels of the
    pooled vector, then the gate; ``circular=True`` pads circularly (timm's CecaModule).

    Works for any channel count; ``channel`` is not fixed by the parameters.
    """

    form = "conv"

    def __init__(self, kernel_size: int = 3, *, circular: bool = False, bias: bool = False, gate: str = "sigmoid"):
        k = _check_int("kernel_size", kernel_size, 1)
        if k % 2 == 0:
            raise ValueError(f"kernel_size must be odd (padding (k - 1) // 2 on each side); got {k}")
        circular = _check_bool("circular", circular)
        pad = 0 if circular else (k - 1) // 2
        self._init_from_layer(nn.Conv1d(1, 1, k, padding=pad, bias=_check_bool("bias", bias)), circular, gate)

    @classmethod
    def from_layer(cls, conv: nn.Conv1d, *, circular: bool, gate: str) -> FusedEcaModule:
        """A fused block around an existing Conv1d(1, 1, k), sharing its Parameters. With
        ``circular`` the conv itself has no padding (the input is padded circularly before it);
        without, it pads (k - 1) // 2 zeros on each side."""
        module = cls.__new__(cls)
        module._init_from_layer(conv, circular, gate)
        return module

    def _init_from_layer(self, conv: nn.Conv1d, circular: bool, gate: str) -> None:
        # Not FusedSEModule.__init__: this block holds the given layer, not a Linear fc.
        nn.Module.__init__(self)
        if not isinstance(conv, nn.Conv1d):
            raise TypeError(f"conv must be an nn.Conv1d; got {type(conv).__name__}")
        k = conv.kernel_size[0]
        pad = 0 if circular else (k - 1) // 2
        if (conv.in_channels, conv.out_channels, conv.groups, conv.stride, conv.dilation) != (1, 1, 1, (1,), (1,)):
            raise ValueError("conv must be a Conv1d(1, 1, k) with stride 1, dilation 1 and one group")
        if k % 2 == 0 or conv.padding != (pad,) or conv.padding_mode != "zeros":
            raise ValueError(f"conv must have an odd k and zero padding {pad}; got k={k}, padding={conv.padding}")
        self._configure(None, None, None, gate)
        self.reduction = None
        self.circular = circular
        self.conv = conv

    @property
    def kernel_size(self) -> int:
        return self.conv.kernel_size[0]

    def _excitation(self) -> tuple[Callable[..., torch.Tensor], tuple]:
        return _efficient_channel_attention, (*_weight_and_bias(children(self)["conv"]), self.circular, self.gate)

    def describe(self) -> str:
        return f"k={self.kernel_size} {'circular' if self.circular else 'zero padding'} gate={self.gate}"

    def extra_repr(self) -> str:
        return f"kernel_size={self.kernel_size}, circular={self.circular}, gate={self.gate}"


_GLOBAL_POOLS = (nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d)


def _layer_name(module: nn.Module, names: dict[type, str], role: str) -> str:
    name = names.get(type(module))
    if name is None:
        raise ValueError(f"{role} must be one of {', '.join(c.__name__ for c in names)}; got {type(module).__name__}")
    return name


class FusedSCSEModule(FusedSEModule):
    """scSE, concurrent spatial and channel squeeze-and-excitation, fused: the drop-in for
    segmentation_models_pytorch's SCSEModule(in_channels, reduction=16),

        cSE = Sequential(AdaptiveAvgPool2d(1), Conv2d(C, C // r, 1), ReLU(inplace=True),
                         Conv2d(C // r, C, 1), Sigmoid())
        sSE = Sequential(Conv2d(C, 1, 1), Sigmoid())
        forward(x) = x * cSE(x) + x * sSE(x)

    with the same layers, so state_dicts (``cSE.1.weight``, ``cSE.1.bias``, ``cSE.3.weight``,
    ``cSE.3.bias``, ``sSE.0.weight``, ``sSE.0.bias``) load both ways. The Sequentials are kept as
    the containers of the parameters; forward does not call them. ``act`` ("relu" or "silu") and
    ``gate`` ("sigmoid" or "hard_sigmoid") are the channel gate's; the spatial gate is a sigmoid.
    ``from_module`` makes one around an existing SCSEModule's layers (shared Parameters).
    x: (B, C, L), (B, C, H, W) or (B, C, D, H, W) (fused_se.functional.spatial_channel_squeeze_excite).
    """

    form = "scse"

    def __init__(self, channel: int, reduction: int = 16, *, act: str = "relu", gate: str = "sigmoid") -> None:
        channel = _check_int("channel", channel, 1)
        hidden = channel // _check_int("reduction", reduction, 1, channel)
        act = _check_name("act", act, reference.ACTIVATIONS)
        gate = _check_name("gate", gate, reference.GATES)
        cse = nn.Sequential(
            nn.AdaptiveAvgPool2d(1),
            nn.Conv2d(channel, hidden, 1),
            _ACT_MODULES[act](inplace=True),
            nn.Conv2d(hidden, channel, 1),
            _GATE_MODULES[gate](),
        )
        self._init_from_layers(cse, nn.Sequential(nn.Conv2d(channel, 1, 1), nn.Sigmoid()))
        self.reduction = reduction

    @classmethod
    def from_module(
        cls, module: nn.Module, *, act: Optional[str] = None, gate: Optional[str] = None
    ) -> FusedSCSEModule:
        """A fused block around an existing SCSEModule's ``cSE`` and ``sSE`` Sequentials, sharing
        their Parameters (and their modules: the state_dict keeps its keys and values). ``act`` and
        ``gate`` name what cSE's activation and gate compute; by default they are read from their
        classes (nn.ReLU or nn.SiLU; nn.Sigmoid or nn.Hardsigmoid)."""
        cse, sse = getattr(module, "cSE", None), getattr(module, "sSE", None)
        if cse is None or sse is None:
            raise TypeError(f"module must hold cSE and sSE Sequentials (an SCSEModule); got {type(module).__name__}")
        fused = cls.__new__(cls)
        fused._init_from_layers(cse, sse, act, gate)
        return fused

    def _init_from_layers(
        self, cse: nn.Sequential, sse: nn.Sequential, act_name: Optional[str] = None, gate_name: Optional[str] = None
    ) -> None:
        # Not FusedSEModule.__init__: this block holds the two Sequentials, not a Linear fc.
        nn.Module.__init__(self)
        if not (isinstance(cse, nn.Sequential) and len(cse) == 5):
            raise TypeError("cSE must be an nn.Sequential of five modules (pool, conv, act, conv, gate)")
        if not (isinstance(sse, nn.Sequential) and len(sse) == 2):
            raise TypeError("sSE must be an nn.Sequential of two modules (conv, sigmoid)")
        pool, reduce, act, expand, gate = cse
        size = getattr(pool, "output_size", None)
        if not (isinstance(pool, _GLOBAL_POOLS) and (size == 1 or (isinstance(size, tuple) and set(size) == {1}))):
            raise ValueError(f"cSE.0 must be a global average pool (AdaptiveAvgPool2d(1)); got {pool!r}")
        channels, hidden = getattr(reduce, "in_channels", None), getattr(reduce, "out_channels", None)
        _check_pointwise_conv("cSE.1", reduce, channels, hidden)
        _check_pointwise_conv("cSE.3", expand, hidden, channels)
        _check_pointwise_conv("sSE.0", sse[0], channels, 1)
        if act_name is None:
            act_name = _layer_name(act, {m: n for n, m in _ACT_MODULES.items()}, "cSE.2")
        if gate_name is None:
            gate_name = _layer_name(gate, {m: n for n, m in _GATE_MODULES.items()}, "cSE.4")
        _layer_name(sse[1], {nn.Sigmoid: "sigmoid"}, "sSE.1")
        self._configure(channels, hidden, act_name, gate_name)
        self.reduction = None
        self.cSE = cse
        self.sSE = sse

    def _excitation(self) -> tuple[Callable[..., torch.Tensor], tuple]:
        own = children(self)
        _, reduce, _, expand, _ = children(own["cSE"]).values()
        spatial = children(own["sSE"])["0"]
        params = (*_weight_and_bias(reduce), *_weight_and_bias(expand))
        ws, bs = _weight_and_bias(spatial)
        # FusedSEModule.forward calls it with the residual tail's arguments, which scSE refuses but the defaults
        return _spatial_channel_squeeze_excite, (*params, ws, bs, self.act, self.gate)

    def describe(self) -> str:
        return super().describe() + " + spatial gate"
