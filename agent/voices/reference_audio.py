"""Reference audio for voice cloning: any common file -> mono float32 at 24 kHz, with the checks that make a
clone worth keeping (length, level, sample values).

Decoding is PyAV (FFmpeg): WAV/FLAC/MP3/Ogg/Opus/M4A... at any rate, any sample format, any channel count.
Channels are averaged (as the official package does for stereo). Resampling is libswresample through PyAV's
`AudioResampler`: av is already a dependency of the server, it takes any input rate (44.1 kHz -> 24 kHz is
a 160/147 ratio), and its windowed-sinc filter (32 taps per phase, cutoff 0.97 of Nyquist) keeps the band
the speaker encoder looks at (its mel bank stops at 12 kHz, the new Nyquist) clean. The official package uses
librosa/soxr here, so a reference not already at 24 kHz gives an x-vector a little different from theirs.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

TARGET_RATE = 24000
MIN_SECONDS = 1.0  # shorter: refused (the x-vector of a fraction of a word is mostly noise)
WARN_SECONDS = 3.0  # shorter: accepted with a warning (the model card asks for about 3 s or more)
MAX_SECONDS = 30.0  # longer: refused (an ICL prompt carries every reference frame in each prefill)
SILENCE_DBFS = -60.0  # RMS below this (1e-3 of full scale): refused as silence
MAX_FLOAT_PEAK = 4.0  # float samples beyond this are not [-1, 1] audio (e.g. integers stored as floats)


class ReferenceAudioError(ValueError):
    """Reference audio that cannot make a voice; the message says what to do."""


@dataclass(frozen=True)
class ReferenceAudio:
    samples: np.ndarray  # (n,) float32 in [-1, 1], mono, 24 kHz
    sha256: str  # of the source file's bytes
    source_rate: int
    source_channels: int
    source_format: str  # container / codec as FFmpeg names them, e.g. "wav/pcm_s16le"
    warnings: tuple[str, ...] = ()

    @property
    def seconds(self) -> float:
        return self.samples.shape[0] / TARGET_RATE

    @property
    def rms_dbfs(self) -> float:
        return dbfs(self.samples)


def dbfs(samples: np.ndarray) -> float:
    """RMS level in dBFS of float samples in [-1, 1] (-inf for digital silence or no samples)."""
    rms = float(np.sqrt(np.mean(np.square(samples, dtype=np.float64)))) if samples.size else 0.0
    return 20.0 * math.log10(rms) if rms > 0 else -math.inf


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _decode(path: Path) -> tuple[np.ndarray, int, int, str]:
    """(mono float32 at the source rate, source rate, channels, format) — stops early on an overlong file."""
    import av

    try:
        container = av.open(str(path))
    except (av.error.FFmpegError, OSError, UnicodeDecodeError) as exc:
        raise ReferenceAudioError(f"{path}: cannot read it as audio ({exc})") from None
    with container:
        streams = container.streams.audio
        if not streams:
            raise ReferenceAudioError(f"{path}: holds no audio stream")
        stream = streams[0]
        rate, channels = int(stream.codec_context.sample_rate or 0), int(stream.codec_context.channels or 0)
        fmt = f"{container.format.name}/{stream.codec_context.name}"
        if rate <= 0 or channels <= 0:
            raise ReferenceAudioError(f"{path}: no sample rate or channel count ({fmt})")
        limit = int((MAX_SECONDS + 1.0) * rate)  # enough to say "too long" without decoding an hour
        chunks: list[np.ndarray] = []
        total = 0
        try:
            for frame in container.decode(stream):
                # planar float keeps every channel apart whatever the source sample format was
                planar = frame.to_ndarray() if frame.format.is_planar else None
                if planar is None:
                    planar = frame.to_ndarray().reshape(-1, len(frame.layout.channels)).T
                data = _to_float(planar, frame.format.name, path)
                chunks.append(data.mean(axis=0, dtype=np.float64).astype(np.float32))
                total += data.shape[1]
                if total > limit:
                    break
        except av.error.FFmpegError as exc:
            raise ReferenceAudioError(f"{path}: the audio is corrupt ({exc})") from None
    mono = np.concatenate(chunks) if chunks else np.zeros(0, np.float32)
    return mono, rate, channels, fmt


def _to_float(data: np.ndarray, sample_format: str, path: Path) -> np.ndarray:
    """(channels, n) of any FFmpeg sample format -> float32 in [-1, 1]; odd sample values are refused."""
    kind = sample_format.rstrip("p")
    if kind in ("flt", "dbl"):
        out = data.astype(np.float32)
        if not np.isfinite(out).all():
            raise ReferenceAudioError(f"{path}: float samples that are not numbers (NaN/inf): wrong sample format")
        if out.size and float(np.abs(out).max()) > MAX_FLOAT_PEAK:
            raise ReferenceAudioError(f"{path}: float samples up to {float(np.abs(out).max()):.3g}, not audio in "
                                      f"[-1, 1]: wrong sample format (integers stored as floats?)")
        return np.clip(out, -1.0, 1.0)
    scale = {"u8": 128.0, "s16": 32768.0, "s32": 2147483648.0, "s64": 9223372036854775808.0}.get(kind)
    if scale is None:
        raise ReferenceAudioError(f"{path}: unsupported sample format {sample_format!r}")
    out = data.astype(np.float64)
    if kind == "u8":
        out -= 128.0
    return (out / scale).astype(np.float32)


def _resample(mono: np.ndarray, rate: int) -> np.ndarray:
    if rate == TARGET_RATE:
        return mono
    import av

    resampler = av.AudioResampler(format="flt", layout="mono", rate=TARGET_RATE)
    out: list[np.ndarray] = []
    step = 1 << 15
    for start in range(0, mono.shape[0], step):
        frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(mono[None, start:start + step]), format="flt",
                                           layout="mono")
        frame.sample_rate = rate
        out.extend(f.to_ndarray().reshape(-1) for f in resampler.resample(frame))
    out.extend(f.to_ndarray().reshape(-1) for f in resampler.resample(None))  # the filter's tail
    return np.concatenate(out).astype(np.float32) if out else np.zeros(0, np.float32)


def check_samples(samples: np.ndarray, what: str) -> list[str]:
    """Length and level checks on 24 kHz mono audio: raises ReferenceAudioError, or returns warnings."""
    seconds = samples.shape[0] / TARGET_RATE
    if seconds > MAX_SECONDS:
        raise ReferenceAudioError(f"{what}: more than {MAX_SECONDS:.0f} s of audio; cut a clip of 3-10 s of "
                                  f"one person speaking")
    if seconds < MIN_SECONDS:
        raise ReferenceAudioError(f"{what}: {seconds:.2f} s of audio is too short; at least {MIN_SECONDS:.0f} s "
                                  f"is needed (3-10 s of clear speech clones best)")
    level = dbfs(samples)
    if level < SILENCE_DBFS:
        raise ReferenceAudioError(f"{what}: silence (RMS {level:.1f} dBFS, below {SILENCE_DBFS:.0f} dBFS); "
                                  f"record the speaker closer or louder")
    warnings = []
    if seconds < WARN_SECONDS:
        warnings.append(f"{what}: only {seconds:.1f} s of audio; {WARN_SECONDS:.0f} s or more clones better")
    return warnings


def load_reference(path: str | Path) -> ReferenceAudio:
    """Decode, downmix, resample to 24 kHz and check a reference recording."""
    path = Path(path)
    if not path.is_file():
        raise ReferenceAudioError(f"{path}: no such file")
    mono, rate, channels, fmt = _decode(path)
    samples = _resample(mono, rate)
    warnings = check_samples(samples, str(path))
    return ReferenceAudio(samples=samples, sha256=file_sha256(path), source_rate=rate, source_channels=channels,
                          source_format=fmt, warnings=tuple(warnings))
