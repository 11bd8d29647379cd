"""The random real-size checkpoints that benchmarks write once and reuse (~/.cache/voicegate/bench-SIZE)."""

from __future__ import annotations

import os
import sys
from pathlib import Path


def bench_checkpoint(size: str) -> Path:
    """A random CustomVoice checkpoint of `size` (tiny | 0.6b | 1.7b), seed 0, written on first use."""
    from tts_engine import make_checkpoint

    model_dir = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "voicegate" / f"bench-{size}"
    if not (model_dir / "model.safetensors").exists():
        print(f"writing a random {size} checkpoint to {model_dir} ...", file=sys.stderr)
        make_checkpoint(model_dir, size, "custom_voice", seed=0)
    return model_dir
