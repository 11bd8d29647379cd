"""Deterministic synthetic reference audio for voice cloning fixtures (numpy only: both envs import it).

No RNG: a closed-form voiced signal (a gliding fundamental with decaying harmonics, a syllable-rate
envelope) so the golden x-vectors can be recomputed from the formula alone, on any numpy version.
"""

from __future__ import annotations

import numpy as np

SAMPLE_RATE = 24000


def voiced_signal(seconds: float = 1.5, f0: float = 140.0, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """(round(seconds * sample_rate),) float32 in [-0.5, 0.5]."""
    t = np.arange(round(seconds * sample_rate), dtype=np.float64) / sample_rate
    # Pitch glides +-15% at 3 Hz; the phase is the integral of the instantaneous frequency.
    pitch = f0 * (1.0 + 0.15 * np.sin(2 * np.pi * 3.0 * t))
    phase = 2 * np.pi * np.cumsum(pitch) / sample_rate
    voice = sum(np.sin(k * phase) / k for k in range(1, 9))
    envelope = 0.5 * (1.0 - np.cos(2 * np.pi * 4.0 * t))  # 4 "syllables" per second
    wave = voice * envelope
    return (0.5 * wave / np.max(np.abs(wave))).astype(np.float32)
