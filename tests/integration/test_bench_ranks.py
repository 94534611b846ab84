"""fused-se-bench on sequences and volumes: the presets, the --shapes syntax and its errors, and a
tiny run of each rank."""

from __future__ import annotations

import json

import pytest
import torch

from fused_se import bench
from fused_se.bench.presets import SEShape
from fused_se.bench.runner import make_x


def test_presets_of_volumes_and_sequences():
    volume = bench.PRESETS["seresnet50_3d"]  # MONAI SEResNet50(spatial_dims=3) at a 96^3 input
    assert [(s.c, s.dims, s.hidden) for s in volume] == [
        (256, (24, 24, 24), 16),
        (512, (12, 12, 12), 32),
        (1024, (6, 6, 6), 64),
        (2048, (3, 3, 3), 128),
    ]
    assert all(s.h * s.w == s.dims[0] ** 3 for s in volume)  # the element count, as the kernels see the map
    ecapa = bench.PRESETS["ecapa_tdnn"]
    assert [(s.c, s.dims, s.hidden) for s in ecapa] == [(1024, (300,), 128), (512, (300,), 128)]


@pytest.mark.parametrize(
    "text,n,shape",
    [
        ("8,1024,L300,128", 8, SEShape.of(1024, (300,), 128)),
        ("8,512,l50", 8, SEShape.of(512, (50,), 32)),
        ("2,256,24x24x24,16", 2, SEShape.of(256, (24, 24, 24), 16)),
        ("4,64,7x5", 4, SEShape(64, 7, 5, 4)),
        ("4,64,7,5", 4, SEShape(64, 7, 5, 4)),  # the 4-D syntax as before
        ("4,64,7,5,3", 4, SEShape(64, 7, 5, 3)),
    ],
)
def test_shape_syntax(text, n, shape):
    assert bench.parse_shape(text) == (n, shape)


@pytest.mark.parametrize(
    "text,message",
    [
        ("2,64,8", "shape must be N,C,H,W[,hidden]"),
        ("2,64,L0", "the length '0' is not a positive integer"),
        ("2,64,Lx,4", "the length 'x' is not a positive integer"),
        ("2,64,1x2x3x4", "SPATIAL '1x2x3x4' has 4 dims"),
        ("2,64,3x0x3", "the size '0' is not a positive integer"),
        ("2,64,3x3,0", "hidden '0' is not a positive integer"),
        ("2,64,L30,4,5", "got '2,64,L30,4,5'"),
    ],
)
def test_bad_shapes_give_one_line(text, message, capsys):
    with pytest.raises(SystemExit) as e:
        bench.parse_args(["--device", "cpu", "--shapes", text])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and "Traceback" not in err


@pytest.mark.parametrize("dims", [(9,), (2, 3, 4)], ids=["sequence", "volume"])
@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
def test_providers_agree_on_every_rank(dims, layout):
    shape = SEShape.of(16, dims, 4)
    x = make_x(shape, 2, layout, torch.device("cpu"), torch.float32)
    assert x.shape == (2, 16, *dims) and (x.stride(1) == 1) == (layout == "channels_last")
    fused = bench.build_provider("fused", shape, torch.device("cpu"), torch.float32)
    for provider in ("eager", "eager-conv"):
        eager = bench.build_provider(provider, shape, torch.device("cpu"), torch.float32)
        if provider == "eager-conv":  # the same weights as the Linear ones the fused block holds
            eager.fc1.weight.data.copy_(fused.fc[0].weight.view_as(eager.fc1.weight))
            eager.fc1.bias.data.copy_(fused.fc[0].bias)
            eager.fc2.weight.data.copy_(fused.fc[2].weight.view_as(eager.fc2.weight))
            eager.fc2.bias.data.copy_(fused.fc[2].bias)
        torch.testing.assert_close(fused(x), eager(x), rtol=1e-5, atol=1e-6)


def test_tiny_run_of_a_sequence_and_a_volume(tmp_path, capsys):
    path = tmp_path / "rows.json"
    argv = ["--device", "cpu", "--shapes", "2,16,L9,4", "2,16,2x3x4", "--modes", "fwd+bwd", "--providers", "eager"]
    assert bench.main([*argv, "fused", "--warmup", "0", "--reps", "2", "--json", str(path)]) == 0
    out = capsys.readouterr().out
    assert "2x16x9,4" in out and "2x16x2x3x4,1" in out
    rows = json.loads(path.read_text())
    assert {(r["spatial"], r["H"], r["W"]) for r in rows} == {("9", 9, 1), ("2x3x4", 24, 1)}
    assert all(r["x_bytes"] == 2 * 16 * r["H"] * 4 for r in rows)
    fused = [r for r in rows if r["provider"] == "fused"]
    assert len(fused) == 4 and all(r["path"].startswith(("triton three_launch", "decomposed")) for r in fused)
