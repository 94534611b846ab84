"""The fused SE under PyTorch's distributed engines: DDP, FSDP2 (fully_shard) and activation
checkpointing.

DDP and FSDP2 run two processes on the gloo backend over the loopback. Each trains a converted
timm SE-ResNet on its shard of a fixed global batch; the parameters after the steps must be the
same on both ranks and match one process training the unconverted model on the whole batch.
Batch norm is frozen (eval mode) so that the shards' gradients add up to the whole batch's.

The processes that run the kernels do so through the Triton interpreter on the CPU (the
children are started with TRITON_INTERPRET=1 whatever the machine). torch.compile runs with the
interpreter off (it cannot trace interpreted kernels), on the CPU path in torch ops, and with
the aot_eager backend by default: Inductor's C++ code generation for this model takes about 90 s
on two cores, past this file's time budget. FUSED_SE_TEST_COMPILE_BACKEND=inductor runs it.
"""

from __future__ import annotations

import collections
import copy
import os
import socket
import warnings
from datetime import timedelta
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from timm.layers.squeeze_excite import SEModule
from timm.models.resnet import BasicBlock, ResNet
from torch import nn
from torch.utils.checkpoint import checkpoint

import fused_se

WORLD_SIZE = 2
GLOBAL_BATCH = 4
IMAGE_SIZE = 32
NUM_CLASSES = 10
STEPS = 3
LR = 0.05
COMPILE_BACKEND = os.environ.get("FUSED_SE_TEST_COMPILE_BACKEND", "aot_eager")

# Each run: its name, the engine, and the engine's options. One spawn runs them in sequence.
INTERPRETED_RUNS = {
    "ddp": ("ddp", {}),
    "ddp_gradient_as_bucket_view": ("ddp", {"gradient_as_bucket_view": True}),
    "ddp_static_graph": ("ddp", {"static_graph": True}),
    "ddp_channels_last": ("ddp", {"channels_last": True}),
    "fsdp2": ("fsdp2", {}),
    "fsdp2_bf16": ("fsdp2", {"bf16": True}),
    "fsdp2_bf16_unconverted": ("fsdp2", {"bf16": True, "convert": False}),
}
COMPILED_RUNS = {"ddp_compile": ("ddp", {"compile": True})}


# --------------------------------------------------------------------------------------
# the model, the data and the training loop, the same in every process
# --------------------------------------------------------------------------------------


def _se_resnet() -> ResNet:
    """A small timm SE-ResNet: seresnet18's classes (BasicBlock, timm's SEModule with 1x1 convs
    and biases), one block per stage, narrow stages. zero_init_last=False: the default zeroes the
    norm before each SE block, which would zero the SE's input."""
    torch.manual_seed(0)
    model = ResNet(
        BasicBlock,
        layers=(1, 1, 1, 1),
        channels=(16, 32, 64, 128),
        stem_width=16,
        num_classes=NUM_CLASSES,
        zero_init_last=False,
        block_args={"attn_layer": "se"},
    )
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.eval()  # frozen statistics: a per-sample op, so the ranks' shards add up to the whole batch
    return model


def _global_batch(dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(GLOBAL_BATCH, 3, IMAGE_SIZE, IMAGE_SIZE, generator=gen, dtype=dtype)
    y = torch.randint(0, NUM_CLASSES, (GLOBAL_BATCH,), generator=gen)
    return x, y


def _num_se_blocks() -> int:
    return sum(isinstance(m, SEModule) for m in _se_resnet().modules())


def _fused_modules(model: nn.Module) -> list[fused_se.FusedSEModule]:
    return [m for m in model.modules() if isinstance(m, fused_se.FusedSEModule)]


def _train(model: nn.Module, module: nn.Module, x: torch.Tensor, y: torch.Tensor) -> dict:
    """STEPS of SGD with momentum; model is what runs (a wrapper of module, or module itself).

    Returns the kernels launched in each step's forward and backward, and the parameters that
    got no gradient in some step."""
    from fused_se.kernels import record_launches

    optimizer = torch.optim.SGD(model.parameters(), lr=LR, momentum=0.9)
    launches: dict[str, list[list[str]]] = {"forward": [], "backward": []}
    missing_grads: set[str] = set()
    for _ in range(STEPS):
        optimizer.zero_grad(set_to_none=True)
        with record_launches() as forward:
            loss = F.cross_entropy(model(x), y)
        with record_launches() as backward:
            loss.backward()
        launches["forward"].append(forward)
        launches["backward"].append(backward)
        missing_grads.update(name for name, p in module.named_parameters() if p.grad is None)
        optimizer.step()
    return {"launches": launches, "missing_grads": sorted(missing_grads)}


def _train_single_process(dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """The reference: the unconverted model (timm's own SE blocks), one process, the whole batch."""
    model = _se_resnet().to(dtype)
    _train(model, model, *_global_batch(dtype))
    return {name: p.detach().clone() for name, p in model.named_parameters()}


# --------------------------------------------------------------------------------------
# the processes
# --------------------------------------------------------------------------------------


def _run_ddp(rank: int, *, compile: bool = False, channels_last: bool = False, **ddp_options) -> dict:
    from torch.nn.parallel import DistributedDataParallel as DDP

    fmt = torch.channels_last if channels_last else torch.contiguous_format
    module = fused_se.convert(_se_resnet()).double().to(memory_format=fmt)
    fused = len(_fused_modules(module))
    model = DDP(module, **ddp_options)  # find_unused_parameters stays False
    if compile:
        torch._dynamo.reset()
        torch._dynamo.utils.counters.clear()
        model = torch.compile(model, backend=COMPILE_BACKEND)
    x, y = _global_batch(torch.float64)
    x = x.chunk(WORLD_SIZE)[rank].contiguous(memory_format=fmt)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = _train(model, module, x, y.chunk(WORLD_SIZE)[rank])
    result["warnings"] = sorted({str(w.message).splitlines()[0] for w in caught})
    if compile:
        counters = torch._dynamo.utils.counters
        result["graphs"] = counters["stats"]["unique_graphs"]
        result["graph_breaks"] = sorted(counters["graph_break"])
    params = {name: p.detach().clone() for name, p in module.named_parameters()}
    return {**result, "fused": fused, "params": params}


def _run_fsdp2(rank: int, *, bf16: bool = False, convert: bool = True) -> dict:
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    model = fused_se.convert(_se_resnet()) if convert else _se_resnet()
    fused = _fused_modules(model)
    if bf16:
        policy = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
        # FSDP2 casts parameters, not buffers, and batch_norm on the CPU takes bf16 weights only with
        # bf16 running statistics ("expected scalar type BFloat16 but found Float"); fp32 weights and
        # statistics with a bf16 input are fine. So each norm is its own group with fp32 parameters,
        # taking its input as it comes (FSDP1's MixedPrecision does this by default for _BatchNorm).
        norm_policy = MixedPrecisionPolicy(param_dtype=torch.float32, cast_forward_inputs=False)
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                fully_shard(m, mp_policy=norm_policy)
    else:
        model = model.double()
        policy = MixedPrecisionPolicy()
    for stage in (model.layer1, model.layer2, model.layer3, model.layer4):
        fully_shard(stage, mp_policy=policy)
    fully_shard(model, mp_policy=policy)

    se_input_dtypes: set[str] = set()
    for m in fused:
        m.register_forward_pre_hook(lambda _, args: se_input_dtypes.add(str(args[0].dtype)))
    x, y = _global_batch(torch.float32 if bf16 else torch.float64)
    result = _train(model, model, x.chunk(WORLD_SIZE)[rank], y.chunk(WORLD_SIZE)[rank])
    params = {name: p.full_tensor().detach().clone() for name, p in model.named_parameters()}
    return {**result, "fused": len(fused), "se_input_dtypes": sorted(se_input_dtypes), "params": params}


_ENGINES = {"ddp": _run_ddp, "fsdp2": _run_fsdp2}


def _worker(rank: int, port: int, out_dir: str, runs: dict) -> None:
    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(port)
    torch.set_num_threads(1)  # the ranks share the machine's cores
    from fused_se.runtime import launch

    launch.POISON_OUTPUTS = True  # as the test session does: a buffer a kernel skips stays NaN
    dist.init_process_group("gloo", rank=rank, world_size=WORLD_SIZE, timeout=timedelta(seconds=120))
    try:
        probe = torch.empty(1, 1, 1, 1)
        results = {"backend": fused_se.backend_for(probe)}
        for name, (engine, options) in runs.items():
            results[name] = _ENGINES[engine](rank, **options)
        torch.save(results, Path(out_dir) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _spawn(out_dir: Path, runs: dict, triton_interpret: str) -> list[dict]:
    """Runs `runs` in WORLD_SIZE processes; the results of each rank, in rank order."""
    with pytest.MonkeyPatch.context() as mp_env:
        # Read by triton when the children import it; spawn starts them with this environment.
        mp_env.setenv("TRITON_INTERPRET", triton_interpret)
        mp_env.delenv("FUSED_SE_BACKEND", raising=False)
        mp.spawn(_worker, args=(_free_port(), str(out_dir), runs), nprocs=WORLD_SIZE, join=True)
    return [torch.load(out_dir / f"rank{r}.pt", weights_only=True) for r in range(WORLD_SIZE)]


# --------------------------------------------------------------------------------------
# checks
# --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def interpreted_runs(tmp_path_factory) -> list[dict]:
    return _spawn(tmp_path_factory.mktemp("interpreted"), INTERPRETED_RUNS, triton_interpret="1")


@pytest.fixture(scope="module")
def single_process() -> dict[torch.dtype, dict[str, torch.Tensor]]:
    return {dtype: _train_single_process(dtype) for dtype in (torch.float64, torch.float32)}


@pytest.fixture(scope="module")
def initial_params() -> dict[str, torch.Tensor]:
    return {name: p.detach().clone() for name, p in _se_resnet().named_parameters()}


def _check_fused_and_trained(ranks: list[dict], name: str, kernels: bool) -> None:
    for rank, results in enumerate(ranks):
        run = results[name]
        assert run["fused"] == _num_se_blocks(), f"rank {rank}: {run['fused']} fused SE blocks in the model"
        assert run["missing_grads"] == [], f"rank {rank}: parameters without a gradient: {run['missing_grads']}"
        for phase, steps in run["launches"].items():
            if kernels:
                assert all(steps), f"rank {rank}: a {phase} pass launched no kernel: {steps}"
            else:
                assert not any(steps), f"rank {rank}: kernels launched in the {phase} pass: {steps}"


def _check_same_on_every_rank(ranks: list[dict], name: str) -> None:
    first = ranks[0][name]["params"]
    for rank, results in enumerate(ranks[1:], start=1):
        params = results[name]["params"]
        assert params.keys() == first.keys()
        differ = [n for n in first if not torch.equal(params[n], first[n])]
        assert not differ, f"rank {rank}'s parameters differ from rank 0's: {differ}"


def _check_matches(params: dict, reference: dict, initial: dict) -> None:
    assert params.keys() == reference.keys()
    se_params = [n for n in reference if ".se." in n]
    assert se_params and all(not torch.equal(reference[n], initial[n].to(reference[n])) for n in se_params)
    for n, ref in reference.items():
        torch.testing.assert_close(params[n], ref, rtol=1e-9, atol=1e-12, msg=lambda m, n=n: f"{n}: {m}")


@pytest.mark.parametrize("name", ["ddp", "ddp_gradient_as_bucket_view", "ddp_static_graph", "ddp_channels_last"])
def test_ddp_matches_single_process(interpreted_runs, single_process, initial_params, name):
    assert all(r["backend"] == "triton" for r in interpreted_runs)
    _check_fused_and_trained(interpreted_runs, name, kernels=True)
    _check_same_on_every_rank(interpreted_runs, name)
    _check_matches(interpreted_runs[0][name]["params"], single_process[torch.float64], initial_params)


def test_ddp_channels_last_gradient_layout(interpreted_runs):
    """The gradients of a channels_last model keep their parameters' strides, as DDP's buckets expect."""
    for rank, results in enumerate(interpreted_runs):
        layout_warnings = [w for w in results["ddp_channels_last"]["warnings"] if "bucket view strides" in w]
        assert not layout_warnings, f"rank {rank}: {layout_warnings}"


def test_ddp_compile_matches_single_process(tmp_path, single_process, initial_params):
    ranks = _spawn(tmp_path, COMPILED_RUNS, triton_interpret="0")
    assert all(r["backend"] != "triton" for r in ranks)
    _check_fused_and_trained(ranks, "ddp_compile", kernels=False)
    _check_same_on_every_rank(ranks, "ddp_compile")
    _check_matches(ranks[0]["ddp_compile"]["params"], single_process[torch.float64], initial_params)
    # DDP's own forward is not traced; the model below it, SE blocks included, is one graph.
    run = ranks[0]["ddp_compile"]
    assert run["graphs"] == 1, f"{run['graphs']} graphs; graph breaks: {run['graph_breaks']}"


def test_fsdp2_matches_single_process(interpreted_runs, single_process, initial_params):
    _check_fused_and_trained(interpreted_runs, "fsdp2", kernels=True)
    _check_same_on_every_rank(interpreted_runs, "fsdp2")
    _check_matches(interpreted_runs[0]["fsdp2"]["params"], single_process[torch.float64], initial_params)
    assert interpreted_runs[0]["fsdp2"]["se_input_dtypes"] == ["torch.float64"]


def test_fsdp2_bf16_mixed_precision(interpreted_runs, single_process, initial_params):
    """bf16 parameters and compute, fp32 gradient reduction: the fused model's updates are as
    close to fp32 training as the unconverted model's under the same policy (the parity suite's
    rule: at most twice eager PyTorch's own error in that dtype, plus a small slack)."""
    _check_fused_and_trained(interpreted_runs, "fsdp2_bf16", kernels=True)
    _check_same_on_every_rank(interpreted_runs, "fsdp2_bf16")
    run, eager = interpreted_runs[0]["fsdp2_bf16"], interpreted_runs[0]["fsdp2_bf16_unconverted"]
    assert run["se_input_dtypes"] == ["torch.bfloat16"]
    reference = single_process[torch.float32]

    def update_error(params: dict, n: str) -> float:
        # Of the updates, not of the parameters, which hide them.
        assert params[n].dtype == torch.float32  # the sharded parameters stay fp32
        ref_update = reference[n] - initial_params[n]
        return ((params[n] - initial_params[n] - ref_update).norm() / ref_update.norm()).item()

    for n in reference:
        err, eager_err = update_error(run["params"], n), update_error(eager["params"], n)
        assert err <= 2 * eager_err + 0.01, f"{n}: bf16 update off by {err:.3g} of fp32's; eager bf16: {eager_err:.3g}"


# --------------------------------------------------------------------------------------
# activation checkpointing, one process
# --------------------------------------------------------------------------------------


class _Checkpointed(nn.Module):
    def __init__(self, block: nn.Module, use_reentrant: bool) -> None:
        super().__init__()
        self.block = block
        self.use_reentrant = use_reentrant

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return checkpoint(self.block, x, use_reentrant=self.use_reentrant)


def _forward_backward(model: nn.Module, params: dict, x: torch.Tensor, g: torch.Tensor):
    from fused_se.kernels import record_launches

    x = x.detach().clone().requires_grad_()
    with record_launches() as forward:
        out = model(x)
    with record_launches() as backward:
        out.backward(g)  # not autograd.grad: the reentrant checkpoint supports only backward()
    grads = {"input": x.grad, **{n: p.grad for n, p in params.items()}}
    return out.detach(), grads, collections.Counter(forward), collections.Counter(backward)


@pytest.mark.parametrize("use_reentrant", [True, False])
def test_activation_checkpointing(device, use_reentrant):
    # Batch norm in training mode: the recomputed forward normalises with the same batch statistics.
    model = fused_se.convert(_se_resnet()).double().to(device).train()
    plain, ckpt = model, copy.deepcopy(model)
    for stage in (ckpt.layer1, ckpt.layer2, ckpt.layer3, ckpt.layer4):
        for i, block in enumerate(stage):
            stage[i] = _Checkpointed(block, use_reentrant)
    wrapped = [f for m in ckpt.modules() if isinstance(m, _Checkpointed) for f in _fused_modules(m)]
    assert len(_fused_modules(plain)) == len(wrapped) == _num_se_blocks()

    x, _ = _global_batch(torch.float64)
    x = x.to(device)
    g = torch.randn(GLOBAL_BATCH, NUM_CLASSES, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    g = g.to(device)
    out, grads, fwd, bwd = _forward_backward(plain, dict(plain.named_parameters()), x, g)
    # Under the names of the unwrapped model.
    ckpt_params = {n.replace(".block.", "."): p for n, p in ckpt.named_parameters()}
    ckpt_out, ckpt_grads, ckpt_fwd, ckpt_bwd = _forward_backward(ckpt, ckpt_params, x, g)

    assert fwd and bwd, "the kernels did not run"
    assert ckpt_fwd == fwd
    assert ckpt_bwd == fwd + bwd, "the backward did not rerun the forward kernels of every SE block"
    torch.testing.assert_close(ckpt_out, out, rtol=1e-12, atol=1e-12)
    assert grads.keys() == ckpt_grads.keys() and all(v is not None for v in ckpt_grads.values())
    for n, grad in grads.items():
        torch.testing.assert_close(ckpt_grads[n], grad, rtol=1e-12, atol=1e-12, msg=lambda m, n=n: f"{n}: {m}")
