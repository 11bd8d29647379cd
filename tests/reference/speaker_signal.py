"""A deterministic speech-like test signal (24 kHz), shared by the encoder tests and their fixture scripts.

Roughly what espeak-ng produces: a harmonic buzz whose pitch glides (a chirp), syllable-rate loudness,
and noise "fricatives" between the voiced parts. Pure torch, so the tests rebuild it bit for bit
without the reference environment.
"""

from __future__ import annotations

import math

import torch

SAMPLE_RATE = 24000


def synthetic_speech(n_samples: int, seed: int) -> torch.Tensor:
    """(n_samples,) float32 in [-0.8, 0.8]."""
    g = torch.Generator().manual_seed(seed)
    t = torch.arange(n_samples, dtype=torch.float64) / SAMPLE_RATE
    offsets = torch.rand(3, generator=g, dtype=torch.float64) * 2 * math.pi
    f0 = 110 + 60 * t / max(t[-1].item(), 1e-3) + 25 * torch.sin(2 * math.pi * 0.7 * t + offsets[0])  # (n,) Hz
    phase = 2 * math.pi * torch.cumsum(f0, 0) / SAMPLE_RATE
    buzz = sum(torch.sin(h * phase) / h for h in range(1, 16))
    voicing = torch.sin(2 * math.pi * 3.5 * t + offsets[1]).clamp(min=0).sqrt()  # syllables
    formant = 1 + 0.5 * torch.sin(2 * math.pi * 1.3 * t + offsets[2])
    noise = torch.randn(n_samples, generator=g, dtype=torch.float64)
    signal = 0.3 * buzz * voicing * formant + 0.05 * noise * (1 - voicing)
    return (0.8 * signal / signal.abs().max()).float()
