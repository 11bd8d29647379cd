"""A cloned voice, ready to speak: the x-vector and, for ICL cloning, the reference codes and transcript.

Extracting one needs the speaker encoder and the codec encoder (`TTSModel.make_voice_prompt`); using a
saved one needs neither: `save_voice_prompt` / `load_voice_prompt` keep the tensors in one safetensors
file with the metadata as JSON in its header.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from ..files import atomic_file

FORMAT = "voicegate.voice_prompt/1"


@dataclass(frozen=True)
class VoicePrompt:
    """What a Base checkpoint needs to clone a voice.

    x-vector mode (`ref_codes is None`) puts only the speaker vector in the prompt and accepts fully
    incremental text. ICL mode also puts the reference transcript and its codes in the prompt, which makes
    the clone closer but needs the first few target tokens before the prefill (see the README)."""

    xvector: torch.Tensor  # (H,) float32: the ECAPA-TDNN output of the reference audio
    ref_codes: torch.Tensor | None = None  # (F, 16) int64: the codec encoder's codes of the reference audio
    ref_text: str | None = None  # the transcript of the reference audio (ICL)

    def __post_init__(self) -> None:
        if self.xvector.dim() != 1:
            raise ValueError(f"x-vector must be (H,), got {tuple(self.xvector.shape)}")
        if (self.ref_codes is None) != (self.ref_text is None):
            raise ValueError("ICL needs both the reference codes and the reference text (or neither)")
        if self.ref_codes is not None and (self.ref_codes.dim() != 2 or self.ref_codes.shape[1] != 16):
            raise ValueError(f"reference codes must be (F, 16), got {tuple(self.ref_codes.shape)}")
        if self.ref_text is not None and not self.ref_text.strip():
            raise ValueError("the reference transcript is empty")

    @property
    def icl(self) -> bool:
        return self.ref_codes is not None

    @property
    def hidden_size(self) -> int:
        return int(self.xvector.shape[0])


def save_voice_prompt(path: str | os.PathLike[str], prompt: VoicePrompt, metadata: dict[str, Any]) -> Path:
    """Write atomically (`atomic_file`)."""
    path = Path(path)
    tensors = {"xvector": prompt.xvector.detach().float().cpu().contiguous()}
    if prompt.ref_codes is not None:
        tensors["ref_codes"] = prompt.ref_codes.detach().long().cpu().contiguous()
    meta = {**metadata, "ref_text": prompt.ref_text}
    header = {"format": FORMAT, "metadata": json.dumps(meta, ensure_ascii=False)}
    with atomic_file(path) as tmp:
        save_file(tensors, tmp, metadata=header)
    return path


def load_voice_prompt(path: str | os.PathLike[str]) -> tuple[VoicePrompt, dict[str, Any]]:
    """(prompt, metadata) from a file written by `save_voice_prompt`; ValueError names a bad file."""
    path = Path(path)
    try:
        with safe_open(str(path), framework="pt") as handle:
            header = handle.metadata() or {}
            if header.get("format") != FORMAT:
                raise ValueError(f"{path}: not a voicegate voice prompt (format {header.get('format')!r})")
            tensors = {k: handle.get_tensor(k) for k in handle.keys()}  # noqa: SIM118
        meta = json.loads(header.get("metadata", "{}"))
    except (SafetensorError, OSError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path}: unreadable voice prompt ({exc})") from exc
    if "xvector" not in tensors:
        raise ValueError(f"{path}: voice prompt without an x-vector")
    ref_text = meta.pop("ref_text", None)
    prompt = VoicePrompt(tensors["xvector"].float(), tensors.get("ref_codes"), ref_text)
    return prompt, meta
