"""agent.media.tempo: time-stretch without a pitch change (the OpenAI API's `speed`), streamed frame by frame."""

from __future__ import annotations

import numpy as np
import pytest

from agent.media.tempo import TimeStretch, atempo_stages

RATE = 24000


def tone(seconds: float, hz: float = 440.0) -> np.ndarray:
    t = np.arange(int(seconds * RATE)) / RATE
    return (np.sin(2 * np.pi * hz * t) * 8000).astype(np.int16)


def dominant_hz(pcm: np.ndarray) -> float:
    spectrum = np.abs(np.fft.rfft(pcm.astype(np.float64) * np.hanning(len(pcm))))
    return float(np.argmax(spectrum) * RATE / len(pcm))


def stretch(pcm: np.ndarray, speed: float) -> tuple[np.ndarray, int]:
    """Through TimeStretch in 80 ms frames; (output, how many pushes gave audio before the end)."""
    stretcher = TimeStretch(speed, RATE)
    parts, early = [], 0
    for i in range(0, len(pcm), 1920):
        out = stretcher.push(pcm[i:i + 1920])
        early += len(out) > 0
        parts.append(out)
    parts.append(stretcher.finish())
    return np.concatenate(parts), early


@pytest.mark.parametrize("speed", [0.25, 0.5, 0.8, 1.5, 2.0, 4.0])
def test_duration_scales_and_pitch_stays(speed: float) -> None:
    source = tone(2.0)
    out, early = stretch(source, speed)
    assert abs(len(out) - len(source) / speed) <= 0.05 * len(source) / speed, (len(out), len(source) / speed)
    assert abs(dominant_hz(out) - 440.0) <= 5.0  # WSOLA keeps the pitch (a resample would move it to 440*speed)
    assert early >= len(source) // 1920 // 2  # it streams: audio comes out while frames go in


def test_stages_multiply_to_the_speed_and_out_of_range_is_refused() -> None:
    for speed in (0.25, 0.3, 0.5, 1.0, 3.0, 4.0):
        stages = atempo_stages(speed)
        assert np.isclose(np.prod(stages), speed) and all(0.5 <= s <= 2.0 for s in stages)
    for bad in (0.2, 4.5, 0.0):
        with pytest.raises(ValueError, match=r"speed must be between 0\.25 and 4\.0"):
            atempo_stages(bad)
