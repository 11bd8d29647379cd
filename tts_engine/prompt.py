"""Talker prompt layouts of the official implementation, as plain embeddings.

Notation (notes/qwen3-tts-architecture.md §1): T(x) = text_projection(text_embedding(x)); C(id) = codec
embedding; P/B/E = T(tts_pad)/T(tts_bos)/T(tts_eos).

Streaming-text layout (official non_streaming_mode=False), for N target tokens t_0..t_{N-1}:
  [T(instruct tokens)] T(<|im_start|>) T(assistant) T(\\n)  P+C(h_0) ... P+C(h_{n-2})  B+C(codec_pad)
  T(t_0)+C(codec_bos)
and decode step k adds trailing[k] = T(t_{k+1}) for k < N-1, E at k = N-1, P afterwards.
The prefix before T(t_0) needs no target text: it is built (and can be cached) before any text arrives.

Non-streaming layout: prefix, then T(t_i)+C(codec_pad) for every i, E+C(codec_pad), P+C(codec_bos);
every decode step adds P.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .config import Qwen3TTSConfig
from .model.talker import Talker


@dataclass(frozen=True)
class Voice:
    """Who speaks and how: a preset speaker (CustomVoice), an x-vector (Base), or none (VoiceDesign)."""

    speaker: str | None = None
    language: str = "auto"
    instruct: str | None = None
    xvector: torch.Tensor | None = None  # (H,), the ECAPA output of a reference recording


def codec_header_ids(cfg: Qwen3TTSConfig, voice: Voice) -> list[int]:
    """Codec ids of the think/language tags (the speaker row is separate)."""
    talker = cfg.talker_config
    language = voice.language.lower()
    language_id: int | None = None
    if language != "auto":
        if language not in talker.codec_language_id:
            raise ValueError(f"unsupported language {voice.language!r}; supported: {supported_languages(cfg)}")
        language_id = talker.codec_language_id[language]
    speaker = voice.speaker.lower() if voice.speaker else None
    if speaker and language in ("chinese", "auto"):
        dialect = talker.spk_is_dialect.get(speaker, False)
        if dialect:  # dialect speakers (e.g. dylan -> beijing_dialect) force their dialect tag
            language_id = talker.codec_language_id[dialect]
    if language_id is None:
        return [talker.codec_nothink_id, talker.codec_think_bos_id, talker.codec_think_eos_id]
    return [talker.codec_think_id, talker.codec_think_bos_id, language_id, talker.codec_think_eos_id]


def validate_voice(cfg: Qwen3TTSConfig, voice: Voice) -> None:
    """Raise ValueError for a language or speaker this checkpoint does not have."""
    codec_header_ids(cfg, voice)
    if voice.speaker and voice.xvector is None and voice.speaker.lower() not in cfg.talker_config.spk_id:
        raise ValueError(f"unknown speaker {voice.speaker!r}; this checkpoint has: "
                         f"{sorted(cfg.talker_config.spk_id) or 'no preset speakers'}")


def supported_languages(cfg: Qwen3TTSConfig) -> list[str]:
    return ["auto", *sorted(k for k in cfg.talker_config.codec_language_id if "dialect" not in k)]


def speaker_row(talker: Talker, cfg: Qwen3TTSConfig, voice: Voice) -> torch.Tensor | None:
    """(1, H) speaker vector, or None when the voice has no speaker row (VoiceDesign)."""
    if voice.xvector is not None:
        if cfg.tts_model_type != "base":
            raise ValueError("x-vector voices need a Base checkpoint")
        return voice.xvector.reshape(1, -1).to(talker.codec_head.weight)
    if not voice.speaker:
        return None
    name = voice.speaker.lower()
    if name not in cfg.talker_config.spk_id:
        raise ValueError(f"unknown speaker {voice.speaker!r}; this checkpoint has: "
                         f"{sorted(cfg.talker_config.spk_id) or 'no preset speakers'}")
    ids = torch.tensor([cfg.talker_config.spk_id[name]], device=talker.codec_head.weight.device)
    return talker.embed_codec(ids)


@torch.no_grad()
def build_prefix(talker: Talker, cfg: Qwen3TTSConfig, voice: Voice, role_ids: list[int],
                 instruct_ids: list[int] | None) -> torch.Tensor:
    """Every position before the first target token: (L, H)."""
    device = talker.codec_head.weight.device
    tcfg = cfg.talker_config
    header = talker.embed_codec(torch.tensor(codec_header_ids(cfg, voice), device=device))  # (h, H)
    speaker = speaker_row(talker, cfg, voice)
    tail = talker.embed_codec(torch.tensor([tcfg.codec_pad_id, tcfg.codec_bos_id], device=device))
    codec = torch.cat([header, *([speaker] if speaker is not None else []), tail])  # (n, H)
    specials = talker.embed_text(torch.tensor([cfg.tts_pad_token_id, cfg.tts_bos_token_id], device=device))
    pad, bos = specials[0], specials[1]
    # The codec track rides under P... P B; its last entry (codec_bos) waits for the first target token.
    text_track = torch.cat([pad.expand(codec.shape[0] - 2, -1), bos[None]])
    parts = [talker.embed_text(torch.tensor(role_ids, device=device)), text_track + codec[:-1]]
    if instruct_ids:
        parts.insert(0, talker.embed_text(torch.tensor(instruct_ids, device=device)))
    return torch.cat(parts)


@dataclass
class TextRows:
    """Text-track vectors the layouts need: P, E and the codec rows that pair with them."""

    pad: torch.Tensor  # P (H,)
    eos: torch.Tensor  # E (H,)
    codec_pad: torch.Tensor  # C(codec_pad) (H,)
    codec_bos: torch.Tensor  # C(codec_bos) (H,)

    @classmethod
    @torch.no_grad()
    def build(cls, talker: Talker, cfg: Qwen3TTSConfig) -> TextRows:
        device = talker.codec_head.weight.device
        text = talker.embed_text(torch.tensor([cfg.tts_pad_token_id, cfg.tts_eos_token_id], device=device))
        tcfg = cfg.talker_config
        codec = talker.embed_codec(torch.tensor([tcfg.codec_pad_id, tcfg.codec_bos_id], device=device))
        return cls(pad=text[0], eos=text[1], codec_pad=codec[0], codec_bos=codec[1])


@torch.no_grad()
def first_target_row(talker: Talker, rows: TextRows, first_token: int) -> torch.Tensor:
    """Streaming layout: the first target token rides with codec_bos. (1, H)"""
    device = rows.pad.device
    return talker.embed_text(torch.tensor([first_token], device=device)) + rows.codec_bos


@torch.no_grad()
def non_streaming_body(talker: Talker, rows: TextRows, target_ids: list[int]) -> torch.Tensor:
    """Non-streaming layout after the prefix: (N + 2, H)."""
    device = rows.pad.device
    text = torch.cat([talker.embed_text(torch.tensor(target_ids, device=device)), rows.eos[None]])
    return torch.cat([text + rows.codec_pad, (rows.pad + rows.codec_bos)[None]])
