"""--host timed as b694120's harness timed it: launches stubbed by an intercepting binder, under
which replays go through launch.launch, not straight to the (stand-ins for) compiled kernels."""

import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager

from fused_se import _dispatch
from fused_se.kernels import sync
from fused_se.perf import cli, host
from fused_se.runtime.launch import intercepted


@contextmanager
def stubbed_launches() -> Iterator[list]:
    names: list = []
    stubs: dict = {}  # id(kernel) -> its stub, made once

    def stub(kernel, grid, inner):
        launch = stubs.get(id(kernel))
        if launch is None:
            name = kernel.__name__
            launch = stubs[id(kernel)] = lambda *args, **kwargs: names.append(name)
        return launch

    saved = _dispatch.interpreter_enabled, sync.INTERPRETED
    saved_check = os.environ.pop(sync.CHECK_ENV, None)
    _dispatch.interpreter_enabled, sync.INTERPRETED = (lambda: True), False
    try:
        with intercepted(stub):
            yield names
    finally:
        _dispatch.interpreter_enabled, sync.INTERPRETED = saved
        if saved_check is not None:
            os.environ[sync.CHECK_ENV] = saved_check


host.stubbed_launches = stubbed_launches
sys.exit(cli.main(["--host", *sys.argv[1:]]))
