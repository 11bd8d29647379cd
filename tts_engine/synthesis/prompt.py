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

ICL cloning (Base; official `generate_icl_prompt`), with the reference transcript's R tokens r_j and
the F reference frames: the prefix (x-vector as the speaker row) is followed, instead of T(t_0)+C(bos), by
an ICL block built from two tracks,
  text  = T(r_0) ... T(r_{R-1}) T(t_0) ... T(t_{N-1}) E          (T1 = R + N + 1 rows)
  codec = C(codec_bos)  S(frame_0) ... S(frame_{F-1})             (T2 = 1 + F rows; S = sum of the
                                                                    16 code embeddings of a frame)
  streaming:     block = text[:T2] + codec (text padded with P to T2 when T1 <= T2);
                 decode step k adds text[T2 + k] (P once the text track is exhausted).
  non-streaming: block = (text + C(codec_pad)) ++ (codec + P); every decode step adds P.
So in the streaming layout the prefill holds the first T2 - R target rows (tokens, then E): a stream
fed incrementally must wait for min(N + 1, T2 - R) target rows before its prefill (`icl_target_rows`).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import torch

from ..model.config import Qwen3TTSConfig
from ..model.talker import Talker


@dataclass(frozen=True, eq=False)
class Voice:
    """Who speaks and how: a preset speaker (CustomVoice), an x-vector (Base), or none (VoiceDesign).

    ICL cloning (Base) adds the reference transcript's token ids and the reference codes."""

    speaker: str | None = None
    language: str = "auto"
    instruct: str | None = None
    xvector: torch.Tensor | None = None  # (H,), the ECAPA output of a reference recording
    ref_ids: tuple[int, ...] | None = None  # ICL: reference transcript ids (official ref template, [3:-2])
    ref_codes: torch.Tensor | None = None  # ICL: (F, 16) int64 codes of the reference recording

    @property
    def icl(self) -> bool:
        return self.ref_codes is not None

    def cache_key(self) -> tuple:
        """Equal for voices that build the same prompt: the tensors by content (a digest), not identity."""
        digest = None
        if self.xvector is not None:
            h = hashlib.sha256(self.xvector.detach().float().cpu().numpy().tobytes())
            if self.ref_codes is not None:
                h.update(self.ref_codes.detach().long().cpu().numpy().tobytes())
                h.update(repr(self.ref_ids).encode())
            digest = h.hexdigest()
        return (self.speaker, self.language, self.instruct, digest)


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


def prompt_length(cfg: Qwen3TTSConfig, voice: Voice, n_role: int, n_instruct: int) -> int:
    """Talker positions before the first frame (streaming layout): the prefix `build_prefix` makes, then
    the first target row, or the ICL block (T2 = 1 + F rows)."""
    has_speaker = voice.xvector is not None or bool(voice.speaker)
    prefix = n_instruct + n_role + len(codec_header_ids(cfg, voice)) + int(has_speaker) + 1  # + B/codec_pad
    return prefix + (1 + voice.ref_codes.shape[0] if voice.ref_codes is not None else 1)


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


@dataclass(frozen=True)
class IclRows:
    """The target-independent tracks of an ICL prompt (cacheable per voice)."""

    ref_text: torch.Tensor  # (R, H): T(r_0) ... T(r_{R-1})
    codec: torch.Tensor  # (T2, H) = (1 + F, H): C(codec_bos), then S(frame_f) for each reference frame

    @property
    def ref_len(self) -> int:
        return self.ref_text.shape[0]

    @property
    def block_len(self) -> int:
        return self.codec.shape[0]


@torch.no_grad()
def reference_frame_rows(talker: Talker, ref_codes: torch.Tensor) -> torch.Tensor:
    """(F, 16) codes -> (F, H): per frame, the sum of its 16 code embeddings (code 0 in the talker's
    table, codes 1..15 in the code predictor's tables), summed in one reduction as the official does."""
    codes = ref_codes.to(talker.codec_head.weight.device).long()
    tables = talker.code_predictor.model.codec_embedding
    per_group = [talker.embed_codec(codes[:, 0])] + [tables[g - 1](codes[:, g]) for g in range(1, codes.shape[1])]
    return torch.stack(per_group, dim=1).sum(dim=1)  # (F, 16, H) -> (F, H)


@torch.no_grad()
def build_icl_rows(talker: Talker, cfg: Qwen3TTSConfig, voice: Voice) -> IclRows:
    assert voice.ref_ids is not None and voice.ref_codes is not None, "not an ICL voice"
    device = talker.codec_head.weight.device
    ref_text = talker.embed_text(torch.tensor(list(voice.ref_ids), device=device))  # (R, H)
    bos = talker.embed_codec(torch.tensor([cfg.talker_config.codec_bos_id], device=device))  # (1, H)
    return IclRows(ref_text=ref_text, codec=torch.cat([bos, reference_frame_rows(talker, voice.ref_codes)]))


def icl_target_rows(ref_len: int, block_len: int, n_target: int | None) -> int:
    """Target rows (target tokens, then E) the streaming ICL block holds: min(N + 1, T2 - R), at least 0.

    `n_target=None` (text still arriving): T2 - R, the rows a stream must have before its prefill."""
    rows = max(0, block_len - ref_len)
    return rows if n_target is None else min(n_target + 1, rows)


@torch.no_grad()
def icl_layout(text: torch.Tensor, icl: IclRows, rows: TextRows, non_streaming: bool
               ) -> tuple[torch.Tensor, torch.Tensor]:
    """The official ICL block after the prefix and the trailing text rows of the decode steps.

    text (T1, H) = [T(ref ids), T(target ids), E]. Returns (block (T2, H) streaming | (T1 + T2, H)
    non-streaming, trailing (K, H)); decode step k adds trailing[k], P once k >= K."""
    if non_streaming:
        block = torch.cat([text + rows.codec_pad, icl.codec + rows.pad])
        return block, rows.pad[None]
    t2 = icl.block_len
    if text.shape[0] > t2:
        return text[:t2] + icl.codec, text[t2:]
    padded = torch.cat([text, rows.pad.expand(t2 - text.shape[0], -1)])
    return padded + icl.codec, rows.pad[None]


@torch.no_grad()
def icl_block(text: torch.Tensor, icl: IclRows, rows: TextRows, start: int) -> torch.Tensor:
    """Streaming ICL block rows [start, T2) from the text-track rows known so far, text (n, H) = the
    text track from row `start` on (tts_pad fills it when the whole text, E included, is shorter)."""
    t2 = icl.block_len
    if text.shape[0] < t2 - start:
        text = torch.cat([text, rows.pad.expand(t2 - start - text.shape[0], -1)])
    return text[:t2 - start] + icl.codec[start:]
