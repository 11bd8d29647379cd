"""Reference recordings for the voice tests, made here: espeak-ng speech, converted with sox and PyAV."""

from __future__ import annotations

import subprocess
from pathlib import Path

import av
import numpy as np
import soundfile as sf

PHRASE = "This is a short reference recording for a cloned voice, made by a speech synthesizer."


def espeak_wav(path: Path, text: str = PHRASE) -> Path:
    """espeak-ng speech (22.05 kHz mono s16), about 4-5 s for PHRASE."""
    subprocess.run(["espeak-ng", "-v", "en-us", "-s", "160", "-w", str(path), text], check=True)
    return path


def sox(src: Path, dst: Path, *effects_and_opts: str) -> Path:
    """sox SRC [output options] DST, e.g. sox(a, b, "-r", "16000", "-c", "2")."""
    subprocess.run(["sox", "-D", str(src), *effects_and_opts, str(dst)], check=True)
    return dst


def read_float(path: Path) -> tuple[np.ndarray, int]:
    data, rate = sf.read(str(path), dtype="float32", always_2d=False)
    return data, rate


def write_float_wav(path: Path, samples: np.ndarray, rate: int, subtype: str = "FLOAT") -> Path:
    sf.write(str(path), samples, rate, subtype=subtype)
    return path


def encode(path: Path, samples: np.ndarray, rate: int, codec: str, fmt: str | None = None) -> Path:
    """Encode mono float samples with PyAV (e.g. codec "libmp3lame" into .mp3, "libopus" into .ogg)."""
    with av.open(str(path), "w", format=fmt) as out:
        stream = out.add_stream(codec, rate=rate, layout="mono")
        pcm = (np.clip(samples, -1, 1) * 32767).astype(np.int16)[None]
        frame = av.AudioFrame.from_ndarray(pcm, format="s16", layout="mono")
        frame.sample_rate = rate
        for packet in stream.encode(frame):
            out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)
    return path


def dir_state(root: Path) -> dict[str, bytes]:
    """Every file under `root` (hidden ones too) with its bytes: 'unchanged' means equal states."""
    if not root.exists():
        return {}
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}
