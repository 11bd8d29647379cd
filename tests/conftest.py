"""Shared fixtures: tiny random checkpoints written by `make-checkpoint`, once per test session."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch

# Tiny models are dominated by per-op overhead: one thread is faster and immune to a busy machine.
torch.set_num_threads(1)


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Callable[..., Path]:
    """tiny_checkpoint(kind="custom_voice", seed=0) -> directory, cached for the session."""
    from tts_engine import make_checkpoint

    made: dict[tuple[str, int], Path] = {}

    def get(kind: str = "custom_voice", seed: int = 0) -> Path:
        key = (kind, seed)
        if key not in made:
            made[key] = make_checkpoint(tmp_path_factory.mktemp(f"tiny-{kind}-{seed}"), "tiny", kind, seed)
        return made[key]

    return get


@pytest.fixture(scope="session")
def tiny_model(tiny_checkpoint: Callable[..., Path]) -> Callable[..., object]:
    """tiny_model(kind="custom_voice", seed=0) -> a loaded TTSModel (fp32, CPU), cached."""
    from tts_engine import load_model

    loaded: dict[tuple[str, int], object] = {}

    def get(kind: str = "custom_voice", seed: int = 0) -> object:
        key = (kind, seed)
        if key not in loaded:
            loaded[key] = load_model(tiny_checkpoint(kind, seed), device="cpu")
        return loaded[key]

    return get
