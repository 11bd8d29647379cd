"""Speech for the voice-in benchmarks and tests: espeak-ng sentences at 16 kHz, and the word error rate."""

from __future__ import annotations

import re
import subprocess
import tempfile
from pathlib import Path

import numpy as np

from agent.media.audio import read_wav

RATE = 16000  # the VAD's and the recognizers' rate


def espeak(text: str, speed: int = 170, amplitude: int = 100) -> np.ndarray:
    """`text` spoken by espeak-ng (en-us), resampled by sox to 16 kHz s16 mono."""
    with tempfile.TemporaryDirectory() as tmp:
        raw, out = Path(tmp) / "raw.wav", Path(tmp) / "out.wav"
        subprocess.run(["espeak-ng", "-v", "en-us", "-s", str(speed), "-a", str(amplitude), "-w", str(raw), text],
                       check=True, capture_output=True)
        subprocess.run(["sox", "-D", str(raw), "-r", str(RATE), "-b", "16", "-c", "1", str(out), "rate", "-v"],
                       check=True, capture_output=True)
        pcm, rate = read_wav(out)
    assert rate == RATE
    return pcm


def words(text: str) -> list[str]:
    """Lower case, punctuation and apostrophes dropped (Whisper writes "apple's" for "apples")."""
    return re.sub(r"[^a-z0-9 ]+", "", text.lower().replace("-", " ")).split()


def wer(reference: str, hypothesis: str) -> float:
    """Word error rate: word-level edit distance / reference length."""
    ref, hyp = words(reference), words(hypothesis)
    row = list(range(len(hyp) + 1))
    for i, r in enumerate(ref, 1):
        prev, row[0] = row[0], i
        for j, h in enumerate(hyp, 1):
            prev, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, prev + (r != h))
    return row[-1] / max(1, len(ref))
