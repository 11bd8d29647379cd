"""Codec encoder of the 12 Hz speech tokenizer: 24 kHz audio -> 16 codes per 80 ms frame (voice cloning).

It is Kyutai's Mimi encoder as `transformers.MimiModel` 4.57.3 runs it, with the decoder parts removed
(the official `Qwen3TTSTokenizerV2Encoder`), written here in plain torch so that neither the 5.x Mimi
rewrite (new module tree, new config split) nor its attention changes can move the codes:
  SEANet: causal strided convs, 1920 -> ... -> 25 Hz (ratios 4, 5, 6, 8 from the input side)
  transformer at 25 Hz: pre-LayerNorm, RoPE, GELU MLP, layer scales, FULL causal attention
  downsample conv (stride 2, replicate padding) -> 12.5 Hz
  split RVQ: 1 semantic codebook + acoustic residual codebooks; the first 16 codes are kept.
Under 4.57.3 the config's `sliding_window` (250) only reaches flash-attention, and the official
Qwen3TTSModel.from_pretrained pops `attn_implementation` before loading the speech tokenizer, so Mimi
runs sdpa (or eager): FULL causal attention, which we reproduce (5.x would apply the window).
Parameter and buffer names equal the `encoder.*` keys of speech_tokenizer/model.safetensors.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

VALID_QUANTIZERS = 16  # speech_tokenizer config: encoder_valid_num_quantizers
SAMPLES_PER_FRAME = 1920  # encode_downsample_rate: 24 kHz / 12.5 Hz


@dataclass(frozen=True)
class CodecEncoderConfig:
    """The fields of a transformers MimiConfig that the encoder uses; defaults are MimiConfig's."""

    sampling_rate: int = 24000
    audio_channels: int = 1
    hidden_size: int = 512
    num_filters: int = 64
    num_residual_layers: int = 1
    upsampling_ratios: list[int] = field(default_factory=lambda: [8, 6, 5, 4])
    kernel_size: int = 7
    last_kernel_size: int = 3
    residual_kernel_size: int = 3
    dilation_growth_rate: int = 2
    use_causal_conv: bool = True
    pad_mode: str = "constant"
    compress: int = 2
    use_conv_shortcut: bool = False
    codebook_size: int = 2048
    codebook_dim: int = 256
    num_quantizers: int = 32
    num_semantic_quantizers: int = 1
    vector_quantization_hidden_dimension: int = 256
    num_hidden_layers: int = 8
    intermediate_size: int = 2048
    num_attention_heads: int = 8
    num_key_value_heads: int = 8
    head_dim: int | None = None
    hidden_act: str = "gelu"
    norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    attention_bias: bool = False
    frame_rate: float | None = None

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CodecEncoderConfig:
        names = {f.name for f in dataclasses.fields(cls)}
        kwargs = {k: v for k, v in data.items() if k in names}
        if data.get("_frame_rate") is not None:  # MimiConfig.to_dict() spells it with the underscore
            kwargs["frame_rate"] = data["_frame_rate"]
        cfg = cls(**kwargs)
        if not cfg.use_causal_conv or cfg.pad_mode not in ("constant", "replicate"):
            raise ValueError("the Mimi encoder here supports causal convs with constant/replicate padding only")
        if cfg.hidden_act != "gelu" or (data.get("rope_scaling") or {}).get("rope_type", "default") != "default":
            raise ValueError("unsupported Mimi encoder config: hidden_act must be 'gelu', RoPE the default one")
        if cfg.codebook_dim != cfg.quantizer_dim:
            raise ValueError("codebook_dim must equal the quantizer width (vector_quantization_hidden_dimension)")
        return cfg

    @property
    def attn_head_dim(self) -> int:
        return self.head_dim or self.hidden_size // self.num_attention_heads

    @property
    def quantizer_dim(self) -> int:
        return self.vector_quantization_hidden_dimension

    @property
    def encodec_frame_rate(self) -> int:
        """Frame rate of the SEANet output (25 Hz), before the downsample conv."""
        return math.ceil(self.sampling_rate / math.prod(self.upsampling_ratios))

    @property
    def output_frame_rate(self) -> float:
        if self.frame_rate is not None:
            return self.frame_rate
        # MimiConfig.frame_size: the SEANet strides times the stride-2 downsample.
        return self.sampling_rate / (math.prod(self.upsampling_ratios) * 2)


def real_mimi_config() -> dict[str, Any]:
    """encoder_config of the released Qwen3-TTS-Tokenizer-12Hz (MimiConfig defaults at 12.5 Hz)."""
    return {
        "model_type": "mimi", "sampling_rate": 24000, "audio_channels": 1, "hidden_size": 512, "num_filters": 64,
        "num_residual_layers": 1, "upsampling_ratios": [8, 6, 5, 4], "kernel_size": 7, "last_kernel_size": 3,
        "residual_kernel_size": 3, "dilation_growth_rate": 2, "use_causal_conv": True, "pad_mode": "constant",
        "compress": 2, "trim_right_ratio": 1.0, "codebook_size": 2048, "codebook_dim": 256, "num_quantizers": 32,
        "use_conv_shortcut": False, "vector_quantization_hidden_dimension": 256, "upsample_groups": 512,
        "num_hidden_layers": 8, "intermediate_size": 2048, "num_attention_heads": 8, "num_key_value_heads": 8,
        "head_dim": 64, "hidden_act": "gelu", "max_position_embeddings": 8000, "initializer_range": 0.02,
        "norm_eps": 1e-05, "use_cache": False, "use_streaming": False, "rope_theta": 10000.0, "sliding_window": 250,
        "attention_dropout": 0.0, "layer_scale_initial_scale": 0.01, "attention_bias": False,
        "num_semantic_quantizers": 1, "_frame_rate": 12.5,
    }


def tiny_mimi_config() -> dict[str, Any]:
    """Same strides, frame rate and codebook size as the real encoder, tiny widths, one layer."""
    cfg = real_mimi_config()
    cfg.update(num_filters=4, hidden_size=32, num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=2,
               head_dim=16, intermediate_size=64, codebook_dim=16, vector_quantization_hidden_dimension=16,
               num_quantizers=VALID_QUANTIZERS, upsample_groups=32)
    return cfg


class CausalConv1d(nn.Module):
    """Conv1d padded on the left by (effective kernel - stride) and on the right just enough to complete
    the last stride, so that n samples give ceil(n / stride) outputs, each seeing only the past."""

    def __init__(self, c_in: int, c_out: int, kernel: int, stride: int = 1, dilation: int = 1,
                 bias: bool = True, pad_mode: str = "constant") -> None:
        super().__init__()
        self.conv = nn.Conv1d(c_in, c_out, kernel, stride, dilation=dilation, bias=bias)
        self.stride = stride
        self.pad_left = (kernel - 1) * dilation + 1 - stride
        self.pad_mode = pad_mode

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pad_right = -x.shape[-1] % self.stride
        return self.conv(F.pad(x, (self.pad_left, pad_right), mode=self.pad_mode))


class ResnetBlock(nn.Module):
    def __init__(self, cfg: CodecEncoderConfig, dim: int, dilation: int) -> None:
        super().__init__()
        hidden = dim // cfg.compress
        # ELUs sit in the list so the conv indices (block.1, block.3) match the checkpoint.
        self.block = nn.ModuleList([
            nn.ELU(), CausalConv1d(dim, hidden, cfg.residual_kernel_size, dilation=dilation, pad_mode=cfg.pad_mode),
            nn.ELU(), CausalConv1d(hidden, dim, 1, pad_mode=cfg.pad_mode),
        ])
        self.shortcut = CausalConv1d(dim, dim, 1, pad_mode=cfg.pad_mode) if cfg.use_conv_shortcut else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        residual = self.shortcut(x)
        for layer in self.block:
            x = layer(x)
        return residual + x


class SEANetEncoder(nn.Module):
    """(B, channels, n) audio -> (B, hidden, n / prod(ratios)) at the encodec frame rate (25 Hz)."""

    def __init__(self, cfg: CodecEncoderConfig) -> None:
        super().__init__()
        layers: list[nn.Module] = [CausalConv1d(cfg.audio_channels, cfg.num_filters, cfg.kernel_size,
                                                pad_mode=cfg.pad_mode)]
        width = cfg.num_filters
        for ratio in reversed(cfg.upsampling_ratios):
            layers += [ResnetBlock(cfg, width, cfg.dilation_growth_rate**j) for j in range(cfg.num_residual_layers)]
            layers += [nn.ELU(), CausalConv1d(width, width * 2, 2 * ratio, stride=ratio, pad_mode=cfg.pad_mode)]
            width *= 2
        layers += [nn.ELU(), CausalConv1d(width, cfg.hidden_size, cfg.last_kernel_size, pad_mode=cfg.pad_mode)]
        self.layers = nn.ModuleList(layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = layer(x)
        return x


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


class Attention(nn.Module):
    def __init__(self, cfg: CodecEncoderConfig) -> None:
        super().__init__()
        self.n_heads, self.n_kv, self.head_dim = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.attn_head_dim
        bias = cfg.attention_bias
        self.q_proj = nn.Linear(cfg.hidden_size, self.n_heads * self.head_dim, bias=bias)
        self.k_proj = nn.Linear(cfg.hidden_size, self.n_kv * self.head_dim, bias=bias)
        self.v_proj = nn.Linear(cfg.hidden_size, self.n_kv * self.head_dim, bias=bias)
        self.o_proj = nn.Linear(self.n_heads * self.head_dim, cfg.hidden_size, bias=bias)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        B, T, _ = x.shape
        q = self.q_proj(x).view(B, T, self.n_heads, self.head_dim).transpose(1, 2)  # (B, H, T, hd)
        k = self.k_proj(x).view(B, T, self.n_kv, self.head_dim).transpose(1, 2)
        v = self.v_proj(x).view(B, T, self.n_kv, self.head_dim).transpose(1, 2)
        q, k = q * cos + rotate_half(q) * sin, k * cos + rotate_half(k) * sin
        if self.n_kv != self.n_heads:
            k = k.repeat_interleave(self.n_heads // self.n_kv, dim=1)
            v = v.repeat_interleave(self.n_heads // self.n_kv, dim=1)
        # Full causal attention: no sliding window (see the module docstring).
        out = F.scaled_dot_product_attention(q, k, v, is_causal=T > 1)
        return self.o_proj(out.transpose(1, 2).reshape(B, T, -1))


class MLP(nn.Module):
    def __init__(self, cfg: CodecEncoderConfig) -> None:
        super().__init__()
        self.fc1 = nn.Linear(cfg.hidden_size, cfg.intermediate_size, bias=False)
        self.fc2 = nn.Linear(cfg.intermediate_size, cfg.hidden_size, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


class LayerScale(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.scale * x


class TransformerLayer(nn.Module):
    def __init__(self, cfg: CodecEncoderConfig) -> None:
        super().__init__()
        self.self_attn = Attention(cfg)
        self.mlp = MLP(cfg)
        self.input_layernorm = nn.LayerNorm(cfg.hidden_size, eps=cfg.norm_eps)
        self.post_attention_layernorm = nn.LayerNorm(cfg.hidden_size, eps=cfg.norm_eps)
        self.self_attn_layer_scale = LayerScale(cfg.hidden_size)
        self.mlp_layer_scale = LayerScale(cfg.hidden_size)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        x = x + self.self_attn_layer_scale(self.self_attn(self.input_layernorm(x), cos, sin))
        return x + self.mlp_layer_scale(self.mlp(self.post_attention_layernorm(x)))


class Transformer(nn.Module):
    def __init__(self, cfg: CodecEncoderConfig) -> None:
        super().__init__()
        self.head_dim, self.rope_theta = cfg.attn_head_dim, cfg.rope_theta
        self.layers = nn.ModuleList(TransformerLayer(cfg) for _ in range(cfg.num_hidden_layers))

    def rope(self, T: int, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # Computed per call (not a buffer): nothing to leave uninitialised when built on the meta device.
        exponents = torch.arange(0, self.head_dim, 2, dtype=torch.int64, device=x.device).float() / self.head_dim
        inv_freq = 1.0 / (self.rope_theta**exponents)
        angles = torch.outer(torch.arange(T, device=x.device).float(), inv_freq)  # (T, hd/2)
        angles = torch.cat((angles, angles), dim=-1)
        return angles.cos().to(x.dtype), angles.sin().to(x.dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (B, T, hidden) -> (B, T, hidden)."""
        cos, sin = self.rope(x.shape[1], x)
        for layer in self.layers:
            x = layer(x, cos, sin)
        return x


class Codebook(nn.Module):
    """Euclidean codebook stored as running sums: centroid = embed_sum / cluster_usage."""

    epsilon = 1e-5

    def __init__(self, size: int, dim: int) -> None:
        super().__init__()
        self.register_buffer("initialized", torch.ones(1))
        self.register_buffer("cluster_usage", torch.ones(size))
        self.register_buffer("embed_sum", torch.zeros(size, dim))

    @property
    def embed(self) -> torch.Tensor:
        return self.embed_sum / self.cluster_usage.clamp(min=self.epsilon)[:, None]

    def encode(self, x: torch.Tensor, embed: torch.Tensor) -> torch.Tensor:
        """x (B, T, D) -> nearest centroid ids (B, T). Same cdist call as Mimi's, so ties break alike."""
        B, T, D = x.shape
        flat = x.reshape(B * T, D).float()
        return torch.cdist(flat[None], embed[None].float(), p=2)[0].argmin(dim=-1).view(B, T)


class VectorQuantizer(nn.Module):
    def __init__(self, cfg: CodecEncoderConfig) -> None:
        super().__init__()
        self.codebook = Codebook(cfg.codebook_size, cfg.codebook_dim)


class ResidualVectorQuantizer(nn.Module):
    def __init__(self, cfg: CodecEncoderConfig, num_quantizers: int) -> None:
        super().__init__()
        self.layers = nn.ModuleList(VectorQuantizer(cfg) for _ in range(num_quantizers))
        self.input_proj: nn.Conv1d | None = None
        self.output_proj: nn.Conv1d | None = None
        if cfg.quantizer_dim != cfg.hidden_size:
            self.input_proj = nn.Conv1d(cfg.hidden_size, cfg.quantizer_dim, 1, bias=False)
            # Decoder side only; kept so the checkpoint loads strictly.
            self.output_proj = nn.Conv1d(cfg.quantizer_dim, cfg.hidden_size, 1, bias=False)

    def encode(self, latents: torch.Tensor, num_quantizers: int) -> torch.Tensor:
        """latents (B, hidden, T) -> codes (B, num_quantizers, T): each stage quantizes what is left."""
        if self.input_proj is not None:
            latents = self.input_proj(latents)
        residual = latents.transpose(1, 2)  # (B, T, D)
        codes = []
        for layer in self.layers[:num_quantizers]:
            embed = layer.codebook.embed
            ids = layer.codebook.encode(residual, embed)
            residual = residual - F.embedding(ids, embed)
            codes.append(ids)
        return torch.stack(codes, dim=1)


class SplitResidualVectorQuantizer(nn.Module):
    """Semantic codebook(s) and acoustic residual codebooks, each quantizing the same latents."""

    def __init__(self, cfg: CodecEncoderConfig) -> None:
        super().__init__()
        self.num_semantic = cfg.num_semantic_quantizers
        self.semantic_residual_vector_quantizer = ResidualVectorQuantizer(cfg, cfg.num_semantic_quantizers)
        self.acoustic_residual_vector_quantizer = ResidualVectorQuantizer(
            cfg, cfg.num_quantizers - cfg.num_semantic_quantizers)

    def encode(self, latents: torch.Tensor, num_quantizers: int) -> torch.Tensor:
        codes = self.semantic_residual_vector_quantizer.encode(latents, self.num_semantic)
        if num_quantizers > self.num_semantic:
            acoustic = self.acoustic_residual_vector_quantizer.encode(latents, num_quantizers - self.num_semantic)
            codes = torch.cat([codes, acoustic], dim=1)
        return codes


class CodecEncoder(nn.Module):
    def __init__(self, cfg: CodecEncoderConfig) -> None:
        super().__init__()
        if not cfg.num_semantic_quantizers <= VALID_QUANTIZERS <= cfg.num_quantizers:
            raise ValueError(f"the encoder needs at least {VALID_QUANTIZERS} quantizers")
        self.config = cfg
        self.encoder = SEANetEncoder(cfg)
        self.encoder_transformer = Transformer(cfg)
        self.downsample: CausalConv1d | None = None
        if cfg.output_frame_rate != cfg.encodec_frame_rate:
            # As MimiModel 4.57.3 builds it: stride 2, kernel 2 * the rate ratio, replicate padding.
            kernel = 2 * int(cfg.encodec_frame_rate / cfg.output_frame_rate)
            self.downsample = CausalConv1d(cfg.hidden_size, cfg.hidden_size, kernel, stride=2, bias=False,
                                           pad_mode="replicate")
        self.quantizer = SplitResidualVectorQuantizer(cfg)

    @classmethod
    def from_config(cls, mimi_config: dict[str, Any]) -> CodecEncoder:
        """Build from a MimiConfig-layout dict (speech_tokenizer/config.json -> encoder_config)."""
        return cls(CodecEncoderConfig.from_dict(mimi_config))

    def latents(self, audio: torch.Tensor) -> torch.Tensor:
        """audio (B, channels, n) -> latents (B, hidden, ceil(n / 1920))."""
        x = self.encoder(audio)  # (B, hidden, T25)
        x = self.encoder_transformer(x.transpose(1, 2)).transpose(1, 2)
        return self.downsample(x) if self.downsample is not None else x

    def forward(self, audio: torch.Tensor, num_quantizers: int = VALID_QUANTIZERS) -> torch.Tensor:
        """audio (B, channels, n) -> codes (B, num_quantizers, ceil(n / 1920)), int64."""
        return self.quantizer.encode(self.latents(audio), num_quantizers)

    @torch.no_grad()
    def encode(self, audio_24k: torch.Tensor) -> torch.Tensor:
        """One mono clip (n,) at 24 kHz -> codes (ceil(n / 1920), 16), as the official tokenizer's encode.

        The official path (EncodecFeatureExtractor, one clip) only makes it a float (1, 1, n) batch, with no
        padding, so the trim to ceil(n / 1920) frames it then applies changes nothing. Downmixing and
        resampling to 24 kHz are the caller's job."""
        if audio_24k.dim() != 1 or audio_24k.numel() == 0:
            raise ValueError(f"expected a non-empty mono waveform (n,), got shape {tuple(audio_24k.shape)}")
        weight = self.encoder.layers[0].conv.weight
        audio = audio_24k.to(device=weight.device, dtype=torch.float32).to(weight.dtype)
        codes = self(audio.view(1, 1, -1))[0]  # (16, T)
        return codes[:, : math.ceil(audio.numel() / SAMPLES_PER_FRAME)].transpose(0, 1).contiguous()


@torch.no_grad()
def init_random_(encoder: CodecEncoder, generator: torch.Generator) -> None:
    """Deterministic random weights whose codes vary with the input, as a trained codec's would.

    Scale-preserving layers; then each quantizer's input projection is calibrated on a probe signal to
    unit RMS and every codebook's centroids are drawn ~N(0, 1), so each stage sees a residual of about
    the codebook's own scale. (Shrinking codebooks stage by stage, as a trained RVQ has, would leave the
    last stages choosing between near-equidistant centroids: codes would then hinge on float rounding.)
    Cluster usages are random so that the embed_sum / cluster_usage division matters."""

    def normal(shape: torch.Size | tuple[int, ...], std: float, mean: float = 0.0) -> torch.Tensor:
        return torch.randn(shape, generator=generator) * std + mean

    for name, param in encoder.named_parameters():
        if name.endswith("layer_scale.scale"):
            param.copy_(normal(param.shape, 0.1, mean=0.5))
        elif "layernorm" in name:
            param.copy_(normal(param.shape, 0.1, mean=1.0 if name.endswith("weight") else 0.0))
        elif name.endswith(".bias"):
            param.copy_(normal(param.shape, 0.05))
        else:  # conv (out, in, k) and linear (out, in) weights
            param.copy_(normal(param.shape, 1.0 / math.sqrt(param[0].numel())))

    cfg = encoder.config
    probe = normal((1, cfg.audio_channels, 2 * cfg.sampling_rate), 0.1)
    latents = encoder.latents(probe.to(encoder.encoder.layers[0].conv.weight))
    quantizer = encoder.quantizer
    for rvq in (quantizer.semantic_residual_vector_quantizer, quantizer.acoustic_residual_vector_quantizer):
        projected = rvq.input_proj(latents) if rvq.input_proj is not None else latents
        rms = projected.pow(2).mean().sqrt().item()
        if rvq.input_proj is not None:  # normalise the projection; else scale the centroids instead
            rvq.input_proj.weight.div_(rms)
            rms = 1.0
        for layer in rvq.layers:
            book = layer.codebook
            usage = torch.rand(book.cluster_usage.shape, generator=generator) * 1.5 + 0.5
            centroids = normal(book.embed_sum.shape, rms)
            book.cluster_usage.copy_(usage)
            book.embed_sum.copy_(centroids * usage[:, None])
            book.initialized.fill_(1.0)
