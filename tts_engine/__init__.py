"""voicegate's Qwen3-TTS 12 Hz engine: model, loading, streaming. No asyncio, no network.

    from tts_engine import Engine, load_model

    with Engine(load_model("./tiny")) as engine:
        with engine.open_stream(speaker="vivian", language="english") as stream:
            stream.push_text("Hello there.")
            stream.finish()
            for frame in stream:      # raises StreamFailed if the engine failed the stream
                play(frame.pcm)       # (1920,) int16 at 24 kHz

Subpackages, each one concept (an import-linter contract in pyproject.toml keeps them layered):
`streaming` (engine, scheduler, frame step, streams, voice cache) and `checkpoints` (loading, random
checkpoints, precision) build on `synthesis` (TTSModel, prompt layouts, offline generation, voice
prompts), which builds on `text` and `sampling`, which build on `model` (the nn modules, their configs,
the incremental codec decoder).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__all__ = [
    "LANGUAGES",
    "CheckpointError",
    "Engine",
    "EngineSettings",
    "Frame",
    "Stream",
    "StreamEnd",
    "StreamFailed",
    "TTSModel",
    "VoicePrompt",
    "load_model",
    "load_voice_prompt",
    "make_checkpoint",
    "save_voice_prompt",
    "validate_voice",
]

if TYPE_CHECKING:
    from .checkpoints.loading import CheckpointError, load_model
    from .checkpoints.random_checkpoint import LANGUAGES, make_checkpoint
    from .streaming.engine import Engine
    from .streaming.scheduler import EngineSettings
    from .streaming.stream import Frame, Stream, StreamEnd, StreamFailed
    from .synthesis.prompt import validate_voice
    from .synthesis.tts_model import TTSModel
    from .synthesis.voice_prompt import VoicePrompt, load_voice_prompt, save_voice_prompt


def __getattr__(name: str) -> Any:
    # Lazy: `tts_engine.files` and `tts_engine.model.config` import without torch (the CLI parses its
    # arguments and the voices CLI writes files first); the first public name imports the engine.
    if name not in __all__:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    from .checkpoints.loading import CheckpointError, load_model
    from .checkpoints.random_checkpoint import LANGUAGES, make_checkpoint
    from .streaming.engine import Engine
    from .streaming.scheduler import EngineSettings
    from .streaming.stream import Frame, Stream, StreamEnd, StreamFailed
    from .synthesis.prompt import validate_voice
    from .synthesis.tts_model import TTSModel
    from .synthesis.voice_prompt import VoicePrompt, load_voice_prompt, save_voice_prompt

    exports = {"LANGUAGES": LANGUAGES, "CheckpointError": CheckpointError, "Engine": Engine,
               "EngineSettings": EngineSettings, "Frame": Frame, "Stream": Stream, "StreamEnd": StreamEnd,
               "StreamFailed": StreamFailed, "TTSModel": TTSModel, "VoicePrompt": VoicePrompt,
               "load_model": load_model, "load_voice_prompt": load_voice_prompt,
               "make_checkpoint": make_checkpoint, "save_voice_prompt": save_voice_prompt,
               "validate_voice": validate_voice}
    globals().update(exports)  # later look-ups skip this function
    return exports[name]
