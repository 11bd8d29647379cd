"""ElevenLabs' output_format names -> encoders; each format decodes (PyAV) to the engine's audio, resampled."""

from __future__ import annotations

import io

import av
import numpy as np
import pytest

from agent.apis.output_format import OutputEncoder, parse_output_format
from agent.media.audio import Resampler

RATE = 24000


def speechlike(seconds: float = 1.2) -> np.ndarray:
    t = np.arange(int(seconds * RATE)) / RATE
    wave = np.sin(2 * np.pi * 220 * t) + 0.5 * np.sin(2 * np.pi * 660 * t) + 0.25 * np.sin(2 * np.pi * 1100 * t)
    return (wave * np.clip(np.sin(np.pi * t / seconds) * 3, 0, 1) * 6000).astype(np.int16)


def encode(name: str, pcm: np.ndarray) -> tuple[bytes, int]:
    encoder = OutputEncoder(parse_output_format(name))
    chunks, nonempty = [], 0
    for i in range(0, len(pcm), 1920):
        chunk = encoder.push(pcm[i:i + 1920])
        nonempty += bool(chunk)
        chunks.append(chunk)
    chunks.append(encoder.end_utterance(stopped=False))
    chunks.append(encoder.finish())
    return b"".join(chunks), nonempty


def decode(data: bytes, fmt: str | None = None) -> tuple[np.ndarray, int]:
    with av.open(io.BytesIO(data), format=fmt) as container:
        stream = container.streams.audio[0]
        rate = stream.rate
        frames = [f.to_ndarray().reshape(-1).astype(np.float32) for f in container.decode(stream)]
    pcm = np.concatenate(frames)
    if np.abs(pcm).max() <= 1.0:  # float codecs decode to [-1, 1]
        pcm = pcm * 32767
    return pcm, rate


def assert_like(reference: np.ndarray, got: np.ndarray, rate: int, tolerance_db: float) -> None:
    want = Resampler(RATE, rate).push(reference).astype(np.float32)
    assert abs(len(got) - len(want)) <= 0.1 * len(want) + 2048, (len(got), len(want))
    level = lambda x: 20 * np.log10(np.sqrt(np.mean(np.square(x))) + 1e-9)  # noqa: E731
    assert abs(level(got) - level(want)) <= tolerance_db, (level(got), level(want))


@pytest.mark.parametrize(("name", "rate", "container"), [
    ("mp3_22050_32", 22050, "mp3"), ("mp3_44100_128", 44100, "mp3"), ("opus_48000_64", 48000, "ogg"),
    ("ulaw_8000", 8000, "mulaw"), ("alaw_8000", 8000, "alaw")])
def test_each_format_decodes_to_the_engine_audio(name: str, rate: int, container: str) -> None:
    source = speechlike()
    data, nonempty = encode(name, source)
    assert nonempty >= len(source) // 1920 // 2  # streamed: bytes come out frame by frame
    if container in ("mulaw", "alaw"):
        assert len(data) == pytest.approx(len(source) / 3, abs=64)  # one byte per 8 kHz sample, no header
        got = _decode_g711(data, container)
    else:
        got, got_rate = decode(data)
        assert got_rate == rate
    assert_like(source, got, rate, tolerance_db=1.5)


def _decode_g711(data: bytes, container: str) -> np.ndarray:
    codec = av.CodecContext.create("pcm_mulaw" if container == "mulaw" else "pcm_alaw", "r")
    codec.sample_rate, codec.layout = 8000, "mono"
    frames = codec.decode(av.Packet(data))
    return np.concatenate([f.to_ndarray().reshape(-1) for f in frames]).astype(np.float32)


def test_pcm_rates_and_refusals() -> None:
    assert parse_output_format("pcm_16000").sample_rate == 16000
    assert parse_output_format("mp3_44100_192").bit_rate == 192_000
    for bad in ("mp3_44100", "mp3_8000_32", "opus_24000_64", "ulaw_16000", "pcm_12345", "wav", "mp3_44100_32_x"):
        with pytest.raises(ValueError, match="unsupported output_format"):
            parse_output_format(bad)
