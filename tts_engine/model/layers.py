"""Qwen3 decoder building blocks shared by the talker and the code predictor.

Parameter names follow the official checkpoints (self_attn.q_proj, mlp.gate_proj, input_layernorm, ...).
Every attention layer owns a static KV cache with a batch dimension: `setup_cache(max_batch, max_seq)`
allocates it once; a forward writes the new keys/values at absolute positions and attends over the first
`kv_len` cache slots, masking per row, so rows (streams) can sit at different positions.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Normalise in fp32, cast back, then scale: the official order (matters in bf16).
        input_dtype = x.dtype
        x32 = x.float()
        x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x32.to(input_dtype)


def rope_inv_freq(head_dim: int, theta: float) -> torch.Tensor:
    # On the CPU even while a model is built on the meta device (recomputed in setup_cache anyway).
    steps = torch.arange(0, head_dim, 2, dtype=torch.int64, device="cpu").float()
    return 1.0 / (theta ** (steps / head_dim))


def rope_cos_sin(positions: torch.Tensor, inv_freq: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, ...]:
    """positions (B, T) -> cos, sin (B, 1, T, head_dim), computed in fp32 like the reference."""
    freqs = positions.float()[..., None] * inv_freq.to(positions.device)[None, None, :]  # (B, T, D/2)
    emb = torch.cat((freqs, freqs), dim=-1)
    return emb.cos().to(dtype)[:, None], emb.sin().to(dtype)[:, None]


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    return x * cos + _rotate_half(x) * sin


def folded_attention(q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor,
                     mask: torch.Tensor | None) -> torch.Tensor:
    """Grouped-query attention with the query heads folded into the query-length axis.

    q (B, H, T, D), keys/values (B, Hkv, S, D), mask (B, 1, T, S) bool or None (all visible) -> (B, H, T, D).
    Each group of G = H / Hkv query heads shares one K/V head, so (B, H, T, D) is viewed as (B, Hkv, G*T, D):
    one plain attention per K/V head, no `enable_gqa` and no repeated K/V. That is the shape the fused
    memory-efficient / cuDNN kernels take; with `enable_gqa` and a mask most builds fall back to the math
    kernel, which repeats K/V to H heads every layer every step. Not causal inside T (the mask says who sees
    what), so a prefill without a mask cannot use it.
    """
    batch, n_heads, seq, dim = q.shape
    n_kv = keys.shape[1]
    group = n_heads // n_kv
    q_folded = q.reshape(batch, n_kv, group * seq, dim)  # heads h = kv * G + g -> (kv, g * T + t)
    if mask is not None:
        mask = mask[:, :, None].expand(batch, 1, group, seq, mask.shape[-1]).reshape(batch, 1, group * seq, -1)
    out = F.scaled_dot_product_attention(q_folded, keys, values, attn_mask=mask)
    return out.reshape(batch, n_heads, seq, dim)


class KVCache(nn.Module):
    """Static per-layer cache: k, v of shape (max_batch, n_kv_heads, max_seq, head_dim)."""

    def __init__(self, max_batch: int, n_kv_heads: int, max_seq: int, head_dim: int,
                 dtype: torch.dtype, device: torch.device) -> None:
        super().__init__()
        shape = (max_batch, n_kv_heads, max_seq, head_dim)
        self.register_buffer("k", torch.zeros(shape, dtype=dtype, device=device), persistent=False)
        self.register_buffer("v", torch.zeros(shape, dtype=dtype, device=device), persistent=False)

    def write(self, rows: slice, positions: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> None:
        """k, v (B, Hkv, T, D) go to cache rows `rows` at `positions` (B, T)."""
        batch_index = torch.arange(k.shape[0], device=k.device)[:, None].expand_as(positions)
        k_rows, v_rows = self.k[rows], self.v[rows]
        # (B, T, Hkv, D) indexed by (row, position) pairs.
        k_rows.transpose(1, 2)[batch_index, positions] = k.transpose(1, 2)
        v_rows.transpose(1, 2)[batch_index, positions] = v.transpose(1, 2)


class Attention(nn.Module):
    def __init__(self, hidden_size: int, n_heads: int, n_kv_heads: int, head_dim: int, eps: float,
                 bias: bool = False) -> None:
        super().__init__()
        self.n_heads, self.n_kv_heads, self.head_dim = n_heads, n_kv_heads, head_dim
        self.q_proj = nn.Linear(hidden_size, n_heads * head_dim, bias=bias)
        self.k_proj = nn.Linear(hidden_size, n_kv_heads * head_dim, bias=bias)
        self.v_proj = nn.Linear(hidden_size, n_kv_heads * head_dim, bias=bias)
        self.o_proj = nn.Linear(n_heads * head_dim, hidden_size, bias=bias)
        self.q_norm = RMSNorm(head_dim, eps)
        self.k_norm = RMSNorm(head_dim, eps)
        self.kv_cache: KVCache | None = None

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, positions: torch.Tensor,
                rows: slice, kv_len: int, mask: torch.Tensor | None) -> torch.Tensor:
        batch, seq, _ = x.shape
        q = self.q_norm(self.q_proj(x).view(batch, seq, self.n_heads, self.head_dim)).transpose(1, 2)
        k = self.k_norm(self.k_proj(x).view(batch, seq, self.n_kv_heads, self.head_dim)).transpose(1, 2)
        v = self.v_proj(x).view(batch, seq, self.n_kv_heads, self.head_dim).transpose(1, 2)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)  # (B, H, T, D)
        assert self.kv_cache is not None, "call setup_cache() before forward"
        self.kv_cache.write(rows, positions, k, v)
        keys = self.kv_cache.k[rows, :, :kv_len]
        values = self.kv_cache.v[rows, :, :kv_len]
        causal = mask is None and seq > 1
        if x.device.type == "cuda" and not causal and self.n_heads != self.n_kv_heads:
            # decode on the GPU: a fused kernel (see folded_attention); the CPU keeps the reference path,
            # whose float summation order the exactness tests vs the official package pin down
            out = folded_attention(q, keys, values, mask)
        else:
            # mask None: every cached key is visible (one new token per row at position kv_len - 1), or a
            # fresh causal prefill (seq == kv_len): SDPA's own causal kernel, no mask tensor.
            out = F.scaled_dot_product_attention(q, keys, values, attn_mask=mask, is_causal=causal,
                                                 enable_gqa=self.n_heads != self.n_kv_heads)
        return self.o_proj(out.transpose(1, 2).reshape(batch, seq, -1))


class MLP(nn.Module):
    def __init__(self, hidden_size: int, intermediate_size: int) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(hidden_size, intermediate_size, bias=False)
        self.up_proj = nn.Linear(hidden_size, intermediate_size, bias=False)
        self.down_proj = nn.Linear(intermediate_size, hidden_size, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class DecoderLayer(nn.Module):
    def __init__(self, hidden_size: int, intermediate_size: int, n_heads: int, n_kv_heads: int,
                 head_dim: int, eps: float, attention_bias: bool = False) -> None:
        super().__init__()
        self.self_attn = Attention(hidden_size, n_heads, n_kv_heads, head_dim, eps, attention_bias)
        self.mlp = MLP(hidden_size, intermediate_size)
        self.input_layernorm = RMSNorm(hidden_size, eps)
        self.post_attention_layernorm = RMSNorm(hidden_size, eps)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, positions: torch.Tensor,
                rows: slice, kv_len: int, mask: torch.Tensor | None) -> torch.Tensor:
        x = x + self.self_attn(self.input_layernorm(x), cos, sin, positions, rows, kv_len, mask)
        return x + self.mlp(self.post_attention_layernorm(x))


class DecoderStack(nn.Module):
    """`layers` + final `norm` + RoPE: the body shared by the talker and the code predictor."""

    def __init__(self, hidden_size: int, intermediate_size: int, n_layers: int, n_heads: int, n_kv_heads: int,
                 head_dim: int, eps: float, rope_theta: float, attention_bias: bool = False) -> None:
        super().__init__()
        self.layers = nn.ModuleList(
            DecoderLayer(hidden_size, intermediate_size, n_heads, n_kv_heads, head_dim, eps, attention_bias)
            for _ in range(n_layers))
        self.norm = RMSNorm(hidden_size, eps)
        self.register_buffer("inv_freq", rope_inv_freq(head_dim, rope_theta), persistent=False)
        self.n_kv_heads, self.head_dim, self.rope_theta = n_kv_heads, head_dim, rope_theta
        self.max_batch = self.max_seq = 0

    def setup_cache(self, max_batch: int, max_seq: int, dtype: torch.dtype | None = None,
                    device: torch.device | None = None) -> None:
        ref = self.norm.weight
        dtype, device = dtype or ref.dtype, device or ref.device
        for layer in self.layers:
            layer.self_attn.kv_cache = KVCache(max_batch, self.n_kv_heads, max_seq, self.head_dim, dtype, device)
        self.max_batch, self.max_seq = max_batch, max_seq
        # Recomputed here: after meta-device construction a non-persistent buffer holds garbage.
        self.inv_freq = rope_inv_freq(self.head_dim, self.rope_theta).to(device)

    def forward(self, x: torch.Tensor, positions: torch.Tensor, rows: slice | None = None,
                kv_len: int | None = None, aligned: bool = False) -> torch.Tensor:
        """x (B, T, C), positions (B, T) absolute -> normed hidden (B, T, C).

        Attends over cache slots [0, kv_len) of cache rows `rows`; a key is visible iff its slot <= the
        query's position (causal, per row). kv_len defaults to max(positions) + 1. `aligned=True`
        promises every row's positions are kv_len - T .. kv_len - 1 (one stream, or rows in lockstep),
        with T == kv_len when T > 1: then no mask tensor is built.
        """
        batch, seq = x.shape[:2]
        rows = rows if rows is not None else slice(0, batch)
        if kv_len is None:
            kv_len = int(positions.max()) + 1
        cos, sin = rope_cos_sin(positions, self.inv_freq, x.dtype)
        mask: torch.Tensor | None = None
        if not aligned or (seq > 1 and seq != kv_len):
            slots = torch.arange(kv_len, device=x.device)
            mask = slots[None, None, None, :] <= positions[:, None, :, None]  # (B, 1, T, kv_len)
        for layer in self.layers:
            x = layer(x, cos, sin, positions, rows, kv_len, mask)
        return self.norm(x)
