"""Decode what a compatible API sent (PyAV) and compare it with the engine's own PCM for the same request."""

from __future__ import annotations

import io
from typing import Any

import av
import numpy as np

# Lossy formats (mp3, aac, opus) cannot match sample for sample. After aligning away the encoder delay
# they must keep the duration within 0.1 s, the RMS level within 2 dB and a correlation of at least 0.8
# (measured on the tiny model's noise-like audio: mp3 0.93, opus 0.92, aac 0.86; level within 1 dB).
LOSSY_MAX_DURATION_S = 0.1
LOSSY_MAX_LEVEL_DB = 2.0
LOSSY_MIN_CORRELATION = 0.8
MAX_CODEC_DELAY = 4000  # samples at 24 kHz (mp3 adds 1105, aac 1024)


def engine_pcm(engine: Any, text: str, speaker: str = "vivian", seed: int = 0, **kwargs: Any) -> np.ndarray:
    """The engine's int16 PCM for `text` (what the APIs must deliver for it)."""
    stream = engine.open_stream(speaker=speaker, language=kwargs.pop("language", "auto"), seed=seed, **kwargs)
    stream.push_text(text)
    stream.finish()
    frames, end = stream.collect()
    assert end.reason in ("eos", "cap"), end
    return np.concatenate([f.pcm for f in frames])


def decode(data: bytes) -> tuple[np.ndarray, str]:
    """Any container PyAV reads -> (int16 mono PCM at 24 kHz, codec name)."""
    with av.open(io.BytesIO(data)) as container:
        codec = container.streams.audio[0].codec_context.name
        resampler = av.AudioResampler(format="s16", layout="mono", rate=24000)
        parts = []
        for frame in container.decode(audio=0):
            parts += [f.to_ndarray().reshape(-1)[:f.samples] for f in resampler.resample(frame)]
        parts += [f.to_ndarray().reshape(-1)[:f.samples] for f in resampler.resample(None)]
    return np.concatenate(parts).astype(np.int16), codec


def assert_close_lossy(ref: np.ndarray, got: np.ndarray) -> None:
    r, g = ref.astype(np.float64), got.astype(np.float64)
    n = 2 * (len(r) + len(g))
    xcorr = np.fft.irfft(np.fft.rfft(g, n) * np.conj(np.fft.rfft(r, n)), n)
    lag = int(np.argmax(xcorr[:MAX_CODEC_DELAY]))  # the decoded audio starts `lag` samples late
    aligned = g[lag:lag + len(r)]
    assert abs((len(g) - lag) - len(r)) <= LOSSY_MAX_DURATION_S * 24000 + 1152, (len(g), lag, len(r))
    level_db = 20 * np.log10(np.sqrt(np.mean(aligned ** 2)) / np.sqrt(np.mean(r[:len(aligned)] ** 2)))
    assert abs(level_db) <= LOSSY_MAX_LEVEL_DB, level_db
    corr = float(np.corrcoef(r[:len(aligned)], aligned)[0, 1])
    assert corr >= LOSSY_MIN_CORRELATION, corr
