"""Small PCM helpers for the media path: resampling with PyAV, frames, fades, WAV files.

All PCM here is int16 mono numpy arrays unless a name says otherwise.
"""

from __future__ import annotations

import wave
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

WEBRTC_RATE = 48000  # Opus' clock rate; aiortc's encoder resamples anything else (and holds ~20 ms back)


def audio_frame(pcm: np.ndarray, sample_rate: int, pts: int) -> av.AudioFrame:
    """An s16 mono av.AudioFrame holding `pcm`, with pts in samples (time_base 1/sample_rate)."""
    frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(pcm, dtype=np.int16).reshape(1, -1),
                                       format="s16", layout="mono")
    frame.sample_rate = sample_rate
    frame.pts = pts
    frame.time_base = Fraction(1, sample_rate)
    return frame


class Resampler:
    """One persistent s16 mono resampler (`in_rate` -> `out_rate`), so the filter state spans chunks.

    swresample keeps a few samples back (32 at 24 -> 48 kHz); `drain()` returns them and starts a fresh
    filter for the next audio (a new filter graph costs ~0.3 ms, so drain at the ends of utterances, not per
    chunk). Equal rates pass the samples through untouched.
    """

    def __init__(self, in_rate: int, out_rate: int) -> None:
        self.in_rate, self.out_rate = in_rate, out_rate
        self._resampler: av.AudioResampler | None = None
        self._pts = 0

    @property
    def passthrough(self) -> bool:
        return self.in_rate == self.out_rate

    def push(self, pcm: np.ndarray) -> np.ndarray:
        if self.passthrough:
            return np.ascontiguousarray(pcm, dtype=np.int16)
        if self._resampler is None:
            self._resampler = av.AudioResampler(format="s16", layout="mono", rate=self.out_rate)
        frame = audio_frame(pcm, self.in_rate, self._pts)
        self._pts += len(pcm)
        return self._collect(self._resampler.resample(frame))

    def drain(self) -> np.ndarray:
        """The samples the filter still holds; the next push starts a new filter."""
        if self._resampler is None:
            return np.zeros(0, np.int16)
        out = self._collect(self._resampler.resample(None))
        self.reset()
        return out

    def reset(self) -> None:
        """Drop whatever the filter holds."""
        self._resampler = None
        self._pts = 0

    @staticmethod
    def _collect(frames: list[av.AudioFrame]) -> np.ndarray:
        if not frames:
            return np.zeros(0, np.int16)
        # to_ndarray() is (1, samples) for packed mono; plane buffers may be padded, so never use bytes(plane)
        parts = [f.to_ndarray().reshape(-1)[:f.samples] for f in frames]
        return parts[0] if len(parts) == 1 else np.concatenate(parts)


def fade_out(pcm: np.ndarray) -> np.ndarray:
    """A linear ramp from full level to zero over the length of `pcm` (a new int16 array)."""
    n = len(pcm)
    if n == 0:
        return pcm.astype(np.int16, copy=True)
    ramp = np.linspace(1.0, 0.0, n, endpoint=False, dtype=np.float32)
    return (pcm.astype(np.float32) * ramp).astype(np.int16)


def read_wav(path: str | Path) -> tuple[np.ndarray, int]:
    """A 16-bit PCM WAV file as (int16 mono samples, sample rate); stereo is averaged."""
    with wave.open(str(path), "rb") as wav:
        if wav.getsampwidth() != 2:
            raise ValueError(f"{path}: only 16-bit PCM WAV is supported")
        channels, rate = wav.getnchannels(), wav.getframerate()
        pcm = np.frombuffer(wav.readframes(wav.getnframes()), dtype="<i2")
    if channels > 1:
        pcm = pcm.reshape(-1, channels).mean(axis=1).astype(np.int16)
    return pcm.astype(np.int16), rate
