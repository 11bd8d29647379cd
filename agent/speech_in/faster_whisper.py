"""The faster-whisper backend (CTranslate2): int8 on a CPU, float16 on CUDA, local model files only.

CTranslate2 releases the GIL while it decodes, so the service's worker thread leaves the event loop free.
Partials decode greedily; finals use `beam_size` and, if asked, word timings. A turn is at most 30 s (one
Whisper window), so segment timestamps are not decoded unless word timings are asked for.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from agent.speech_in.recognizer import SAMPLE_RATE, STT_UNAVAILABLE, SttError, Transcript, Word, as_float32

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class FasterWhisperSettings:
    # A CTranslate2 Whisper directory (model.bin, config.json, tokenizer.json, vocabulary.*), or a name
    # (tiny.en, small, ...) already in the local Hugging Face cache: nothing is ever downloaded.
    model: str = "small"
    device: str = "cpu"  # "cpu", "cuda" or "auto"
    compute_type: str = "auto"  # auto: int8 on a CPU, float16 on CUDA; or any CTranslate2 compute type
    cpu_threads: int = 0  # 0: CTranslate2's default
    beam_size: int = 1  # finals; greedy keeps the end-of-turn latency low (5 is Whisper's usual)
    word_timestamps: bool = False  # finals only: extra alignment pass
    # Whisper makes up text on silence; a segment it thinks is silence is dropped (its own threshold).
    no_speech_threshold: float = 0.6


class FasterWhisperRecognizer:
    name = "faster-whisper"

    def __init__(self, settings: FasterWhisperSettings | None = None) -> None:
        self.settings = s = settings or FasterWhisperSettings()
        try:
            from faster_whisper import WhisperModel
        except ImportError as exc:
            raise SttError(STT_UNAVAILABLE, "faster-whisper is not installed (pip install 'voicegate[stt]')") from exc
        compute = s.compute_type
        if compute == "auto":
            compute = "float16" if s.device == "cuda" else "int8"
        path = Path(s.model).expanduser()
        if (path.is_absolute() or s.model.startswith(".")) and not (path / "model.bin").is_file():
            raise SttError(STT_UNAVAILABLE, f"no CTranslate2 Whisper model in {path} (model.bin missing)")
        try:
            self._model: Any = WhisperModel(str(path) if path.is_dir() else s.model, device=s.device,
                                            compute_type=compute, cpu_threads=s.cpu_threads,
                                            local_files_only=True)
        except Exception as exc:  # huggingface_hub's "not in the cache" errors, CTranslate2 load errors
            raise SttError(STT_UNAVAILABLE, f"cannot load faster-whisper model {s.model!r}: {exc}") from exc
        self.compute_type = compute
        self.multilingual = bool(self._model.model.is_multilingual)
        # What a server advertises (Wyoming `info`): Whisper's language codes, and the model's short name.
        self.languages: tuple[str, ...] = tuple(self._model.supported_languages)
        self.model_name = path.name if path.is_dir() else s.model

    def transcribe(self, pcm16k: np.ndarray, language: str | None = None, *, partial: bool = False) -> Transcript:
        s = self.settings
        audio = as_float32(pcm16k)
        if not self.multilingual:
            language = "en"
        words = s.word_timestamps and not partial
        segments, info = self._model.transcribe(
            audio, language=language, beam_size=1 if partial else s.beam_size,
            # each turn stands alone: no prompt from earlier windows, no temperature fallback on partials
            condition_on_previous_text=False, temperature=0.0 if partial else [0.0, 0.2, 0.4],
            without_timestamps=not words, word_timestamps=words, no_speech_threshold=s.no_speech_threshold,
            vad_filter=False)
        texts: list[str] = []
        found: list[Word] = []
        for seg in segments:  # a lazy generator: decoding happens here
            texts.append(seg.text)
            for w in seg.words or ():
                found.append(Word(w.word.strip(), w.start * 1000.0, w.end * 1000.0, w.probability))
        return Transcript(text="".join(texts).strip(), language=info.language, words=tuple(found),
                          audio_ms=len(audio) * 1000.0 / SAMPLE_RATE, partial=partial)
