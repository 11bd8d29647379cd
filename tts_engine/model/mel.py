"""Log-mel front end of the speaker encoder, numerically the official `mel_spectrogram` at 24 kHz.

STFT: n_fft 1024, hop 256, Hann window 1024, center=False after a reflect pad of (n_fft - hop) / 2
per side, so T = n // 256 frames. Filterbank: 128 Slaney-scale, Slaney-normalised triangles over
0..12 kHz, i.e. what `librosa.filters.mel` returns by default, computed here without librosa.
"""

from __future__ import annotations

import functools
import math

import numpy as np
import torch
import torch.nn.functional as F

SAMPLE_RATE = 24000
N_FFT = 1024
HOP = 256
WIN = 1024
N_MELS = 128
FMIN = 0.0
FMAX = 12000.0

# Slaney's auditory scale: linear (200/3 Hz per mel) below 1 kHz, logarithmic above.
_F_SP = 200.0 / 3
_MIN_LOG_HZ = 1000.0
_MIN_LOG_MEL = _MIN_LOG_HZ / _F_SP
_LOGSTEP = math.log(6.4) / 27.0


def hz_to_mel(hz: np.ndarray) -> np.ndarray:
    hz = np.asarray(hz, dtype=np.float64)
    log_part = _MIN_LOG_MEL + np.log(np.maximum(hz, _MIN_LOG_HZ) / _MIN_LOG_HZ) / _LOGSTEP
    return np.where(hz >= _MIN_LOG_HZ, log_part, hz / _F_SP)


def mel_to_hz(mel: np.ndarray) -> np.ndarray:
    mel = np.asarray(mel, dtype=np.float64)
    log_part = _MIN_LOG_HZ * np.exp(_LOGSTEP * (np.maximum(mel, _MIN_LOG_MEL) - _MIN_LOG_MEL))
    return np.where(mel >= _MIN_LOG_MEL, log_part, _F_SP * mel)


@functools.lru_cache(maxsize=8)
def mel_filterbank(sr: int = SAMPLE_RATE, n_fft: int = N_FFT, n_mels: int = N_MELS,
                   fmin: float = FMIN, fmax: float = FMAX) -> np.ndarray:
    """(n_mels, n_fft // 2 + 1) float32 Slaney filterbank, equal to librosa.filters.mel's default."""
    fft_hz = np.fft.rfftfreq(n_fft, d=1.0 / sr)
    # n_mels + 2 band edges equally spaced on the mel scale; filter i rises on [i, i+1], falls on [i+1, i+2].
    edges_hz = mel_to_hz(np.linspace(hz_to_mel(fmin), hz_to_mel(fmax), n_mels + 2))
    widths = np.diff(edges_hz)
    ramps = edges_hz[:, None] - fft_hz[None, :]
    rising = -ramps[:-2] / widths[:-1, None]
    falling = ramps[2:] / widths[1:, None]
    # librosa stores the triangles in float32 before scaling them: round at the same two places.
    weights = np.maximum(0.0, np.minimum(rising, falling)).astype(np.float32)
    area_norm = 2.0 / (edges_hz[2:] - edges_hz[:-2])  # Slaney norm: each triangle has unit area in Hz
    return (weights * area_norm[:, None]).astype(np.float32)


def log_mel_spectrogram(audio: torch.Tensor) -> torch.Tensor:
    """audio (B, n) or (n,) float at 24 kHz -> log-mel (B, n // 256, 128), float32."""
    if audio.dim() == 1:
        audio = audio[None]
    audio = audio.float()
    pad = (N_FFT - HOP) // 2
    audio = F.pad(audio[:, None], (pad, pad), mode="reflect")[:, 0]  # (B, n + 768)
    window = torch.hann_window(WIN, device=audio.device)
    spec = torch.stft(audio, N_FFT, hop_length=HOP, win_length=WIN, window=window, center=False,
                      normalized=False, onesided=True, return_complex=True)  # (B, 513, T)
    # The 1e-9 keeps the sqrt differentiable at silence; it is part of the official numerics.
    magnitude = torch.sqrt(torch.view_as_real(spec).pow(2).sum(-1) + 1e-9)
    basis = torch.from_numpy(mel_filterbank()).to(audio.device)
    mel = torch.matmul(basis, magnitude)  # (B, 128, T)
    return torch.log(torch.clamp(mel, min=1e-5)).transpose(1, 2)
