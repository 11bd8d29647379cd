"""Top-level module whose state dict is the official model.safetensors: `talker.*` (+ `speaker_encoder.*`)."""

from __future__ import annotations

from torch import nn

from .config import Qwen3TTSConfig
from .speaker_encoder import SpeakerEncoder
from .talker import Talker


class Qwen3TTS(nn.Module):
    def __init__(self, cfg: Qwen3TTSConfig) -> None:
        super().__init__()
        self.config = cfg
        self.talker = Talker(cfg.talker_config)
        # Only Base checkpoints carry the ECAPA-TDNN speaker encoder (voice cloning).
        self.speaker_encoder = SpeakerEncoder(cfg.speaker_encoder_config) if cfg.has_speaker_encoder else None
