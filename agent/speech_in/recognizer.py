"""The recognizer interface, its results and errors, and the `--stt` choice.

A backend is any object with `name` and a blocking `transcribe(pcm16k, language, partial=...)`: it runs on
the recognizer service's worker thread (agent.speech_in.service), never on the event loop, one call at a
time. `partial=True` asks for a quick hypothesis of a turn still growing (a backend may decode more
cheaply); `partial=False` is the turn's final transcript.

`--stt none|faster-whisper[:MODEL_OR_DIR]`: `parse_stt` reads it, `load_recognizer` builds the backend
(models load from local files only: a directory, or a name already in the local Hugging Face cache).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np

SAMPLE_RATE = 16000  # every backend takes 16 kHz mono (the VAD's rate)

# Stable error codes (sent to clients as they are)
STT_UNAVAILABLE = "stt_unavailable"  # no recognizer configured, or its package or model is missing
STT_FAILED = "stt_failed"  # the backend raised on this request
STT_BUSY = "stt_busy"  # the service's queue is full


class SttError(Exception):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


@dataclass(frozen=True)
class Word:
    text: str
    start_ms: float  # from the start of the audio passed in
    end_ms: float
    probability: float | None = None


@dataclass(frozen=True)
class Transcript:
    text: str
    language: str | None  # the language used or detected
    words: tuple[Word, ...] = ()  # empty when the backend or the request gives no word timings
    audio_ms: float = 0.0  # length of the audio transcribed
    partial: bool = False


class Recognizer(Protocol):
    name: str

    def transcribe(self, pcm16k: np.ndarray, language: str | None = None, *, partial: bool = False) -> Transcript:
        """int16 (or float32 in [-1, 1]) mono samples at 16 kHz -> transcript. Blocking; may raise."""
        ...


def as_float32(pcm16k: np.ndarray) -> np.ndarray:
    """int16 or float samples -> float32 in [-1, 1] (what the Whisper family takes)."""
    if pcm16k.dtype == np.int16:
        return pcm16k.astype(np.float32) / 32768.0
    return np.asarray(pcm16k, dtype=np.float32)


@dataclass(frozen=True)
class SttChoice:
    backend: str  # "faster-whisper"
    model: str | None  # a model directory or a local-cache name; None: the backend's default


BACKENDS = ("faster-whisper",)


def parse_stt(spec: str) -> SttChoice | None:
    """`none` -> None; `faster-whisper` or `faster-whisper:MODEL_OR_DIR` -> SttChoice. ValueError otherwise."""
    spec = spec.strip()
    if spec.lower() == "none":
        return None
    backend, _, model = spec.partition(":")
    if backend not in BACKENDS:
        raise ValueError(f"--stt: unknown recognizer {backend!r} (expected none or {', '.join(BACKENDS)}[:MODEL])")
    if _ and not model:
        raise ValueError(f"--stt {spec!r}: empty model after ':'")
    return SttChoice(backend, model or None)


def load_recognizer(choice: SttChoice, device: str = "cpu", threads: int = 0) -> Recognizer:
    """Build the backend now (loading its model): SttError(stt_unavailable) when it cannot be."""
    if choice.backend == "faster-whisper":
        from agent.speech_in.faster_whisper import FasterWhisperRecognizer, FasterWhisperSettings

        model = choice.model or FasterWhisperSettings.model
        return FasterWhisperRecognizer(FasterWhisperSettings(model=model, device=device, cpu_threads=threads))
    raise SttError(STT_UNAVAILABLE, f"unknown recognizer {choice.backend!r}")
