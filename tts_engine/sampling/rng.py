"""Counter-based random numbers: one uniform per (seed, frame, draw), computed with tensor ops.

A stream's k-th draw of frame f is a pure function of (seed, f, k). No generator object, no state:
a whole batch draws in one kernel, the draw can live inside a captured graph, and a stream's samples do
not depend on its batch mates, on the bucket it ran in, or on how its text was chunked.

The mixer is Chris Wellons' `lowbias32` integer hash, chained over the 32-bit words of the counter.
Everything stays in int64 without overflow: a 32-bit multiply mod 2^32 is done on 16-bit halves,
so the products stay below 2^48 (signed int64 overflow is undefined in the kernels that run this).
"""

from __future__ import annotations

import torch

_MASK32 = 0xFFFFFFFF
_MASK16 = 0xFFFF
# Draw indices: code 0 is draw 0, residual codebook g (1..15) is draw g.
CODE0_DRAW = 0


def _mul32(x: torch.Tensor, constant: int) -> torch.Tensor:
    """(x * constant) mod 2^32 for int64 x in [0, 2^32)."""
    low, high = x & _MASK16, x >> 16
    return (low * constant + (((high * constant) & _MASK16) << 16)) & _MASK32


def hash32(x: torch.Tensor) -> torch.Tensor:
    """lowbias32: int64 tensor of 32-bit words -> well-mixed 32-bit words (same shape)."""
    x = x & _MASK32
    x = x ^ (x >> 16)
    x = _mul32(x, 0x7FEB352D)
    x = x ^ (x >> 15)
    x = _mul32(x, 0x846CA68B)
    return x ^ (x >> 16)


def counter_uniform(seed: torch.Tensor, frame: torch.Tensor, draw: torch.Tensor | int) -> torch.Tensor:
    """U(0, 1] as float32 for each row: seed, frame (B,) int64 and draw (B,) or a Python int.

    24 random bits (float32's mantissa): u = (h + 1) / 2^24 with h in [0, 2^24)."""
    h = hash32(seed & _MASK32)
    h = hash32(h ^ ((seed >> 32) & _MASK32))
    h = hash32(h ^ (frame & _MASK32))
    h = hash32(h ^ (draw & _MASK32))
    return ((h >> 8) + 1).to(torch.float32) * (1.0 / (1 << 24))
