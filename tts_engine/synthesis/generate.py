"""Whole-text generation of codec frames for one utterance (the `--feed all` path).

One frame = one talker forward (code 0) + 15 code-predictor micro-steps (codes 1..15). The talker's
input for the next frame is the sum of the frame's 16 code embeddings plus one text-track row.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from ..model.talker import Talker
from ..sampling.processors import SamplingParams, choose, process_code0, suppressed_ids
from ..sampling.rng import CODE0_DRAW, counter_uniform


@dataclass
class FrameCodes:
    codes: torch.Tensor  # (T, 16) int64
    ended_by: str  # "eos" | "cap"


def frame_input(talker: Talker, code0: torch.Tensor, residual_embeds: torch.Tensor,
                text_rows: torch.Tensor) -> torch.Tensor:
    """Next talker input (B, 1, H): the 16 code embeddings summed in one reduction, plus the text row."""
    stacked = torch.cat([talker.embed_codec(code0)[:, None], residual_embeds], dim=1)  # (B, 16, H)
    return (stacked.sum(dim=1) + text_rows)[:, None]


@torch.no_grad()
def generate_frames(talker: Talker, prefill: torch.Tensor, text_row: Callable[[int], torch.Tensor],
                    eos_allowed_from: int, params: SamplingParams, eos_id: int, max_frames: int) -> FrameCodes:
    """Generate frames for one stream.

    prefill: (L, H) prompt embeddings. text_row(k): the (H,) text-track row added at decode step k
    (the input that produces frame k+1). EOS is accepted from frame index `eos_allowed_from` on
    (and, as in the reference, never in the first `min_new_tokens` frames).
    """
    device = prefill.device
    length = prefill.shape[0]
    if talker.model.max_seq < length + max_frames or talker.model.max_batch < 1:
        talker.setup_cache(1, length + max_frames)
    p = params
    seen = torch.zeros(1, talker.config.vocab_size, dtype=torch.bool, device=device)
    suppressed = suppressed_ids(talker.config.vocab_size, eos_id, device)
    seed = torch.tensor([p.seed], device=device)

    def row(value: float | int | bool, dtype: torch.dtype) -> torch.Tensor:
        return torch.tensor([value], dtype=dtype, device=device)

    code0_settings = (row(p.greedy, torch.bool), row(p.temperature, torch.float32), row(p.top_k, torch.long),
                      row(p.top_p, torch.float32))
    residual_settings = (row(p.sub_greedy, torch.bool), row(p.sub_temperature, torch.float32),
                         row(p.sub_top_k, torch.long), row(p.sub_top_p, torch.float32))
    penalty = row(p.repetition_penalty, torch.float32)

    hidden = talker(prefill[None], torch.arange(length, device=device)[None], aligned=True)[:, -1]  # (1, H)
    frames: list[torch.Tensor] = []
    ended_by = "cap"
    for frame in range(max_frames):
        frame_index = torch.tensor([frame], device=device)

        def choose_residual(logits: torch.Tensor, step: int) -> torch.Tensor:
            return choose(logits.float(), *residual_settings, counter_uniform(seed, frame_index, step + 1))  # noqa: B023

        eos_ok = row(frame >= max(eos_allowed_from, p.min_new_tokens), torch.bool)
        logits = process_code0(talker.logits(hidden).float(), seen, penalty, eos_ok, suppressed, eos_id)
        code0 = choose(logits, *code0_settings, counter_uniform(seed, frame_index, CODE0_DRAW))
        if int(code0[0]) == eos_id:
            ended_by = "eos"
            break
        seen[0, code0[0]] = True
        residual, residual_embeds = talker.code_predictor.predict(hidden, talker.embed_codec(code0),
                                                                  choose_residual)
        frames.append(torch.cat([code0[:, None], residual], dim=1))
        if frame + 1 == max_frames:
            break
        x = frame_input(talker, code0, residual_embeds, text_row(frame)[None])
        hidden = talker(x, torch.tensor([[length + frame]], device=device), aligned=True)[:, -1]
    codes = torch.cat(frames) if frames else torch.zeros(0, 16, dtype=torch.long, device=device)
    return FrameCodes(codes=codes.cpu(), ended_by=ended_by)
