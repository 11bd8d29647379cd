"""Command-line options of the streaming engine shared by `serve`, `synth` and `wyoming`: --compile.

`--compile auto` compiles the frame step where it pays: on CUDA (inductor kernels replayed as CUDA graphs,
one graph per batch bucket and KV window, built at start with a progress line). On a CPU the compile
takes minutes per graph for a modest gain, so auto leaves it eager there; `--compile on` forces it.
Compiled kernels are cached on disk (TORCHINDUCTOR_CACHE_DIR, default ~/.cache/voicegate/inductor; the
Docker image keeps it in a volume), so later starts skip the code generation.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tts_engine import Engine, TTSModel

COMPILE_CHOICES = ("auto", "on", "off")


def add_engine_arguments(parser: argparse.ArgumentParser, default: str = "auto") -> None:
    """`default`: "auto" for the servers; "off" for one-shot commands (synth), where a compile costs more
    than the one utterance it would speed up."""
    parser.add_argument("--compile", choices=COMPILE_CHOICES, default=default,
                        help=f"torch.compile the engine's frame step: auto = on for CUDA, off on CPU (a CPU "
                             f"compile takes minutes per batch size); compiled kernels are cached on disk "
                             f"(default: {default})")


def compile_cache_dir() -> Path:
    """Where inductor keeps compiled kernels (set for this process unless the user chose one)."""
    chosen = os.environ.get("TORCHINDUCTOR_CACHE_DIR")
    if chosen:
        return Path(chosen)
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "voicegate" / "inductor"
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(cache)
    return cache


def resolve_compile(choice: str, device_type: str) -> bool:
    if choice not in COMPILE_CHOICES:
        raise ValueError(f"--compile must be one of {COMPILE_CHOICES}, not {choice!r}")
    return choice == "on" or (choice == "auto" and device_type == "cuda")


def print_progress(line: str) -> None:
    """The warm-up's progress lines (one per compiled graph), on stderr."""
    print(f"voicegate: {line}", file=sys.stderr, flush=True)


def build_engine(model: TTSModel, choice: str, **settings: Any) -> Engine:
    """The engine of a command: EngineSettings(**settings) with --compile resolved for the model's device;
    when compiled, every graph is built before this returns, one progress line each."""
    from tts_engine import Engine, EngineSettings

    compiled = resolve_compile(choice, model.device.type)
    if compiled:
        print_progress(f"compiling the frame step on {model.device} (kernel cache: {compile_cache_dir()}); "
                       "a first start takes minutes, later ones reuse the cache")
    engine = Engine(model, EngineSettings(compile=compiled, **settings),
                    progress=print_progress if compiled else None)
    if compiled:
        print_progress(f"frame step compiled in {engine.scheduler.warm_up_s:.1f} s")
    return engine
