"""Choosing codes: the official logits processors, then greedy argmax or seeded sampling per row.

Code 0 (talker), in the order Hugging Face `generate` applies them for the reference:
  repetition penalty over the codes 0 generated so far, EOS masked for the first `min_new_tokens`
  frames, ids [vocab-1024, vocab) suppressed except EOS; then temperature, top-k, top-p, draw.
Codes 1..15 (code predictor): temperature, top-k, top-p, draw; no penalty, no suppression.
Each row owns a torch.Generator, so a stream's draws do not depend on its batch mates.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import torch

NEG_INF = float("-inf")


@dataclass(frozen=True)
class SamplingParams:
    greedy: bool = False
    temperature: float = 0.9
    top_k: int = 50
    top_p: float = 1.0
    repetition_penalty: float = 1.05
    sub_greedy: bool = False
    sub_temperature: float = 0.9
    sub_top_k: int = 50
    sub_top_p: float = 1.0
    min_new_tokens: int = 2
    seed: int = 0

    @classmethod
    def from_generation_config(cls, gen: dict[str, Any], **overrides: Any) -> SamplingParams:
        """Defaults from a checkpoint's generation_config.json (official key names), then overrides."""
        params = cls(
            greedy=not gen.get("do_sample", True),
            temperature=float(gen.get("temperature", 0.9)),
            top_k=int(gen.get("top_k", 50)),
            top_p=float(gen.get("top_p", 1.0)),
            repetition_penalty=float(gen.get("repetition_penalty", 1.05)),
            sub_greedy=not gen.get("subtalker_dosample", True),
            sub_temperature=float(gen.get("subtalker_temperature", 0.9)),
            sub_top_k=int(gen.get("subtalker_top_k", 50)),
            sub_top_p=float(gen.get("subtalker_top_p", 1.0)),
        )
        if overrides.pop("greedy", None):
            overrides.update(greedy=True, sub_greedy=True)
        return replace(params, **{k: v for k, v in overrides.items() if v is not None})


def _warp(logits: torch.Tensor, temperature: float, top_k: int, top_p: float) -> torch.Tensor:
    logits = logits / temperature
    if 0 < top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, NEG_INF)
    if top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True, dim=-1)
        cumulative = sorted_logits.softmax(-1).cumsum(-1)
        remove = cumulative - sorted_logits.softmax(-1) > top_p  # keep the token that crosses top_p
        logits = logits.masked_fill(remove.scatter(-1, order, remove), NEG_INF)
    return logits


def draw(logits: torch.Tensor, generators: list[torch.Generator], greedy: bool, temperature: float,
         top_k: int, top_p: float) -> torch.Tensor:
    """logits (B, V) -> codes (B,), one generator per row.

    Sampling is by inverse CDF: each row draws one uniform number from its own generator, so the
    whole batch is one searchsorted and a row's draw does not depend on its batch mates.
    """
    if greedy:
        return logits.argmax(dim=-1)
    probs = _warp(logits.float(), temperature, top_k, top_p).softmax(dim=-1)
    cdf = probs.cumsum(dim=-1)  # (B, V)
    # 1 - U(0, 1) lies in (0, 1]: the first index whose cdf reaches u * total has non-zero probability.
    u = torch.stack([1.0 - torch.rand((), generator=gen, device=probs.device) for gen in generators])
    picks = torch.searchsorted(cdf, (u * cdf[:, -1])[:, None])[:, 0]
    return picks.clamp_(max=probs.shape[-1] - 1)


class CodeZeroProcessor:
    """Per-row state of the talker-side processors: which codes 0 were generated, how many frames."""

    def __init__(self, vocab_size: int, eos_id: int, params: SamplingParams, batch: int,
                 device: torch.device) -> None:
        self.params, self.eos_id = params, eos_id
        self.seen = torch.zeros(batch, vocab_size, dtype=torch.bool, device=device)
        suppress = torch.zeros(vocab_size, dtype=torch.bool, device=device)
        suppress[vocab_size - 1024:] = True
        suppress[eos_id] = False
        self.suppress = suppress

    def __call__(self, logits: torch.Tensor, frames_done: torch.Tensor, eos_allowed: torch.Tensor) -> torch.Tensor:
        """logits (B, V); frames_done (B,) frames emitted so far; eos_allowed (B,) policy gate."""
        penalty = self.params.repetition_penalty
        penalized = torch.where(logits < 0, logits * penalty, logits / penalty)
        logits = torch.where(self.seen, penalized, logits)
        block_eos = (frames_done < self.params.min_new_tokens) | ~eos_allowed
        logits[:, self.eos_id] = torch.where(block_eos, NEG_INF, logits[:, self.eos_id])
        return logits.masked_fill(self.suppress, NEG_INF)

    def record(self, codes: torch.Tensor) -> None:
        self.seen[torch.arange(codes.shape[0], device=codes.device), codes] = True
