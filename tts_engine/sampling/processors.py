"""Choosing codes: the official logits processors, then greedy argmax or seeded sampling per row.

Code 0 (talker), in the order Hugging Face `generate` applies them for the reference:
  repetition penalty over the codes 0 generated so far, EOS masked for the first `min_new_tokens`
  frames, ids [vocab-1024, vocab) suppressed except EOS; then temperature, top-k, top-p, draw.
Codes 1..15 (code predictor): temperature, top-k, top-p, draw; no penalty, no suppression.
Every setting is a per-row tensor and every draw takes its uniform number from the counter-based RNG
(rng.py), so a whole batch is one kernel per draw and a stream's codes do not depend on its batch mates.
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


def suppressed_ids(vocab_size: int, eos_id: int, device: torch.device) -> torch.Tensor:
    """(V,) bool: the control ids [V-1024, V) that code 0 may never take, EOS excepted."""
    mask = torch.zeros(vocab_size, dtype=torch.bool, device=device)
    mask[vocab_size - 1024:] = True
    mask[eos_id] = False
    return mask


def process_code0(logits: torch.Tensor, seen: torch.Tensor, penalty: torch.Tensor, eos_ok: torch.Tensor,
                  suppressed: torch.Tensor, eos_id: int) -> torch.Tensor:
    """The official talker-side processors, per row: logits (B, V) float32, seen (B, V) bool (codes 0
    generated so far), penalty (B,), eos_ok (B,) bool (min_new_tokens and the EOS policy, decided by the
    caller), suppressed (V,) bool -> processed logits (B, V)."""
    penalty = penalty[:, None]
    logits = torch.where(seen, torch.where(logits < 0, logits * penalty, logits / penalty), logits)
    is_eos = torch.arange(logits.shape[-1], device=logits.device) == eos_id  # (V,)
    blocked = suppressed[None, :] | (is_eos[None, :] & ~eos_ok[:, None])  # (B, V)
    return logits.masked_fill(blocked, NEG_INF)


def choose(logits: torch.Tensor, greedy: torch.Tensor, temperature: torch.Tensor, top_k: torch.Tensor,
           top_p: torch.Tensor, uniform: torch.Tensor) -> torch.Tensor:
    """logits (B, V) float32 -> codes (B,). Per row: greedy (bool), temperature, top_k (<= 0: off),
    top_p (1: off) and one uniform number in (0, 1] (rng.counter_uniform).

    Greedy rows take the argmax. Sampling rows: temperature, top-k (ties with the k-th logit kept, as Hugging
    Face does), top-p (the token that crosses top_p kept), then the inverse CDF at `uniform`, all in one
    descending sort; shapes never depend on values (graph-capturable)."""
    vocab = logits.shape[-1]
    best = logits.argmax(dim=-1)
    ordered, order = torch.sort(logits / temperature.clamp(min=1e-5)[:, None], dim=-1, descending=True)
    k = torch.where((top_k <= 0) | (top_k > vocab), vocab, top_k)
    kth = ordered.gather(1, (k - 1)[:, None])
    ordered = ordered.masked_fill(ordered < kth, NEG_INF)
    probs = ordered.softmax(dim=-1)
    beyond_p = (probs.cumsum(dim=-1) - probs > top_p[:, None]) & (top_p < 1.0)[:, None]
    cdf = probs.masked_fill(beyond_p, 0.0).cumsum(dim=-1)  # (B, V), non-decreasing
    # u in (0, 1]: the first index whose cdf reaches u * total has non-zero probability.
    picks = torch.searchsorted(cdf, uniform[:, None] * cdf[:, -1:]).clamp(max=vocab - 1)  # (B, 1)
    return torch.where(greedy, best, order.gather(1, picks)[:, 0])
