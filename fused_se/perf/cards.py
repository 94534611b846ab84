"""The cards the traffic model assumes: L2 size, DRAM bandwidth, launch cost, SM count.

These are the figures the model divides by; nothing here was measured by this project.

| card | L2 | DRAM bandwidth | launch | SMs | source |
|---|---|---|---|---|---|
| h100 | 50 MiB | 3.35 TB/s | 2.5 us | 132 | NVIDIA H100 Tensor Core GPU datasheet and Hopper whitepaper (H100 SXM5: 50 MB L2, 3.35 TB/s HBM3) |
| h200 | 60 MiB | 4.8 TB/s | 2.5 us | 132 | bandwidth: NVIDIA H200 datasheet (4.8 TB/s HBM3e, SXM); L2: 60 MB as PyTorch's device properties (L2_cache_size) report it on an H200 SXM; the datasheet does not state L2. Not yet read by this project's own GPU check |
| a100 | 40 MiB | 1.555 TB/s | 3.0 us | 108 | NVIDIA A100 datasheet and Ampere whitepaper (A100 40 GB SXM4: 40 MB L2, 1,555 GB/s HBM2; the 80 GB card has 2,039 GB/s: --bandwidth overrides) |

The launch cost is an assumption (the time a kernel launch adds to a chain of dependent small
kernels on the stream, about 2-3 us on these cards), not a datasheet figure.
"""

from __future__ import annotations

from dataclasses import dataclass

MiB = 1024 * 1024


@dataclass(frozen=True)
class Card:
    name: str
    l2_bytes: int
    dram_bytes_per_s: float
    launch_us: float
    sms: int
    source: str


CARDS = {
    "h100": Card("h100", 50 * MiB, 3.35e12, 2.5, 132, "H100 SXM5 datasheet / Hopper whitepaper"),
    "h200": Card(
        "h200", 60 * MiB, 4.8e12, 2.5, 132, "H200 datasheet (bandwidth); PyTorch device properties on an H200 (L2)"
    ),
    "a100": Card("a100", 40 * MiB, 1.555e12, 3.0, 108, "A100 40 GB datasheet / Ampere whitepaper"),
}


def card(name: str) -> Card:
    try:
        return CARDS[name]
    except KeyError:
        raise ValueError(f"card must be one of {', '.join(CARDS)}; got {name!r}") from None
