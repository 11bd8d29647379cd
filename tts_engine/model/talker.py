"""The talker (predicts codebook 0 once per 80 ms frame) and its code predictor (codebooks 1..15).

Module tree and parameter names equal the official checkpoint's `talker.*` keys:
  talker.model.{layers,norm,codec_embedding,text_embedding}, talker.text_projection.{linear_fc1,linear_fc2},
  talker.codec_head, talker.code_predictor.{model.{layers,norm,codec_embedding.N},lm_head.N,small_to_mtp_projection}
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from .config import CodePredictorConfig, TalkerConfig
from .layers import DecoderStack

# choose(logits (B, V), step) -> codes (B,): how a code is picked (greedy or seeded sampling per row).
CodeChooser = Callable[[torch.Tensor, int], torch.Tensor]


class TalkerBackbone(DecoderStack):
    def __init__(self, cfg: TalkerConfig) -> None:
        super().__init__(cfg.hidden_size, cfg.intermediate_size, cfg.num_hidden_layers, cfg.num_attention_heads,
                         cfg.num_key_value_heads, cfg.head_dim, cfg.rms_norm_eps, cfg.rope_theta, cfg.attention_bias)
        self.codec_embedding = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.text_embedding = nn.Embedding(cfg.text_vocab_size, cfg.text_hidden_size)


class TextProjection(nn.Module):
    """Linear -> SiLU -> Linear from the text embedding width to the talker width (both with bias)."""

    def __init__(self, text_hidden: int, hidden: int) -> None:
        super().__init__()
        self.linear_fc1 = nn.Linear(text_hidden, text_hidden, bias=True)
        self.linear_fc2 = nn.Linear(text_hidden, hidden, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear_fc2(F.silu(self.linear_fc1(x)))


class CodePredictorBackbone(DecoderStack):
    def __init__(self, cfg: CodePredictorConfig, talker_hidden: int) -> None:
        super().__init__(cfg.hidden_size, cfg.intermediate_size, cfg.num_hidden_layers, cfg.num_attention_heads,
                         cfg.num_key_value_heads, cfg.head_dim, cfg.rms_norm_eps, cfg.rope_theta, cfg.attention_bias)
        # One table per residual codebook, at the TALKER width: shared with the talker's input sum.
        self.codec_embedding = nn.ModuleList(
            nn.Embedding(cfg.vocab_size, talker_hidden) for _ in range(cfg.num_code_groups - 1))


class CodePredictor(nn.Module):
    """5-layer Qwen3 decoder run for 15 micro-steps per frame with a fresh cache (positions 0..15)."""

    def __init__(self, cfg: CodePredictorConfig, talker_hidden: int) -> None:
        super().__init__()
        self.model = CodePredictorBackbone(cfg, talker_hidden)
        self.lm_head = nn.ModuleList(
            nn.Linear(cfg.hidden_size, cfg.vocab_size, bias=False) for _ in range(cfg.num_code_groups - 1))
        self.small_to_mtp_projection: nn.Module = (
            nn.Linear(talker_hidden, cfg.hidden_size, bias=True) if cfg.hidden_size != talker_hidden
            else nn.Identity())
        self.n_residual = cfg.num_code_groups - 1

    def setup_cache(self, max_batch: int, dtype: torch.dtype | None = None,
                    device: torch.device | None = None) -> None:
        self.model.setup_cache(max_batch, self.n_residual + 1, dtype, device)

    def predict(self, past_hidden: torch.Tensor, code0_embed: torch.Tensor,
                choose: CodeChooser) -> tuple[torch.Tensor, torch.Tensor]:
        """past_hidden, code0_embed (B, H) -> residual codes (B, 15) and their embeddings (B, 15, H)."""
        batch = past_hidden.shape[0]
        device = past_hidden.device
        x = self.small_to_mtp_projection(torch.stack((past_hidden, code0_embed), dim=1))  # (B, 2, Hc)
        positions = torch.arange(2, device=device).expand(batch, 2)
        hidden = self.model(x, positions, kv_len=2, aligned=True)[:, -1]
        codes, embeds = [], []
        for step in range(self.n_residual):
            code = choose(self.lm_head[step](hidden), step)  # (B,)
            codes.append(code)
            embed = self.model.codec_embedding[step](code)  # (B, H)
            embeds.append(embed)
            if step + 1 < self.n_residual:
                positions = torch.full((batch, 1), step + 2, device=device, dtype=torch.long)
                hidden = self.model(self.small_to_mtp_projection(embed[:, None]), positions, kv_len=step + 3,
                                    aligned=True)[:, -1]
        return torch.stack(codes, dim=1), torch.stack(embeds, dim=1)


class Talker(nn.Module):
    def __init__(self, cfg: TalkerConfig) -> None:
        super().__init__()
        self.config = cfg
        self.model = TalkerBackbone(cfg)
        self.text_projection = TextProjection(cfg.text_hidden_size, cfg.hidden_size)
        self.codec_head = nn.Linear(cfg.hidden_size, cfg.vocab_size, bias=False)
        self.code_predictor = CodePredictor(cfg.code_predictor_config, cfg.hidden_size)

    def setup_cache(self, max_batch: int, max_seq: int, dtype: torch.dtype | None = None,
                    device: torch.device | None = None) -> None:
        self.model.setup_cache(max_batch, max_seq, dtype, device)
        self.code_predictor.setup_cache(max_batch, dtype, device)

    def embed_text(self, ids: torch.Tensor) -> torch.Tensor:
        """Text-track vectors T(ids): (..., ) ids -> (..., H)."""
        return self.text_projection(self.model.text_embedding(ids))

    def embed_codec(self, ids: torch.Tensor) -> torch.Tensor:
        return self.model.codec_embedding(ids)

    def forward(self, embeds: torch.Tensor, positions: torch.Tensor, rows: slice | None = None,
                kv_len: int | None = None, aligned: bool = False) -> torch.Tensor:
        """embeds (B, T, H) at absolute positions (B, T) -> post-norm hidden (B, T, H)."""
        return self.model(embeds, positions, rows, kv_len, aligned)

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.codec_head(hidden)
