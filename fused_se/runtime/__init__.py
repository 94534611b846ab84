"""The host-speed seam: everything fused_se does to save host time per call, and the only code that
reaches private APIs of torch, triton or Python.

    env.py      getenv, getenvs, state_reader: the switches' reads (FUSED_SE_*) without os.environ.get's
                KeyError
    launch.py   launch(kernel, grid): the launch path, the launch cache, launch records, buffers
                (empty, zeros, empty_like), and `intercepted`, the one hook for tools
    replay.py   Replayed(body): a plain call's launches recorded per signature and redone
    trace.py    tracing, plain_eager, is_fake: what may trace or intercept a call (torch only)
    eager.py    on_real_tensors, replayed_body: the plain-eager route's bodies
    modules.py  children, weight_and_bias: a block's layers and weights without Module.__getattr__
    checks.py   the checks below, run at import; a failed one warns once and its public path runs

Kernels call launch and the buffers; ops (fused_se/op_spec.py) call eager and trace; nothing
else here is for them. Deleting the seam means: launch = kernel[grid], buffers = torch.empty,
getenv = os.environ.get, plain_eager = False (the custom op always), which is what
FUSED_SE_PRIVATE_APIS=0 runs. docs/DESIGN.md ("Dispatch") says what each part saves.

Private APIs used, checked on torch 2.14.1 / triton 3.8 and torch 2.11 / triton 3.6 (CI's second
stack), and how each is checked at import (checks.py; tests/api/test_runtime.py):

| API | used by | check | public path where the check fails |
|---|---|---|---|
| CompiledKernel.run(g0, g1, g2, stream, function, packed_metadata, launch_metadata, enter_hook, exit_hook, *params), its `function` and `packed_metadata` | launch cache, direct replays | triton's JIT calls its compiled kernels in those words (JITFunction.run's source); CompiledKernel has `run` and sets both attributes; the CUDA launcher's `__call__` (triton/backends/nvidia/driver.py, read as text) takes (gridX, gridY, gridZ, stream, function, ...) | `kernel[grid](...)` |
| an int address for a pointer parameter | direct replays (scratch carved from one buffer) | the CUDA launcher's pointer extractor takes an int (its error text, in driver.c or driver.py) | as above |
| JITFunction.params (`.name`, `.default`), `.pre_run_hooks`; knobs.runtime.launch_enter_hook / launch_exit_hook (`.calls`) | launch cache, direct replays | on a JITFunction made here | as above |
| torch._C._cuda_getCurrentRawStream | launch cache, direct replays | callable | as above |
| torch._C._len_torch_dispatch_stack, _are_functorch_transforms_active, _is_torch_function_mode_enabled, _is_tracing | plain_eager, tracing | callable, and say "nothing" outside any mode | the custom op on every call; launches as if traced |
| torch._library.triton.set_wrap_triton_enabled, is_wrap_triton_enabled | on_real_tensors, launch under tracing | turning wrapping off is seen and undone | no toggle (plain calls never trace); launches under tracing always wrapped |
| torch._subclasses.fake_tensor.is_fake | the ops' choice of kernels vs twins | says False for a real tensor | fake = any tensor subclass |
| Tensor._version | replays (only launches wrote a buffer or an input) | an in-place op bumps it | no replays: every plain call runs its body |
| os.environ._data, encodekey, decodevalue | getenv, getenvs, state_reader | _data a dict, the codecs callable, a name read both ways agrees | os.environ.get |
| nn.Module._modules, _parameters | the fused blocks' layers and weights per call (modules.py) | dicts that named_children and named_parameters(recurse=False) read alike | named_children as a new dict; layer.weight and layer.bias |
"""
