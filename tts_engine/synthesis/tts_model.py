"""TTSModel: a loaded checkpoint (talker, codec decoder, tokenizer, defaults) and whole-text synthesis.

Built by `checkpoints.loading.load_model`, which also applies the precision mode: this module knows
neither files nor precision."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..model.codec_decoder import CodecDecoder
from ..model.codec_encoder import CodecEncoder
from ..model.codec_stream import CodecStreamState, StreamingCodecDecoder
from ..model.config import Qwen3TTSConfig, SpeechTokenizerConfig
from ..model.qwen3_tts import Qwen3TTS
from ..sampling.processors import SamplingParams
from ..text.tokenizer import TextTokenizer
from .generate import generate_frames
from .prompt import (
    TextRows,
    Voice,
    build_icl_rows,
    build_prefix,
    first_target_row,
    icl_layout,
    icl_target_rows,
    non_streaming_body,
    supported_languages,
)
from .voice_prompt import VoicePrompt

log = logging.getLogger(__name__)

SAMPLE_RATE = 24000
SAMPLES_PER_FRAME = 1920  # 80 ms at 24 kHz
EOS_POLICIES = ("default", "official")


@dataclass
class Synthesis:
    codes: torch.Tensor  # (T, 16) int64
    audio: np.ndarray  # (T * 1920,) float32 in [-1, 1]; ICL: + the 0-1 reference samples the official cut keeps
    ended_by: str  # "eos" | "cap"
    text_ids: list[int]


def runaway_cap(n_text_tokens: int, frames_per_token: float = 8.0, slack: int = 40) -> int:
    """Frames an utterance may run before it is cut: real speech needs ~3-4 frames per text token."""
    return slack + int(frames_per_token * n_text_tokens)


class TTSModel:
    def __init__(self, path: Path, cfg: Qwen3TTSConfig, st_cfg: SpeechTokenizerConfig, model: Qwen3TTS,
                 codec: CodecDecoder, tokenizer: TextTokenizer, generation: dict[str, Any],
                 codec_encoder_loader: Callable[[], CodecEncoder] | None = None) -> None:
        """`codec_encoder_loader` reads the codec encoder on the first ICL clone (None: no ICL cloning)."""
        self.path, self.config, self.speech_config = path, cfg, st_cfg
        self.model, self.talker, self.codec = model, model.talker, codec
        self.tokenizer, self.generation_defaults = tokenizer, generation
        self.rows = TextRows.build(self.talker, cfg)
        self.role_ids = tokenizer.role_ids()
        self.engine_active = False  # set while an Engine's thread owns the KV caches
        self.precision = "fp32"  # talker/predictor precision mode (checkpoints.precision); fp32 = as loaded
        self.codec_encoder_loader = codec_encoder_loader
        self._codec_encoder: CodecEncoder | None = None  # loaded on first ICL clone

    @property
    def device(self) -> torch.device:
        return self.talker.codec_head.weight.device

    @property
    def speakers(self) -> list[str]:
        return sorted(self.config.talker_config.spk_id)

    @property
    def languages(self) -> list[str]:
        return supported_languages(self.config)

    def sampling(self, greedy: bool = False, seed: int = 0, **overrides: Any) -> SamplingParams:
        return SamplingParams.from_generation_config(self.generation_defaults, greedy=greedy, seed=seed,
                                                     **overrides)

    def voice(self, speaker: str | None = None, language: str = "auto", instruct: str | None = None,
              xvector: torch.Tensor | None = None, voice_prompt: VoicePrompt | None = None) -> Voice:
        """Validate a voice against this checkpoint, applying the official instruct rules."""
        kind = self.config.tts_model_type
        if voice_prompt is not None:
            if xvector is not None:
                raise ValueError("pass an x-vector or a voice prompt, not both")
            hidden = self.config.talker_config.hidden_size
            if voice_prompt.hidden_size != hidden:
                raise ValueError(f"this voice was cloned for a model of hidden size {voice_prompt.hidden_size}; "
                                 f"this checkpoint has {hidden}: add the voice again with this model")
            xvector = voice_prompt.xvector
        if xvector is not None and kind != "base":
            raise ValueError(f"voice cloning needs a Base checkpoint; this one is {kind}")
        if kind == "custom_voice" and not speaker:
            raise ValueError(f"a CustomVoice checkpoint needs a speaker; choose one of {self.speakers}")
        if kind == "base" and xvector is None:
            raise ValueError("a Base checkpoint clones a voice: pass an x-vector (reference audio)")
        if kind != "custom_voice" and speaker:
            raise ValueError(f"preset speakers belong to CustomVoice checkpoints; this one is {kind}")
        if instruct and kind == "base":
            raise ValueError("Base checkpoints take no style instruction")
        if instruct and kind == "custom_voice" and self.config.tts_model_size == "0b6":
            log.warning("the 0.6B CustomVoice model ignores style instructions (as the official package does)")
            instruct = None
        ref_ids, ref_codes = None, None
        if voice_prompt is not None and voice_prompt.icl:
            ref_ids, ref_codes = self._check_icl(voice_prompt)
        return Voice(speaker=speaker, language=language, instruct=instruct or None, xvector=xvector,
                     ref_ids=ref_ids, ref_codes=ref_codes)

    def _check_icl(self, prompt: VoicePrompt) -> tuple[tuple[int, ...], torch.Tensor]:
        """The reference transcript's ids (official ref template) and the (F, 16) codes, checked."""
        assert prompt.ref_codes is not None and prompt.ref_text is not None
        codes = prompt.ref_codes
        if codes.shape[0] == 0:
            raise ValueError("ICL voice prompt without reference codes (empty reference audio?)")
        size = self.speech_config.decoder_config.codebook_size
        if codes.dtype.is_floating_point or int(codes.min()) < 0 or int(codes.max()) >= size:
            raise ValueError(f"reference codes must be integers in [0, {size}); this prompt has "
                             f"{codes.dtype} in [{codes.min().item()}, {codes.max().item()}]")
        ref_ids = self.tokenizer.ref_ids(prompt.ref_text)
        if not ref_ids:
            raise ValueError("the reference transcript is empty: ICL cloning needs the words of the reference")
        return tuple(ref_ids), codes.long().cpu()

    def icl_wait_tokens(self, voice_prompt: VoicePrompt) -> int:
        """Target text tokens an ICL stream needs before its prefill, unless its input ends first:
        T2 - R = F + 1 - R for F reference frames and an R-token transcript (0 for x-vector prompts).

        The official streaming-text ICL layout puts the first T2 - R target rows beside the reference
        codes in the prompt, so the stream's first frame waits for them (exactly min(N + 1, T2 - R) rows:
        a reply shorter than that starts at `finish()`). F = 12.5 per second of reference; R is ~3-4
        tokens per second of English speech, so the wait is ~9 tokens per second of reference: ~27 for
        3 s (the test fixture: F = 37, R = 11 -> 27), ~90 for 10 s. An LLM streaming 30 tokens/s thus
        adds ~0.9 s (3 s reference) to ~3 s (10 s) to the first audio; x-vector prompts add nothing."""
        if voice_prompt.ref_codes is None or voice_prompt.ref_text is None:
            return 0
        return icl_target_rows(len(self.tokenizer.ref_ids(voice_prompt.ref_text)),
                               1 + voice_prompt.ref_codes.shape[0], None)

    @property
    def codec_encoder(self) -> CodecEncoder:
        if self._codec_encoder is None:
            if self.codec_encoder_loader is None:
                raise ValueError("this model was built without its codec encoder: ICL cloning needs one")
            self._codec_encoder = self.codec_encoder_loader()
        return self._codec_encoder

    @torch.no_grad()
    def make_voice_prompt(self, audio_24k: np.ndarray, ref_text: str | None = None) -> VoicePrompt:
        """Clone a voice from reference audio (n,) float32 in [-1, 1], mono, 24 kHz (resampling and checks
        of length and level are the caller's). With `ref_text`, the ICL prompt: reference codes as well."""
        speaker_encoder = self.model.speaker_encoder
        if speaker_encoder is None:
            raise ValueError(f"voice cloning needs a Base checkpoint; this one is {self.config.tts_model_type}")
        audio = torch.from_numpy(np.ascontiguousarray(audio_24k, dtype=np.float32))
        if audio.dim() != 1 or audio.numel() == 0:
            raise ValueError(f"expected non-empty mono audio (n,), got shape {tuple(audio.shape)}")
        xvector = speaker_encoder.extract_xvector(audio).float().cpu()
        if ref_text is None:
            return VoicePrompt(xvector)
        return VoicePrompt(xvector, self.codec_encoder.encode(audio).cpu(), ref_text)

    def prefix(self, voice: Voice) -> torch.Tensor:
        instruct_ids = self.tokenizer.instruct_ids(voice.instruct) if voice.instruct else None
        return build_prefix(self.talker, self.config, voice, self.role_ids, instruct_ids)

    @torch.no_grad()
    def decode(self, codes: torch.Tensor) -> np.ndarray:
        """codes (T, 16) -> waveform (T * 1920,) float32 — one full forward of the codec decoder."""
        if codes.shape[0] == 0:
            return np.zeros(0, dtype=np.float32)
        wav = self.codec(codes.to(self.device).T[None].clamp(min=0))  # (1, 1, T*1920)
        return wav[0, 0].float().cpu().numpy()

    @torch.no_grad()
    def synthesize(self, text: str, *, speaker: str | None = None, language: str = "auto",
                   instruct: str | None = None, xvector: torch.Tensor | None = None,
                   voice_prompt: VoicePrompt | None = None, non_streaming: bool = False, greedy: bool = False, seed: int = 0,
                   max_frames: int | None = None, eos_policy: str = "default") -> Synthesis:
        """Synthesize a whole text at once (the official layouts; `--feed all`)."""
        if eos_policy not in EOS_POLICIES:
            raise ValueError(f"eos_policy must be one of {EOS_POLICIES}")
        if self.engine_active:
            raise RuntimeError("an Engine is running on this model: synthesize through it, or close it first")
        ids = self.tokenizer.target_ids(text)
        if not ids:
            raise ValueError("nothing to say: the text is empty")
        voice = self.voice(speaker, language, instruct, xvector, voice_prompt)
        prefix = self.prefix(voice)
        rows = self.rows
        if voice.icl:
            # Official generate_icl_prompt: [ref ids, target ids] projected together, then E.
            assert voice.ref_ids is not None
            icl = build_icl_rows(self.talker, self.config, voice)
            text = torch.cat([self.talker.embed_text(torch.tensor([*voice.ref_ids, *ids], device=self.device)),
                              rows.eos[None]])  # (T1, H)
            block, trailing = icl_layout(text, icl, rows, non_streaming)
            prefill = torch.cat([prefix, block])
            # E is fed at decode step R + N - T2 (streaming), so EOS is sensible from the frame after it.
            eos_from = 0 if eos_policy == "official" or non_streaming else \
                max(0, icl.ref_len + len(ids) + 1 - icl.block_len)
        elif non_streaming:
            prefill = torch.cat([prefix, non_streaming_body(self.talker, rows, ids)])
            trailing = rows.pad[None]
            eos_from = 0  # the whole text is in the prompt
        else:
            prefill = torch.cat([prefix, first_target_row(self.talker, rows, ids[0])])
            device = self.device
            trailing = torch.cat([self.talker.embed_text(torch.tensor(ids[1:], device=device)), rows.eos[None]])
            # Default policy: EOS only after every text token and tts_eos were fed (frame N).
            eos_from = 0 if eos_policy == "official" else len(ids)

        def text_row(step: int) -> torch.Tensor:
            return trailing[step] if step < trailing.shape[0] else rows.pad

        cap = runaway_cap(len(ids))
        limit = min(max_frames, cap) if max_frames is not None else cap
        frames = generate_frames(self.talker, prefill, text_row, eos_from, self.sampling(greedy, seed),
                                 self.config.talker_config.codec_eos_token_id, limit)
        ended_by = frames.ended_by
        if ended_by == "cap" and max_frames is not None and limit == max_frames:
            ended_by = "max_frames"
        audio = self.decode_after_reference(voice.ref_codes, frames.codes) if voice.icl else \
            self.decode(frames.codes)
        return Synthesis(codes=frames.codes, audio=audio, ended_by=ended_by, text_ids=ids)

    @torch.no_grad()
    def primed_codec_state(self, ref_codes: torch.Tensor) -> tuple[CodecStreamState, torch.Tensor]:
        """Incremental-decoder state after the reference codes (F, 16), and the reference audio's last
        frame (1920,) (the official cut may keep its final sample). Depends on the voice only: cacheable."""
        decoder = StreamingCodecDecoder(self.codec)
        state = decoder.new_state()
        ref_audio = decoder.decode_step(ref_codes.to(self.device).T[None].clamp(min=0), state)  # (1, F*1920)
        return state, ref_audio[0, -SAMPLES_PER_FRAME:].clone()

    @torch.no_grad()
    def decode_after_reference(self, ref_codes: torch.Tensor, codes: torch.Tensor,
                               primed: tuple[CodecStreamState, torch.Tensor] | None = None) -> np.ndarray:
        """ICL waveform as the official wrapper returns it: decode reference + generated codes, cut the
        reference part at its own (float) cut point. Here the exact incremental decoder is primed on the
        reference codes, so the generated audio equals that of one forward over ref + gen; the official
        cut may fall one sample short of F*1920, and that sample of the reference is kept as it does.
        (Past 300 frames of ref + gen the official decode is chunked with 25 frames of left context,
        which is approximate; this stays exact.)"""
        ref_frames, frames = ref_codes.shape[0], codes.shape[0]
        state, ref_tail = primed if primed is not None else self.primed_codec_state(ref_codes)
        decoder = StreamingCodecDecoder(self.codec)
        gen = decoder.decode_step(codes.to(self.device).T[None].clamp(min=0), state.clone())[0] if frames else \
            ref_tail[:0]
        cut = official_reference_cut(ref_frames, ref_frames + frames)
        kept = ref_frames * SAMPLES_PER_FRAME - cut  # reference samples the official output starts with
        if not 0 <= kept <= SAMPLES_PER_FRAME:
            raise AssertionError(f"unexpected official cut {cut} for {ref_frames} reference frames")
        wav = torch.cat([ref_tail[SAMPLES_PER_FRAME - kept:], gen])
        return wav.float().cpu().numpy()


def official_reference_cut(ref_frames: int, total_frames: int) -> int:
    """The sample where the official generate_voice_clone cuts the decoded reference off:
    int(ref_len / total_len * n_samples) in float64, which is F*1920 or, for some (F, total), one less."""
    return int(ref_frames / max(total_frames, 1) * (total_frames * SAMPLES_PER_FRAME))
