"""Client audio for speech-to-text: a Wyoming audio format, checked, and its chunks as 16 kHz s16 mono.

Wyoming audio is signed little-endian PCM of `width` bytes per sample (1 to 4, as the `wyoming` package's own
converter, audioop, reads it), `channels` interleaved, at `rate` Hz. The recognizer takes 16 kHz s16 mono:
samples are cut to 16 bits, channels averaged, and the rate converted by one PyAV resampler per request
(agent.media.audio.Resampler, whose filter state spans the chunks).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from agent.media.audio import Resampler
from agent.speech_in.recognizer import SAMPLE_RATE

MIN_RATE, MAX_RATE = 8000, 192_000
MAX_CHANNELS = 8
WIDTHS = (1, 2, 3, 4)


class BadAudio(ValueError):
    """Audio the server cannot read: its message says why (sent as `bad_audio_format`)."""


@dataclass(frozen=True)
class AudioFormat:
    rate: int
    width: int
    channels: int

    @property
    def frame_bytes(self) -> int:
        return self.width * self.channels

    def seconds(self, n_bytes: int) -> float:
        return n_bytes / self.frame_bytes / self.rate


def format_of(data: dict[str, Any], where: str, default: AudioFormat | None = None) -> AudioFormat:
    """The {rate, width, channels} of an audio-start / audio-chunk; a field left out takes `default`'s."""
    values: dict[str, int] = {}
    for key, low, high in (("rate", MIN_RATE, MAX_RATE), ("width", 1, 4), ("channels", 1, MAX_CHANNELS)):
        value = data.get(key)
        if value is None and default is not None:
            value = getattr(default, key)
        if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
            raise BadAudio(f"{where}: {key} must be an integer from {low} to {high}, not {value!r:.40}")
        values[key] = value
    return AudioFormat(**values)


def _samples16(payload: bytes, width: int) -> np.ndarray:
    """Signed little-endian samples of `width` bytes -> int16 (the top 16 bits; 8-bit samples scaled up)."""
    if width == 2:
        return np.frombuffer(payload, dtype="<i2").astype(np.int16)
    if width == 1:
        return np.frombuffer(payload, dtype=np.int8).astype(np.int16) << 8
    if width == 4:
        return (np.frombuffer(payload, dtype="<i4") >> 16).astype(np.int16)
    b = np.frombuffer(payload, dtype=np.uint8).reshape(-1, 3).astype(np.int32)
    value = b[:, 0] | (b[:, 1] << 8) | (b[:, 2] << 16)
    value = np.where(value & 0x800000, value - (1 << 24), value)  # sign of the 24-bit sample
    return (value >> 8).astype(np.int16)


class AudioIn:
    """One request's audio: chunks in the client's format -> 16 kHz s16 mono pieces."""

    def __init__(self, fmt: AudioFormat) -> None:
        self.format = fmt
        self._resampler = Resampler(fmt.rate, SAMPLE_RATE)

    def convert(self, payload: bytes) -> np.ndarray:
        fmt = self.format
        if len(payload) % fmt.frame_bytes:
            raise BadAudio(f"audio-chunk: {len(payload)} bytes is not a whole number of {fmt.width}-byte "
                           f"samples x {fmt.channels} channels")
        samples = _samples16(payload, fmt.width)
        if fmt.channels > 1:
            samples = samples.reshape(-1, fmt.channels).mean(axis=1).astype(np.int16)
        return self._resampler.push(samples)

    def drain(self) -> np.ndarray:
        """The samples the resampler still holds (at the end of the request)."""
        return self._resampler.drain()
