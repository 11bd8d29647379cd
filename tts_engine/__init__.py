"""voicegate's Qwen3-TTS 12 Hz engine: model, loading, streaming. No asyncio, no network."""

from __future__ import annotations

from typing import Any

__all__ = ["CheckpointError", "load_model"]


def __getattr__(name: str) -> Any:
    # Lazy: `import tts_engine.config` must not pull torch models, transformers and safetensors.
    if name in __all__:
        from . import loading

        return getattr(loading, name)
    raise AttributeError(name)
