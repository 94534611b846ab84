"""Forward+backward of one ECA block (timm's EcaModule of ecaresnet26t's first stage, or the
FusedEcaModule convert puts in its place, launches stubbed) on a (1, 256, 1, 1) input, N times
after 20 warm-up calls. Run under callgrind twice, with N = 0 and N = 3000: the difference of the
two instruction totals over 3000 is the instructions of one call (a deterministic count, not time).

    python instructions.py eager|fused N
"""

import copy
import sys

import timm
import torch

import fused_se
from fused_se.perf.host import _call, stubbed_launches

torch.set_num_threads(1)
which, n = sys.argv[1], int(sys.argv[2])
torch.manual_seed(0)
model = timm.create_model("ecaresnet26t", pretrained=False)
if which == "fused":
    model = fused_se.convert(copy.deepcopy(model))
block = model.train().layer1[0].se
x = torch.randn(1, 256, 1, 1)
with stubbed_launches() as names:
    fwd_bwd = _call(block, x, "fwd+bwd")
    for _ in range(20):
        fwd_bwd()
    for i in range(n):
        fwd_bwd()
        if i % 256 == 0:
            names.clear()  # the stand-ins' log, kept short
