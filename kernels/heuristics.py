"""Launch parameters: plain functions of the problem's shape, its layout and the card.

No run-time autotuning: the interpreter has no driver to tune with, autotuning under
torch.compile is fragile, and a pure function gives the same kernel (so the same bits) for
the same input every time. Every choice between two variants is a named threshold below,
and the tests cover each side of each one.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Optional

import torch

from ..runtime.env import getenv

# Elements of x one program of a streaming pass (squeeze, scale) holds at a time.
REDUCE_TILE = 2048
SCALE_TILE = 4096
# Widest channel block along a channels_last row, and widest HW block along an NCHW row.
MAX_BLOCK_C_STREAM = 128
MAX_BLOCK_HW_STREAM = 1024
# The squeeze splits HW across programs (fp32 partial sums, added in a fixed order by the
# excite kernel) while it would otherwise launch fewer than this many programs per SM.
SPLIT_BELOW_PROGRAMS_PER_SM = 2
MAX_HW_SPLIT = 64
# NCHW samples whose rows (HW elements) are FLAT_MIN_HW to FLAT_MAX_HW long take the flat passes
# (kernels/flat.py): runs of the flat C * HW axis, aligned and full-width, instead of (channel,
# HW) tiles, whose rows start unaligned where a row's bytes are not a multiple of 16 (7x7 and
# 14x14 in 16-bit dtypes) and leave lanes idle past HW. On an H200 at batch 128, bf16
# (benchmarks/sweep_flat.py), the squeeze of x and the backward's sums of g * x took, tiled
# against flat: 30.5 / 42.5 against 21.5 / 25.8 us at 2048x7x7; 55.9 / 75.7 against 20.8 / 28.0
# at 1024x14x14; 71.0 / 76.8 against 37.3 / 55.0 at 512x28x28 (rows aligned there).
FLAT_MAX_HW = 1024
# Shorter rows keep the tiles: a run of the flat squeeze touches up to BLOCK / HW + 2 channels,
# each a select over the run, so its arithmetic grows as HW shrinks (measured down to 7x7).
FLAT_MIN_HW = 48
# The flat squeeze: channels a program and elements a run (one warp: 16 or 8 contiguous elements
# a thread), by row length, the fastest of those swept: up to FLAT_LONG_ROWS elements a row,
# FLAT_REDUCE_ROWS channels in runs of FLAT_REDUCE_BLOCK; longer rows, FLAT_LONG_REDUCE_*.
FLAT_LONG_ROWS = 256
FLAT_REDUCE_ROWS = 32
FLAT_REDUCE_BLOCK = 512
FLAT_LONG_REDUCE_ROWS = 8
FLAT_LONG_REDUCE_BLOCK = 256
FLAT_REDUCE_WARPS = 1
# The flat scale: elements a program, 16 a thread at 8 warps.
FLAT_SCALE_BLOCK = 4096
FLAT_SCALE_WARPS = 8
# tl.dot needs every dimension to be at least 16 on the GPU.
MIN_DOT = 16
# Excite forward: with W1 at most this big, one launch whose programs each re-compute the
# hidden layer, so that the second GEMM is spread over channel blocks too. Above it, the first
# GEMM's loop over channels is long (2048 / 32 steps at SE-ResNet-50's last stage) and one
# program per batch block ran it alone: 94 us at batch 128 and 110 us at batch 1 on an H200,
# against eager's ~10 us. There the first GEMM is split over channels into shares summed in a
# fixed order by a second launch, which runs the second GEMM over channel blocks.
EXCITE_RECOMPUTE_MAX_W1_BYTES = 128 * 1024
# Channel splits of a split first GEMM: enough (batch block, split) programs to fill the SMs,
# at most this many shares per batch block (each second-GEMM program reads all of its block's).
MAX_EXCITE_SPLIT_K = 16
# Excite backward (three launches, no partial weight gradients): the reductions over channels
# split as the forward's; the shares summed into h and v per batch block; then one program per
# channel block over every sample writes that block's dz, dW1, dW2 and db2 whole. Its batch
# block, and the elements of a (BLOCK_B, BLOCK_R) tile from which it runs with 8 warps.
EXCITE_BWD_CHANNEL_BLOCK_B = 16
EXCITE_BWD_WIDE_TILE = 16 * 128
# The split reductions run with 8 warps from this many elements of a (BLOCK_C, BLOCK_R) weight
# tile (two of them live in the loop): at 4 warps ptxas spilled on sm_90 from 64 x 64.
EXCITE_BWD_SPLIT_WIDE_TILE = 64 * 64
# fp64 (gradcheck's dtype) multiplies through a broadcast of this many elements at most, in
# place of tl.dot, which has no fp64 path on every GPU.
FP64_BROADCAST_TILE = 16 * 16 * 64
# FC form (a C x C layer): output and input channel blocks of its tiles, and the batch block.
EXCITE_FC_BLOCK = 64
EXCITE_FC_BWD_BLOCK_K = 32
# Conv form (a k-tap conv across channels): elements of a (BLOCK_B, BLOCK_C) tile, the widest
# channel block, and the number of per-program partial weight gradients aimed at.
EXCITE_CONV_TILE = 2048
MAX_EXCITE_CONV_BLOCK_C = 256
EXCITE_CONV_BWD_TARGET_PARTIALS = 16
# SM count assumed when kernels run in the Triton interpreter (programs run one after another).
INTERPRETER_SM_COUNT = 2
# L2 size assumed where the card does not say (and in the interpreter): an A100's 40 MB.
# FUSED_SE_L2_BYTES in the environment sets the L2 size the paths are chosen for, on any device
# (the traffic model off a GPU; a card whose driver misreports it).
DEFAULT_L2_BYTES = 40 * 1024 * 1024
L2_ENV = "FUSED_SE_L2_BYTES"
# One-launch forward (MLP form): one program per sample runs the squeeze, the excitation and
# the scale, re-reading its sample from L2 for the scale. Chosen where the three-launch path is
# bound by launches, not bytes: at most this many samples, at most this many bytes of x in all
# (and all of x within a fraction of L2, so the re-read hits it), and a hidden layer that one
# program holds (BLOCK_R x BLOCK_C fp32 tiles of at most ONE_LAUNCH_TILE elements).
ONE_LAUNCH_MAX_BATCH = 8
ONE_LAUNCH_MAX_BYTES = 4 * 1024 * 1024
ONE_LAUNCH_L2_FRACTION = 4  # x at most L2 / 4
ONE_LAUNCH_MAX_HIDDEN = 256
ONE_LAUNCH_TILE = 8192

# Streamed passes (two-FC form): one persistent launch takes tiles of x from an atomic ticket
# counter in a fixed order, the squeeze (backward: the sum of g * x) of sample b + LAG next to
# the scale (backward: the dx pass) of sample b, so that a sample's second pass re-reads it
# from L2: 2N bytes forward and 3N backward. The last first-pass tile of a chunk of samples
# runs the chunk's excitation; the chunk's second-pass tiles wait for it behind a flag. Taken
# (when asked for) where x is past L2 / STREAM_L2_FRACTION. The first passes' reads of the LAG
# samples between a sample's two passes take at most L2 / 4: as many bytes again are written in
# that window (y forward; dx backward, half as many) and enter L2 too (write-allocate), and LRU
# needs the rest. Sized for the reads alone (L2 / 2), an LRU model of L2 evicted each sample just
# before its second pass (2.86N forward; 2.02N now).
STREAM_L2_FRACTION = 4
STREAM_MIN_LAG_CHUNKS = 2  # LAG is at least two chunks: one is excited while the next streams
# A chunk is the smallest power-of-two count of samples with at least this many times the
# bytes of W1 and W2 (which its excitation reads, and whose gradients it writes as partials).
STREAM_WEIGHT_RATIO = 16
STREAM_MAX_CHUNK = 64
# Elements of x per ticket at most; and at least, where a sample holds that many: where HW is
# short (NCHW rows of 28 x 28 and below), a ticket takes several channel blocks of the whole HW.
STREAM_TILE = 32768
# A stream kernel carries the streaming loops and the excitation, and ptxas, free to use 255
# registers a thread at 8 warps, took 180-255 for it (sm_90): one 8-warp program per SM. At 16
# warps it must fit in 128, and does with 4096-element tiles and the excitation's channel block
# at 16: no spill forward; backward, no spill up to a hidden width of 64 (sm_90, triton 3.6 and
# 3.8), its excitation a function of its own (not inlined: 16-40 bytes of spill at SE-ResNet-50's
# streamed stages when it was) with one channel loop per product; at 128, 32-272 bytes, and more
# past it (hence the limit). So: one 16-warp program per SM.
STREAM_BLOCK_TILE = 4096
STREAM_NUM_WARPS = 16
STREAM_PROGRAMS_PER_SM = 1
STREAM_EXCITE_BLOCK_C = 16
STREAM_MAX_HIDDEN = 128

# Spread forward (two-FC form, small batches): one persistent launch over every SM that runs
# the squeeze tiles (each with its product by a block of W1's columns), then a gate ticket per
# (sample, channel block), then the scale tiles, each kind waiting for what it needs behind a
# count or a flag. W1 and W2 are read once, by many programs; up to this many samples:
SPREAD_MAX_BATCH = 8
# The one-launch forward (one program per sample, no flags) instead where one program's reads,
# its sample and both weights, are at most this many bytes.
ONE_LAUNCH_MAX_PROGRAM_BYTES = 256 * 1024

# The persistent kernels' waits give up after this many polls of a flag (and the launch reports
# it: kernels/sync.py). A poll is one L2 round trip, about a microsecond: some seconds in all,
# far past any chunk's excitation, which is what a wait waits for.
WAIT_MAX_POLLS = 1 << 22


def next_pow2(n: int) -> int:
    return 1 << max(0, int(n) - 1).bit_length()


def cdiv(a: int, b: int) -> int:
    return -(-a // b)


@functools.cache
def _cuda_sm_count(index: int) -> int:
    return torch.cuda.get_device_properties(index).multi_processor_count


@functools.cache
def _cuda_l2_bytes(index: int) -> int:
    return getattr(torch.cuda.get_device_properties(index), "L2_cache_size", 0) or DEFAULT_L2_BYTES


@functools.lru_cache(maxsize=8)
def _l2_override(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value <= 0:
        raise ValueError(f"{L2_ENV} must be a positive number of bytes; got {text!r}")
    return value


def l2_bytes(device: torch.device) -> int:
    """The L2 size the paths are chosen for: FUSED_SE_L2_BYTES if set, else the card's."""
    override = getenv(L2_ENV)
    if override:
        return _l2_override(override)
    if device.type == "cuda":
        return _cuda_l2_bytes(device.index if device.index is not None else torch.cuda.current_device())
    return DEFAULT_L2_BYTES


def sm_count(device: torch.device) -> int:
    if device.type == "cuda":
        return _cuda_sm_count(device.index if device.index is not None else torch.cuda.current_device())
    return INTERPRETER_SM_COUNT


@dataclass(frozen=True)
class ReduceConfig:
    """Sum over HW of x (or of dy * x) per (sample, channel), optionally split over HW."""

    block_c: int
    block_hw: int
    split: int  # programs along HW per (sample, channel block); partial sums are fp32
    hw_per_split: int  # multiple of block_hw
    num_warps: int


@dataclass(frozen=True)
class ScaleConfig:
    block_c: int
    block_hw: int
    num_warps: int


@dataclass(frozen=True)
class ExciteConfig:
    block_b: int
    block_c: int
    block_r: int
    programs_c: int  # forward: programs sharing a batch block, each with its own channel blocks
    dot_tf32: bool
    num_warps: int


@dataclass(frozen=True)
class ExciteSplitConfig:
    """The forward's excitation in two launches: the first GEMM split over channels into ks shares
    of ck channels each, then the second GEMM over (batch block, programs_c) programs."""

    block_b: int
    block_c: int
    block_r: int
    ks: int
    ck: int
    programs_c: int
    dot_tf32: bool
    num_warps: int


@dataclass(frozen=True)
class ExciteBwdConfig:
    """The backward's excitation: the split reductions over channels (block_b, block_c, ks of ck
    channels), then h and v per batch block, then one program per chan_block_c channels, walking
    every sample chan_block_b at a time."""

    block_b: int
    block_c: int
    block_r: int
    ks: int
    ck: int
    chan_block_b: int
    chan_block_c: int
    dot_tf32: bool
    num_warps: int
    chan_num_warps: int


@dataclass(frozen=True)
class ExciteFCConfig:
    block_b: int
    block_n: int  # output channels of a tile
    block_k: int  # input channels of a tile (backward: the columns of dW a program owns)
    dot_tf32: bool
    num_warps: int


@dataclass(frozen=True)
class ExciteConvConfig:
    block_b: int
    block_c: int
    block_k: int  # taps, padded to a power of two (backward)
    num_warps: int


def _stream_tile(channels_last: bool, c: int, hw: int, tile: int) -> tuple[int, int]:
    """(BLOCK_C, BLOCK_HW): the contiguous axis gets the long side of the tile."""
    if channels_last:
        block_c = min(next_pow2(c), MAX_BLOCK_C_STREAM)
        block_hw = min(next_pow2(hw), max(1, tile // block_c))
    else:
        block_hw = min(next_pow2(hw), MAX_BLOCK_HW_STREAM)
        block_c = min(next_pow2(c), max(1, tile // block_hw))
    return block_c, block_hw


def reduce_config(b: int, c: int, hw: int, channels_last: bool, sms: int) -> ReduceConfig:
    block_c, block_hw = _stream_tile(channels_last, c, hw, REDUCE_TILE)
    return _split_reduce(b, c, hw, block_c, block_hw, sms, MAX_HW_SPLIT)


def _split_reduce(b: int, c: int, hw: int, block_c: int, block_hw: int, sms: int, max_split: int) -> ReduceConfig:
    """The reduction's tiles split over HW, up to max_split ways, while fewer than
    SPLIT_BELOW_PROGRAMS_PER_SM programs per SM would run."""
    programs = b * cdiv(c, block_c)
    hw_blocks = cdiv(hw, block_hw)
    split = 1
    if programs < SPLIT_BELOW_PROGRAMS_PER_SM * sms:
        split = min(hw_blocks, max_split, cdiv(SPLIT_BELOW_PROGRAMS_PER_SM * sms, max(programs, 1)))
    hw_per_split = cdiv(hw_blocks, split) * block_hw
    split = cdiv(hw, hw_per_split)  # no empty splits
    return ReduceConfig(block_c, block_hw, split, hw_per_split, num_warps=4 if block_c * block_hw <= 1024 else 8)


# A CUDA grid's second and third dimensions (the flat passes put the batch on the second).
MAX_GRID_Y = 65535


# scSE (kernels/scse.py). The backward's first pass: a program takes one sample's tile of HW
# positions across every channel (the spatial gate sums over C), SCSE_TILE elements a step, the
# contiguous axis the long side of the tile. HW tiles halve, down to SCSE_MIN_BLOCK_HW, while fewer
# than SPLIT_BELOW_PROGRAMS_PER_SM programs per SM would run: each HW tile writes one (B, C) row of
# fp32 partial sums, so the floor bounds those rows at 4 / (16 * element size) of N.
SCSE_TILE = 4096
SCSE_MIN_BLOCK_HW = 16
# The forward's scale pass holds every channel of its tile at once (x read once: q, then y, from
# the same registers) where the narrowest tile the layout allows (one position in channels_last;
# SECTOR_BYTES of each channel's row in NCHW) has at most SCSE_SCALE_MAX_TILE elements (16 warps,
# 32 a thread, from 8192; half as many in fp64, where 16384 spilled 424 bytes on sm_90); past it,
# two sweeps over channel blocks, and x read twice.
# The forward's scale and the backward's dx pass load their per-channel values once a program (s_c
# and w_s; s_c, dz, w_s and dw_s's share) and take SCSE_SPAN positions at least, a tile at a time:
# a few values a channel per 64 positions (a tile of every channel is 4 positions deep at C = 768,
# where one tile a program would read s_c and w_s once per 4 positions, 3 / 4 of N in bf16).
SCSE_SCALE_MAX_TILE = 16384
SCSE_SPAN = 64
SECTOR_BYTES = 32
# The dx pass's programs each take a channel block (s_s and dq are read once per block): in NCHW
# 64 channels, whose rows stay SCSE_TILE / 64 positions long, where SE's NCHW tiles (rows up to
# 1024 positions, 4 channels) would read s_s and dq once per 4 channels.
SCSE_DX_NCHW_BLOCK_C = 64
# The forward's squeeze is SE's kernel with HW splits of at least SCSE_MIN_SPLIT_HW positions,
# so that its (SPLIT, B, C) fp32 partial sums stay within 4 / (128 * element size) of N. To keep
# SPLIT_BELOW_PROGRAMS_PER_SM programs per SM, channels_last tiles narrow to SECTOR_BYTES of
# channels a position first (SE's 128-channel tiles, 16 positions deep, would split a 32 x 32 map
# 64 ways at batch 1 on an H100: rows of N / 8 in bf16).
SCSE_MIN_SPLIT_HW = 128
# dw_s's shares (one a sample's span) and db_s's (one a backward program) are added up by a launch
# (common.sum_partials: in order, each program walking every share of its columns) where there are
# at most this many, so that a small call's backward replays; past it by torch's reductions,
# parallel over the shares (a call that large is bound by its device time, not by its host's). Not
# yet timed on a GPU.
SCSE_LAUNCHED_SUM_MAX_SHARES = 64


@dataclass(frozen=True)
class ScseConfig:
    block_c: int
    block_hw: int
    num_warps: int


@dataclass(frozen=True)
class ScseSpanConfig:
    """A tile a step over a program's span of positions."""

    block_c: int
    block_hw: int
    span: int  # positions a program, a multiple of block_hw
    num_warps: int


@dataclass(frozen=True)
class ScseScaleConfig(ScseSpanConfig):
    one_sweep: bool  # block_c covers every channel: x is read once


def scse_config(b: int, c: int, hw: int, channels_last: bool, sms: int) -> ScseConfig:
    """The tiles of scSE's backward first pass."""
    if channels_last:
        block_c = min(next_pow2(c), MAX_BLOCK_C_STREAM)
        block_hw = min(next_pow2(hw), max(SCSE_MIN_BLOCK_HW, SCSE_TILE // block_c))
    else:
        block_hw = min(next_pow2(hw), MAX_BLOCK_HW_STREAM)
        block_c = min(next_pow2(c), max(1, SCSE_TILE // block_hw))
    while block_hw > SCSE_MIN_BLOCK_HW and b * cdiv(hw, block_hw) < SPLIT_BELOW_PROGRAMS_PER_SM * sms:
        block_hw //= 2
    if not channels_last:
        block_c = min(next_pow2(c), max(1, SCSE_TILE // block_hw))
    return ScseConfig(block_c, block_hw, num_warps=4 if block_c * block_hw <= 2048 else 8)


def scse_scale_config(c: int, hw: int, channels_last: bool, elem_bytes: int) -> ScseScaleConfig:
    """The forward's scale pass: tiles of every channel (one_sweep), SCSE_TILE elements (more only
    where the layout's narrowest tile is), a program's span SCSE_SPAN positions or one tile;
    else two sweeps over channel blocks of SCSE_SPAN positions, a tile a program."""
    min_hw = min(next_pow2(hw), 1 if channels_last else max(1, SECTOR_BYTES // elem_bytes))
    block_c = next_pow2(c)
    one_sweep = block_c * min_hw <= SCSE_SCALE_MAX_TILE // (2 if elem_bytes == 8 else 1)
    if one_sweep:
        block_hw = min(next_pow2(hw), MAX_BLOCK_HW_STREAM, max(min_hw, SCSE_TILE // block_c))
        span = max(block_hw, SCSE_SPAN)
    else:
        block_hw = span = min(next_pow2(hw), SCSE_SPAN)
        block_c = max(1, SCSE_TILE // block_hw)
    tile = block_c * block_hw
    return ScseScaleConfig(block_c, block_hw, span, 4 if tile <= 2048 else 8 if tile <= 8192 else 16, one_sweep)


def scse_dx_config(c: int, hw: int, channels_last: bool) -> ScseSpanConfig:
    """The backward's dx pass: SCSE_TILE-element tiles of a channel block (up to
    MAX_BLOCK_C_STREAM channels in channels_last, SCSE_DX_NCHW_BLOCK_C in NCHW), SCSE_SPAN
    positions a program or one tile."""
    block_c = min(next_pow2(c), MAX_BLOCK_C_STREAM if channels_last else SCSE_DX_NCHW_BLOCK_C)
    block_hw = min(next_pow2(hw), max(1, SCSE_TILE // block_c))
    tile = block_c * block_hw
    return ScseSpanConfig(block_c, block_hw, max(block_hw, SCSE_SPAN), num_warps=4 if tile <= 2048 else 8)


def scse_squeeze_config(b: int, c: int, hw: int, channels_last: bool, elem_bytes: int, sms: int) -> ReduceConfig:
    """The forward's squeeze (SE's kernel, passes._hw_sum_kernel): SE's tiles and split rule, the
    splits at least SCSE_MIN_SPLIT_HW positions long, channels_last tiles narrowed (down to
    SECTOR_BYTES a position) while even the most such splits would leave too few programs."""
    target = SPLIT_BELOW_PROGRAMS_PER_SM * sms
    most_splits = max(1, hw // SCSE_MIN_SPLIT_HW)
    block_c, block_hw = _stream_tile(channels_last, c, hw, REDUCE_TILE)
    if channels_last:
        narrowest = min(block_c, max(1, SECTOR_BYTES // elem_bytes))
        while block_c > narrowest and b * cdiv(c, block_c) * most_splits < target:
            block_c //= 2
        block_hw = min(next_pow2(hw), max(1, REDUCE_TILE // block_c))
    return _split_reduce(b, c, hw, block_c, block_hw, sms, min(MAX_HW_SPLIT, most_splits))


def flat_rows(hw: int) -> bool:
    """Whether NCHW rows of hw elements take the flat passes (see FLAT_MAX_HW)."""
    return FLAT_MIN_HW <= hw <= FLAT_MAX_HW


def flat_fits(b: int, sample_elems: int) -> bool:
    """Whether the flat passes' grid and int32 offsets within a sample hold b samples of this many elements."""
    return b <= MAX_GRID_Y and sample_elems < 2**31 - FLAT_SCALE_BLOCK


@dataclass(frozen=True)
class FlatReduceConfig:
    block_r: int  # channels a program
    block: int  # elements of a run
    window: int  # channels a run may touch, a power of two >= block / HW + 2
    num_warps: int


def flat_reduce_config(c: int, hw: int) -> FlatReduceConfig:
    rows, block = (
        (FLAT_REDUCE_ROWS, FLAT_REDUCE_BLOCK)
        if hw <= FLAT_LONG_ROWS
        else (FLAT_LONG_REDUCE_ROWS, FLAT_LONG_REDUCE_BLOCK)
    )
    return FlatReduceConfig(min(rows, next_pow2(c)), block, next_pow2(cdiv(block, hw) + 2), FLAT_REDUCE_WARPS)


def scale_config(c: int, hw: int, channels_last: bool) -> ScaleConfig:
    block_c, block_hw = _stream_tile(channels_last, c, hw, SCALE_TILE)
    return ScaleConfig(block_c, block_hw, num_warps=4 if block_c * block_hw <= 2048 else 8)


@dataclass(frozen=True)
class OneLaunchConfig:
    """The one-launch forward: one program per sample."""

    block_c: int  # channels per step of the excitation and of the streaming loops
    block_hw: int
    block_r: int
    num_warps: int


def one_launch_applies(b: int, c: int, hw: int, r: int, x_bytes: int, l2: int, acc_bytes: int = 4) -> bool:
    """Whether the MLP form's forward may run as one launch, a program per sample (see ONE_LAUNCH_*)."""
    program_bytes = (x_bytes // b if b else 0) + 2 * c * r * acc_bytes
    return (
        1 <= b <= ONE_LAUNCH_MAX_BATCH
        and r <= ONE_LAUNCH_MAX_HIDDEN
        and x_bytes <= min(ONE_LAUNCH_MAX_BYTES, l2 // ONE_LAUNCH_L2_FRACTION)
        and program_bytes <= ONE_LAUNCH_MAX_PROGRAM_BYTES
    )


@dataclass(frozen=True)
class SpreadConfig:
    """The spread forward: see SPREAD_*."""

    block_c: int
    block_hw: int
    hw_tile: int  # HW positions of a squeeze or scale ticket, a multiple of block_hw
    c_blocks: int
    hw_tiles: int
    block_r: int
    programs: int
    num_warps: int

    @property
    def tiles(self) -> int:
        """Squeeze (and scale) tickets per sample."""
        return self.c_blocks * self.hw_tiles


def spread_config(b: int, c: int, hw: int, r: int, channels_last: bool, sms: int) -> Optional[SpreadConfig]:
    """The spread forward, or None where it does not apply (more than SPREAD_MAX_BATCH samples,
    a hidden layer past STREAM_MAX_HIDDEN, or nothing to do)."""
    if not 1 <= b <= SPREAD_MAX_BATCH or r > STREAM_MAX_HIDDEN or c * hw == 0:
        return None
    block_r = next_pow2(r)
    block_c, block_hw = _stream_tile(channels_last, c, hw, STREAM_BLOCK_TILE)
    # the (BLOCK_R, BLOCK_C) weight tiles share the channel block
    block_c = max(1, min(block_c, STREAM_BLOCK_TILE // block_r))
    steps = max(1, STREAM_TILE // (block_c * block_hw))
    hw_tile = min(block_hw * steps, cdiv(hw, block_hw) * block_hw)
    c_blocks, hw_tiles = cdiv(c, block_c), cdiv(hw, hw_tile)
    programs = max(1, min(b * c_blocks * hw_tiles, sms * STREAM_PROGRAMS_PER_SM))
    return SpreadConfig(block_c, block_hw, hw_tile, c_blocks, hw_tiles, block_r, programs, STREAM_NUM_WARPS)


def one_launch_config(c: int, hw: int, r: int, channels_last: bool) -> OneLaunchConfig:
    block_r = next_pow2(r)
    block_c, block_hw = _stream_tile(channels_last, c, hw, SCALE_TILE)
    # the excitation's (BLOCK_R, BLOCK_C) weight tiles share the channel block
    block_c = max(1, min(block_c, ONE_LAUNCH_TILE // block_r))
    return OneLaunchConfig(block_c, block_hw, block_r, num_warps=8)


@dataclass(frozen=True)
class StreamConfig:
    """The streamed forward or backward: see STREAM_*."""

    block_c: int
    block_hw: int
    hw_tile: int  # HW positions of a ticket, a multiple of block_hw
    c_blocks: int
    hw_tiles: int
    c_steps: int  # channel blocks of a ticket (more than one only where a ticket spans HW)
    chunk: int  # samples per excitation
    lag: int  # samples between a sample's two passes: a multiple of chunk, below B
    programs: int
    excite: ExciteConfig  # the chunk's excitation (block_b >= chunk)
    num_warps: int

    @property
    def tiles(self) -> int:
        """Tickets per sample and pass."""
        return cdiv(self.c_blocks, self.c_steps) * self.hw_tiles


def stream_config(
    b: int,
    c: int,
    hw: int,
    r: int,
    x_dtype: torch.dtype,
    channels_last: bool,
    sample_bytes: int,
    sms: int,
    l2: int,
) -> Optional[StreamConfig]:
    """The streamed pass over (B, C, HW), or None where it does not pay (see STREAM_*).

    sample_bytes: the bytes one sample's first pass touches (x forward; g, x and the ReLU's
    output backward), all of which should still be in L2 for its second pass."""
    acc_bytes = 8 if x_dtype == torch.float64 else 4
    weight_bytes = 2 * c * r * acc_bytes
    chunk = 1
    while chunk * sample_bytes < STREAM_WEIGHT_RATIO * weight_bytes and chunk <= STREAM_MAX_CHUNK:
        chunk *= 2
    # fp64 (gradcheck) multiplies through broadcasts sized for MIN_DOT rows, not tl.dot
    if chunk > (MIN_DOT if x_dtype == torch.float64 else STREAM_MAX_CHUNK) or sample_bytes <= 0:
        return None
    if r > STREAM_MAX_HIDDEN:
        return None
    lag = (l2 // STREAM_L2_FRACTION // sample_bytes) // chunk * chunk
    if lag < STREAM_MIN_LAG_CHUNKS * chunk or lag >= b:
        return None  # a chunk pair does not fit in L2, or all of x does (three launches re-read it from L2)
    block_c, block_hw = _stream_tile(channels_last, c, hw, STREAM_BLOCK_TILE)
    steps = max(1, STREAM_TILE // (block_c * block_hw))
    hw_tile = min(block_hw * steps, cdiv(hw, block_hw) * block_hw)
    c_blocks, hw_tiles = cdiv(c, block_c), cdiv(hw, hw_tile)
    c_steps = min(c_blocks, max(1, STREAM_TILE // (block_c * hw_tile)))
    programs = max(1, min(2 * b * cdiv(c_blocks, c_steps) * hw_tiles, sms * STREAM_PROGRAMS_PER_SM))
    ex_c, ex_r = _excite_blocks(c, r, x_dtype)
    ex_c = min(ex_c, STREAM_EXCITE_BLOCK_C)
    ex_b = max(MIN_DOT, chunk)
    excite = ExciteConfig(ex_b, ex_c, ex_r, 1, _dot_tf32(x_dtype), num_warps=STREAM_NUM_WARPS)
    return StreamConfig(
        block_c,
        block_hw,
        hw_tile,
        c_blocks,
        hw_tiles,
        c_steps,
        chunk,
        lag,
        programs,
        excite,
        num_warps=STREAM_NUM_WARPS,
    )


def _excite_blocks(c: int, r: int, x_dtype: torch.dtype) -> tuple[int, int]:
    block_r = max(MIN_DOT, next_pow2(r))
    if x_dtype == torch.float64:
        # fp64 multiplies through a (BLOCK_B, BLOCK_C, BLOCK_R) broadcast instead of tl.dot.
        widest = max(MIN_DOT, FP64_BROADCAST_TILE // (MIN_DOT * block_r))
    else:
        widest = 64 if block_r <= 64 else 32
    block_c = max(MIN_DOT, min(next_pow2(c), widest))
    return block_c, block_r


def excite_fwd_config(b: int, c: int, r: int, x_dtype: torch.dtype, sms: int) -> ExciteConfig:
    """The forward's one-launch excitation (its first GEMM re-computed by each of programs_c)."""
    block_c, block_r = _excite_blocks(c, r, x_dtype)
    block_b = MIN_DOT
    programs_c = 1
    if r * c * 4 <= EXCITE_RECOMPUTE_MAX_W1_BYTES:
        programs_c = max(1, min(cdiv(c, block_c), cdiv(sms, cdiv(b, block_b))))
    return ExciteConfig(block_b, block_c, block_r, programs_c, _dot_tf32(x_dtype), num_warps=4)


def _channel_split(c: int, block_c: int, batch_blocks: int, sms: int) -> tuple[int, int]:
    """(splits, channels per split, a multiple of block_c) of a first GEMM over c channels."""
    steps = cdiv(c, block_c)
    ks = max(1, min(steps, MAX_EXCITE_SPLIT_K, cdiv(sms, max(1, batch_blocks))))
    ck = cdiv(steps, ks) * block_c
    return cdiv(c, ck), ck


def excite_fwd_split_config(b: int, c: int, r: int, x_dtype: torch.dtype, sms: int) -> Optional[ExciteSplitConfig]:
    """The forward's excitation in two launches (the first GEMM split over channels), or None where
    one launch does: W1 small enough to re-compute, or one split only."""
    if r * c * 4 <= EXCITE_RECOMPUTE_MAX_W1_BYTES:
        return None
    block_c, block_r = _excite_blocks(c, r, x_dtype)
    batch_blocks = cdiv(b, MIN_DOT)
    ks, ck = _channel_split(c, block_c, batch_blocks, sms)
    if ks == 1:
        return None
    programs_c = max(1, min(cdiv(c, block_c), cdiv(sms, batch_blocks)))
    return ExciteSplitConfig(MIN_DOT, block_c, block_r, ks, ck, programs_c, _dot_tf32(x_dtype), num_warps=4)


def excite_bwd_config(b: int, c: int, r: int, x_dtype: torch.dtype, sms: int) -> ExciteBwdConfig:
    block_c, block_r = _excite_blocks(c, r, x_dtype)
    ks, ck = _channel_split(c, block_c, cdiv(b, MIN_DOT), sms)
    if x_dtype == torch.float64:
        chan_block_b = chan_block_c = MIN_DOT  # fp64's broadcast products stay small
    else:
        chan_block_b = EXCITE_BWD_CHANNEL_BLOCK_B
        # one channel block per SM where C allows, at least MIN_DOT channels wide
        chan_block_c = max(MIN_DOT, min(block_c, next_pow2(cdiv(c, sms))))
    # (BLOCK_B, BLOCK_R) tiles of h and v and two weight-gradient accumulators live across the
    # batch loop: spread them over more threads once they are wide.
    chan_warps = 8 if chan_block_b * block_r >= EXCITE_BWD_WIDE_TILE else 4
    split_warps = 8 if block_c * block_r >= EXCITE_BWD_SPLIT_WIDE_TILE else 4
    return ExciteBwdConfig(
        MIN_DOT, block_c, block_r, ks, ck, chan_block_b, chan_block_c, _dot_tf32(x_dtype), split_warps, chan_warps
    )


def excite_fc_config(c: int, x_dtype: torch.dtype) -> ExciteFCConfig:
    block = max(MIN_DOT, min(next_pow2(c), EXCITE_FC_BLOCK))
    block_k = max(MIN_DOT, min(block, EXCITE_FC_BWD_BLOCK_K))
    if x_dtype == torch.float64:
        # fp64 multiplies through a (BLOCK_B, BLOCK_K, BLOCK_N) broadcast instead of tl.dot.
        block = min(block, FP64_BROADCAST_TILE // (MIN_DOT * block_k))
    return ExciteFCConfig(MIN_DOT, block, block_k, _dot_tf32(x_dtype), num_warps=4)


def excite_conv_fwd_config(b: int, c: int) -> ExciteConvConfig:
    block_c = min(next_pow2(c), MAX_EXCITE_CONV_BLOCK_C)
    block_b = min(next_pow2(b), max(1, EXCITE_CONV_TILE // block_c))
    return ExciteConvConfig(block_b, block_c, 1, num_warps=4)


def excite_conv_bwd_config(b: int, c: int, k: int) -> ExciteConvConfig:
    block_c = min(next_pow2(c), MAX_EXCITE_CONV_BLOCK_C)
    block_b = min(next_pow2(cdiv(b, EXCITE_CONV_BWD_TARGET_PARTIALS)), max(1, EXCITE_CONV_TILE // block_c))
    return ExciteConvConfig(block_b, block_c, next_pow2(k), num_warps=4)


def _dot_tf32(x_dtype: torch.dtype) -> bool:
    # 16-bit x: the excitation's products on tensor cores as three TF32 products (about fp32's
    # error). One TF32 product failed fp16 parity on an H200 (its errors compound through the
    # backward's chained products into dx elements where g * s and dz / HW nearly cancel), and
    # IEEE products took 255 registers and spilled up to 816 bytes in the excitation kernels on
    # sm_90 (the kernel report). fp32 x keeps IEEE products (fp32 parity); fp64 a sum of products.
    return x_dtype in (torch.float16, torch.bfloat16)
