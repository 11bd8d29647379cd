"""The streaming engine's public API: open a stream, push text as it arrives, read 80 ms frames.

    engine = Engine(load_model("./tiny"))
    stream = engine.open_stream(speaker="vivian", language="english")
    for word in "Hello there, how are you?".split(" "):
        stream.push_text(word + " ")
    stream.finish()
    for frame in stream:          # StreamFailed if the engine failed it; asyncio: agent's frames(stream)
        play(frame.pcm)           # (1920,) int16 at 24 kHz
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from typing import Any

import torch
from tokenizers import Tokenizer

from ..synthesis.prompt import prompt_length, validate_voice
from ..synthesis.tts_model import EOS_POLICIES, TTSModel
from ..synthesis.voice_prompt import VoicePrompt
from ..text.incremental import IncrementalTokenizer, load_fast_tokenizer
from .scheduler import EngineSettings, Scheduler
from .stream import Stream


class Engine:
    def __init__(self, model: TTSModel, settings: EngineSettings | None = None,
                 progress: Callable[[str], None] | None = None) -> None:
        """`progress` gets one line per frame-step graph warmed up (compiled) before the engine serves."""
        self.model = model
        self.settings = settings or EngineSettings()
        self._fast_tokenizer = load_fast_tokenizer(model.path)
        self._ids = itertools.count(1)
        self.scheduler = Scheduler(model, self.settings, progress)

    @property
    def tokenizer(self) -> Tokenizer:
        """The checkpoint's fast tokenizer (shared, read-only): the same ids as the streams' text."""
        return self._fast_tokenizer

    def open_stream(self, speaker: str | None = None, language: str = "auto", instruct: str | None = None,
                    xvector: torch.Tensor | None = None, *, voice_prompt: VoicePrompt | None = None,
                    greedy: bool = False, seed: int = 0, eos_policy: str = "default",
                    text: str | None = None, **sampling: Any) -> Stream:
        """A new utterance. Voice fields are validated here, so a bad voice fails before any text.

        `voice_prompt` (Base checkpoints) clones a voice. An x-vector prompt starts on the first token,
        like a preset speaker. An ICL prompt (reference codes + transcript) is exact to the official
        streaming-text ICL mode, which needs the first T2 - R target tokens in the prompt: the stream
        holds its first frame until it has them or the input is finished (`TTSModel.icl_wait_tokens`,
        ~9 tokens per second of reference audio); its frames start after the reference (none of the
        reference audio is emitted).

        `text` is the whole input at once: it is pushed and finished before the stream joins the scheduler,
        so text the stream refuses (over `max_text_chars`, not valid Unicode) raises here with no engine
        row taken. Use the stream as a context manager to stop it on every path (`with engine.open_stream(...)
        as stream:`)."""
        if eos_policy not in EOS_POLICIES:
            raise ValueError(f"eos_policy must be one of {EOS_POLICIES}")
        if instruct is not None and not instruct.isascii():
            try:
                instruct.encode("utf-8")
            except UnicodeEncodeError:
                raise ValueError("instruct holds a lone surrogate (not valid Unicode)") from None
        voice = self.model.voice(speaker, language, instruct, xvector, voice_prompt)
        validate_voice(self.model.config, voice)  # fail now, in the caller's thread, without torch
        if voice.icl:
            assert voice.ref_codes is not None
            positions = prompt_length(self.model.config, voice, len(self.model.role_ids), 0)
            if positions > self.settings.max_positions // 2:
                raise ValueError(f"reference audio too long for this engine: {voice.ref_codes.shape[0]} frames "
                                 f"make a {positions}-position prompt, over half of max_positions="
                                 f"{self.settings.max_positions} (prompt + speech per stream); use a shorter "
                                 f"reference (3-10 s is plenty) or raise max_positions")
        stream = Stream(next(self._ids), voice, self.model.sampling(greedy, seed, **sampling), eos_policy,
                        IncrementalTokenizer(self._fast_tokenizer), self.scheduler.wake,
                        self.settings.max_text_chars)
        if text is not None:
            stream.push_text(text)
            stream.finish()
        self.scheduler.submit(stream)
        return stream

    def close(self) -> None:
        self.scheduler.stop()

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
