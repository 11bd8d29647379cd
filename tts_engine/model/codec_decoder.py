"""The 12 Hz speech-tokenizer decoder (Code2Wav): 16 codes per 80 ms frame -> 1920 samples at 24 kHz.

Chain (module names = the official `decoder.*` checkpoint keys):
  quantizer (split RVQ dequantisation) -> pre_conv (causal k=3) -> pre_transformer (sliding-window
  causal attention) -> upsample x2 (transposed conv k=s, ConvNeXt) -> decoder: causal conv k=7,
  4 DecoderBlocks (SnakeBeta, transposed conv k=2r s=r, 3 dilated residual units), SnakeBeta, conv k=7.
Every conv is causal (zeros on the left), so sample t depends only on frames <= t // 1920.
`CodecDecoder.forward` is one whole-sequence pass, like the official; codec_stream.py continues
the same modules frame by frame.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .config import CodecDecoderConfig
from .layers import MLP, RMSNorm, apply_rope, rope_cos_sin, rope_inv_freq


def tiny_codec_decoder_config() -> CodecDecoderConfig:
    """Test-sized decoder that keeps the real rates (1920 samples per frame) and window (72 frames)."""
    return CodecDecoderConfig(codebook_size=2048, codebook_dim=64, hidden_size=32, latent_dim=64,
                              num_attention_heads=2, num_key_value_heads=2, head_dim=16, intermediate_size=64,
                              num_hidden_layers=2, decoder_dim=64, sliding_window=72)


# ----------------------------------------------------------------------------- convolutions

class CausalConv1d(nn.Module):
    """Stride-1 Conv1d with (k-1)*d zeros on the left: output t sees inputs t-(k-1)*d .. t."""

    def __init__(self, c_in: int, c_out: int, kernel_size: int, dilation: int = 1, groups: int = 1) -> None:
        super().__init__()
        self.conv = nn.Conv1d(c_in, c_out, kernel_size, dilation=dilation, groups=groups)
        self.context = (kernel_size - 1) * dilation  # past input samples each output needs

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C_in, T) -> (B, C_out, T)
        return self.conv(F.pad(x, (self.context, 0)))


class CausalTransposedConv1d(nn.Module):
    """ConvTranspose1d(k, stride s) without its last k-s samples: T inputs -> T*s outputs."""

    def __init__(self, c_in: int, c_out: int, kernel_size: int, stride: int) -> None:
        super().__init__()
        self.conv = nn.ConvTranspose1d(c_in, c_out, kernel_size, stride=stride)
        self.stride = stride
        self.overlap = kernel_size - stride  # output samples an input spills into the next input's span

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C_in, T) -> (B, C_out, T*s)
        y = self.conv(x)
        return y[..., : y.shape[-1] - self.overlap]


class SnakeBeta(nn.Module):
    """x + sin²(x·e^alpha) / e^beta, per channel (alpha, beta stored in log space)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.alpha = nn.Parameter(torch.zeros(channels))
        self.beta = nn.Parameter(torch.zeros(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C, T)
        alpha = self.alpha.exp()[None, :, None]
        beta = self.beta.exp()[None, :, None]
        return x + (1.0 / (beta + 1e-9)) * torch.sin(x * alpha).pow(2)


class ConvNeXtBlock(nn.Module):
    """Causal depthwise conv k=7, then a per-sample MLP (LayerNorm, 4x GELU), scaled by gamma, residual."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dwconv = CausalConv1d(dim, dim, 7, groups=dim)
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.pwconv1 = nn.Linear(dim, 4 * dim)
        self.pwconv2 = nn.Linear(4 * dim, dim)
        self.gamma = nn.Parameter(torch.full((dim,), 1e-6))

    def pointwise(self, h: torch.Tensor) -> torch.Tensor:
        """The stateless part after the depthwise conv: (B, C, T) -> (B, C, T)."""
        h = self.pwconv2(F.gelu(self.pwconv1(self.norm(h.transpose(1, 2)))))
        return (self.gamma * h).transpose(1, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.pointwise(self.dwconv(x))


class ResidualUnit(nn.Module):
    def __init__(self, dim: int, dilation: int) -> None:
        super().__init__()
        self.act1 = SnakeBeta(dim)
        self.conv1 = CausalConv1d(dim, dim, 7, dilation=dilation)
        self.act2 = SnakeBeta(dim)
        self.conv2 = CausalConv1d(dim, dim, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv2(self.act2(self.conv1(self.act1(x))))


class DecoderBlock(nn.Module):
    """SnakeBeta -> x`rate` transposed conv (halving channels) -> residual units at dilations 1, 3, 9."""

    def __init__(self, c_in: int, c_out: int, rate: int) -> None:
        super().__init__()
        self.block = nn.ModuleList([SnakeBeta(c_in), CausalTransposedConv1d(c_in, c_out, 2 * rate, rate),
                                    *(ResidualUnit(c_out, d) for d in (1, 3, 9))])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.block:
            x = layer(x)
        return x


# ----------------------------------------------------------------------------- quantizer

class Codebook(nn.Module):
    """EMA codebook as trained: entry = embedding_sum / cluster_usage."""

    def __init__(self, codebook_size: int, dim: int) -> None:
        super().__init__()
        self.cluster_usage = nn.Parameter(torch.ones(codebook_size))
        self.embedding_sum = nn.Parameter(torch.zeros(codebook_size, dim))

    def decode(self, codes: torch.Tensor) -> torch.Tensor:  # (B, T) -> (B, T, D)
        # Gather, then divide: the same per-element division as dividing the whole table first.
        usage = self.cluster_usage.clamp(min=1e-5)
        return F.embedding(codes, self.embedding_sum) / F.embedding(codes, usage[:, None])


class VectorQuantizer(nn.Module):
    def __init__(self, codebook_size: int, dim: int) -> None:
        super().__init__()
        self._codebook = Codebook(codebook_size, dim)


class CodebookList(nn.Module):
    def __init__(self, n_q: int, codebook_size: int, dim: int) -> None:
        super().__init__()
        self.layers = nn.ModuleList(VectorQuantizer(codebook_size, dim) for _ in range(n_q))


class ResidualVQ(nn.Module):
    """Sum of n_q codebook vectors, projected dim -> io_dim. input_proj only serves the encoder."""

    def __init__(self, n_q: int, codebook_size: int, dim: int, io_dim: int) -> None:
        super().__init__()
        self.input_proj = nn.Conv1d(io_dim, dim, 1, bias=False)
        self.output_proj = nn.Conv1d(dim, io_dim, 1, bias=False)
        self.vq = CodebookList(n_q, codebook_size, dim)

    def decode(self, codes: torch.Tensor) -> torch.Tensor:  # (B, n_q, T) -> (B, io_dim, T)
        summed = self.vq.layers[0]._codebook.decode(codes[:, 0])
        for q in range(1, codes.shape[1]):
            summed = summed + self.vq.layers[q]._codebook.decode(codes[:, q])
        return self.output_proj(summed.transpose(1, 2))


class SplitResidualVQ(nn.Module):
    """Codebook 0 (semantic) and codebooks 1.. (acoustic) have their own projections; outputs add."""

    def __init__(self, cfg: CodecDecoderConfig) -> None:
        super().__init__()
        dim = cfg.codebook_dim // 2
        self.rvq_first = ResidualVQ(1, cfg.codebook_size, dim, cfg.codebook_dim)
        self.rvq_rest = ResidualVQ(cfg.num_quantizers - 1, cfg.codebook_size, dim, cfg.codebook_dim)

    def decode(self, codes: torch.Tensor) -> torch.Tensor:  # (B, 16, T) -> (B, codebook_dim, T)
        return self.rvq_first.decode(codes[:, :1]) + self.rvq_rest.decode(codes[:, 1:])


# ----------------------------------------------------------------------------- transformer

def window_mask(q_pos: torch.Tensor, k_pos: torch.Tensor, window: int) -> torch.Tensor:
    """(B, Tq), (B, Tk) absolute positions -> (B, 1, Tq, Tk) bool: key j visible to query i iff
    i - window < j <= i. Negative key positions are empty cache slots and never visible."""
    q, k = q_pos[:, None, :, None], k_pos[:, None, None, :]
    return (k <= q) & (k > q - window) & (k >= 0)


class LayerScale(nn.Module):
    def __init__(self, dim: int, init: float) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.full((dim,), init))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.scale * x


class CodecAttention(nn.Module):
    """Multi-head attention, no q/k norm. Optional `past` keys/values (already rotated) are prepended."""

    def __init__(self, cfg: CodecDecoderConfig) -> None:
        super().__init__()
        self.n_heads, self.n_kv_heads, self.head_dim = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
        bias = cfg.attention_bias
        self.q_proj = nn.Linear(cfg.hidden_size, self.n_heads * self.head_dim, bias=bias)
        self.k_proj = nn.Linear(cfg.hidden_size, self.n_kv_heads * self.head_dim, bias=bias)
        self.v_proj = nn.Linear(cfg.hidden_size, self.n_kv_heads * self.head_dim, bias=bias)
        self.o_proj = nn.Linear(self.n_heads * self.head_dim, cfg.hidden_size, bias=bias)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, mask: torch.Tensor,
                past: tuple[torch.Tensor, torch.Tensor] | None = None,
                ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        """x (B, T, C) -> out (B, T, C), (keys, values) (B, Hkv, P+T, D) including `past` (P slots)."""
        batch, seq, _ = x.shape
        q = self.q_proj(x).view(batch, seq, self.n_heads, self.head_dim).transpose(1, 2)
        k = self.k_proj(x).view(batch, seq, self.n_kv_heads, self.head_dim).transpose(1, 2)
        v = self.v_proj(x).view(batch, seq, self.n_kv_heads, self.head_dim).transpose(1, 2)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        if past is not None:
            k, v = torch.cat([past[0], k], dim=2), torch.cat([past[1], v], dim=2)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=self.n_heads != self.n_kv_heads)
        return self.o_proj(out.transpose(1, 2).reshape(batch, seq, -1)), (k, v)


class CodecTransformerLayer(nn.Module):
    def __init__(self, cfg: CodecDecoderConfig) -> None:
        super().__init__()
        if cfg.hidden_act != "silu":
            raise ValueError(f"codec decoder hidden_act {cfg.hidden_act!r} is not supported (only 'silu')")
        self.self_attn = CodecAttention(cfg)
        self.mlp = MLP(cfg.hidden_size, cfg.intermediate_size)
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.self_attn_layer_scale = LayerScale(cfg.hidden_size, cfg.layer_scale_initial_scale)
        self.mlp_layer_scale = LayerScale(cfg.hidden_size, cfg.layer_scale_initial_scale)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, mask: torch.Tensor,
                past: tuple[torch.Tensor, torch.Tensor] | None = None,
                ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        attn, kv = self.self_attn(self.input_layernorm(x), cos, sin, mask, past)
        x = x + self.self_attn_layer_scale(attn)
        return x + self.mlp_layer_scale(self.mlp(self.post_attention_layernorm(x))), kv


class CodecTransformer(nn.Module):
    """latent -> hidden, sliding-window causal layers with RoPE at absolute frame positions, -> latent."""

    def __init__(self, cfg: CodecDecoderConfig) -> None:
        super().__init__()
        self.input_proj = nn.Linear(cfg.latent_dim, cfg.hidden_size)
        self.layers = nn.ModuleList(CodecTransformerLayer(cfg) for _ in range(cfg.num_hidden_layers))
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.output_proj = nn.Linear(cfg.hidden_size, cfg.latent_dim)
        self.window, self.head_dim, self.rope_theta = cfg.sliding_window, cfg.head_dim, cfg.rope_theta
        # A buffer, so it lives on the model's device: computing it per call on the CPU put a host-to-device
        # copy (a sync) in every frame of the compiled step. Non-persistent: not part of the checkpoint.
        self.register_buffer("inv_freq", rope_inv_freq(cfg.head_dim, cfg.rope_theta), persistent=False)

    def forward(self, x: torch.Tensor, positions: torch.Tensor,
                past: list[tuple[torch.Tensor, torch.Tensor]] | None = None, past_positions: torch.Tensor | None = None,
                ) -> tuple[torch.Tensor, list[tuple[torch.Tensor, torch.Tensor]]]:
        """x (B, T, latent), positions (B, T) -> (B, T, latent) and every layer's (keys, values).

        `past` holds per layer the rotated keys/values of earlier frames at `past_positions` (B, P);
        a negative position marks an empty slot.
        """
        h = self.input_proj(x)
        cos, sin = rope_cos_sin(positions, self.inv_freq.float(), h.dtype)
        k_pos = positions if past_positions is None else torch.cat([past_positions, positions], dim=1)
        mask = window_mask(positions, k_pos, self.window)
        present = []
        for i, layer in enumerate(self.layers):
            h, kv = layer(h, cos, sin, mask, None if past is None else past[i])
            present.append(kv)
        return self.output_proj(self.norm(h)), present


# ----------------------------------------------------------------------------- the decoder

class CodecDecoder(nn.Module):
    def __init__(self, config: CodecDecoderConfig) -> None:
        super().__init__()
        self.config = config
        latent, dim = config.latent_dim, config.decoder_dim
        self.quantizer = SplitResidualVQ(config)
        self.pre_conv = CausalConv1d(config.codebook_dim, latent, 3)
        self.pre_transformer = CodecTransformer(config)
        self.upsample = nn.ModuleList(
            nn.ModuleList([CausalTransposedConv1d(latent, latent, f, f), ConvNeXtBlock(latent)])
            for f in config.upsampling_ratios)
        dims = [dim // 2**i for i in range(len(config.upsample_rates) + 1)]
        self.decoder = nn.ModuleList([
            CausalConv1d(latent, dim, 7),
            *(DecoderBlock(dims[i], dims[i + 1], rate) for i, rate in enumerate(config.upsample_rates)),
            SnakeBeta(dims[-1]),
            CausalConv1d(dims[-1], 1, 7),
        ])
        self.samples_per_frame = config.samples_per_frame

    def forward(self, codes: torch.Tensor) -> torch.Tensor:
        """codes (B, 16, T) int64 in [0, codebook_size) -> waveform (B, 1, T*1920) in [-1, 1]."""
        return self.unclamped(codes).clamp(min=-1.0, max=1.0)

    def unclamped(self, codes: torch.Tensor) -> torch.Tensor:
        """`forward` before the final clamp: (B, 16, T) -> (B, 1, T*1920)."""
        if codes.shape[1] != self.config.num_quantizers:
            raise ValueError(f"expected {self.config.num_quantizers} codebooks, got codes of shape {tuple(codes.shape)}")
        batch, _, frames = codes.shape
        hidden = self.pre_conv(self.quantizer.decode(codes))  # (B, latent, T)
        positions = torch.arange(frames, device=codes.device)[None].expand(batch, frames)
        hidden = self.pre_transformer(hidden.transpose(1, 2), positions)[0].transpose(1, 2)
        for transposed, convnext in self.upsample:
            hidden = convnext(transposed(hidden))  # (B, latent, T*4) after both
        for layer in self.decoder:
            hidden = layer(hidden)
        return hidden  # (B, 1, T*1920)


# ----------------------------------------------------------------------------- random weights

@torch.no_grad()
def init_random_(decoder: CodecDecoder, generator: torch.Generator) -> None:
    """Random weights that make audible, mostly unclipped, code-dependent audio (deterministic).

    Official defaults give all-zero codebooks (silence); trained ones have cluster_usage > 0. Weights are
    fan-in scaled so every stage stays O(1); layer scales and ConvNeXt gammas are large enough that the
    transformer and ConvNeXt matter; biases are non-zero (the streaming decoder must handle them). The
    output conv is then calibrated on random codes to a std of 0.25 with no DC.
    """

    def normal(shape: torch.Size, std: float) -> torch.Tensor:
        return torch.randn(shape, generator=generator) * std

    def uniform(shape: torch.Size, low: float, high: float) -> torch.Tensor:
        return low + (high - low) * torch.rand(shape, generator=generator)

    for module in decoder.modules():
        if isinstance(module, Codebook):
            usage = uniform(module.cluster_usage.shape, 0.5, 2.0)
            module.cluster_usage.copy_(usage)
            module.embedding_sum.copy_(usage[:, None] * normal(module.embedding_sum.shape, 1.0))
        elif isinstance(module, nn.Conv1d | nn.Linear):
            fan_in = module.weight[0].numel()
            module.weight.copy_(normal(module.weight.shape, 1.0 / math.sqrt(fan_in)))
        elif isinstance(module, nn.ConvTranspose1d):
            # Each output sample sums c_in channels times (k / stride) taps.
            fan_in = module.weight.shape[0] * module.weight.shape[2] // module.stride[0]
            module.weight.copy_(normal(module.weight.shape, 1.0 / math.sqrt(fan_in)))
        elif isinstance(module, RMSNorm | nn.LayerNorm):
            module.weight.copy_(uniform(module.weight.shape, 0.8, 1.2))
        elif isinstance(module, SnakeBeta):
            module.alpha.copy_(normal(module.alpha.shape, 0.2))
            module.beta.copy_(normal(module.beta.shape, 0.2))
        elif isinstance(module, LayerScale):
            module.scale.copy_(uniform(module.scale.shape, 0.2, 0.6))
        elif isinstance(module, ConvNeXtBlock):
            module.gamma.copy_(uniform(module.gamma.shape, 0.2, 0.6))
        if isinstance(module, nn.Conv1d | nn.Linear | nn.ConvTranspose1d | nn.LayerNorm) and module.bias is not None:
            module.bias.copy_(normal(module.bias.shape, 0.05))
    for layer in decoder.decoder:
        if isinstance(layer, DecoderBlock):
            for unit in layer.block[2:]:
                unit.conv2.conv.weight.mul_(0.5)  # residual branches add a fraction, not a doubling
    _calibrate_output_(decoder, generator)


@torch.no_grad()
def _calibrate_output_(decoder: CodecDecoder, generator: torch.Generator, std: float = 0.25) -> None:
    """Scale the last (linear) conv so the waveform has `std` and zero mean on random codes."""
    cfg = decoder.config
    codes = torch.randint(0, cfg.codebook_size, (1, cfg.num_quantizers, 8), generator=generator)
    out_conv = decoder.decoder[-1].conv
    device = out_conv.weight.device
    wave = decoder.unclamped(codes.to(device)).float() - out_conv.bias.float()[None, :, None]
    gain = std / wave.std().clamp(min=1e-12)
    out_conv.weight.mul_(gain)
    out_conv.bias.copy_(-gain * wave.mean())
