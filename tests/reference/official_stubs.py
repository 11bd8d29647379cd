"""Placeholder modules that `import qwen_tts` needs at import time only. Runs INSIDE the reference venv.

Importing any part of qwen_tts imports the whole package, including the unreleased 25 Hz tokenizer,
which imports sox, onnxruntime, torchaudio (PyPI's wheel links CUDA and fails on a CPU machine) and
einops at module level. The 12 Hz models never call them, so empty modules are enough; a call into one
fails loudly (AttributeError / RuntimeError) instead of computing anything.
Import this module before the first `import qwen_tts`.
"""

from __future__ import annotations

import importlib.machinery
import sys
import types

STUBBED = ("sox", "onnxruntime", "torchaudio", "torchaudio.compliance", "torchaudio.compliance.kaldi", "einops")


def _unavailable(name: str):  # type: ignore[no-untyped-def]
    def call(*args, **kwargs):  # type: ignore[no-untyped-def]
        raise RuntimeError(f"{name} is a stub in the reference env (12 Hz path only)")
    return call


def install() -> None:
    for name in STUBBED:
        if name in sys.modules:
            continue
        module = types.ModuleType(name)
        # A spec lets importlib.util.find_spec() (used by transformers' availability checks) see it.
        module.__spec__ = importlib.machinery.ModuleSpec(name, loader=None)
        sys.modules[name] = module
        parent, _, child = name.rpartition(".")
        if parent:
            setattr(sys.modules[parent], child, module)
    einops = sys.modules["einops"]
    for fn in ("rearrange", "repeat", "reduce"):
        if not hasattr(einops, fn):
            setattr(einops, fn, _unavailable(f"einops.{fn}"))


install()
