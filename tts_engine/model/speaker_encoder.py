"""ECAPA-TDNN speaker encoder of the Base checkpoints: log-mel (B, T, 128) -> x-vector (B, enc_dim).

Parameter names equal the official `speaker_encoder.*` keys. Every conv is 'same'-padded by
reflection, as in the official module (it matters at the clip edges). The x-vector is used verbatim
as the talker's speaker row, so enc_dim equals the talker hidden size.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .config import SpeakerEncoderConfig
from .mel import log_mel_spectrogram


def tiny_speaker_encoder_config(enc_dim: int) -> SpeakerEncoderConfig:
    """A few-thousand-parameter encoder with the real topology, for tiny checkpoints and tests."""
    return SpeakerEncoderConfig(enc_dim=enc_dim, enc_channels=[32, 32, 32, 32, 96], enc_attention_channels=16,
                                enc_se_channels=16, enc_res2net_scale=8)


def _conv(c_in: int, c_out: int, kernel: int = 1, dilation: int = 1) -> nn.Conv1d:
    return nn.Conv1d(c_in, c_out, kernel, dilation=dilation, padding="same", padding_mode="reflect")


class TDNN(nn.Module):
    """Conv1d + ReLU."""

    def __init__(self, c_in: int, c_out: int, kernel: int, dilation: int) -> None:
        super().__init__()
        self.conv = _conv(c_in, c_out, kernel, dilation)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.conv(x))


class Res2Net(nn.Module):
    """Split channels into `scale` groups; group i (i >= 1) is convolved after adding group i-1's output,
    so later groups see a growing receptive field. Group 0 passes through."""

    def __init__(self, channels: int, scale: int, kernel: int, dilation: int) -> None:
        super().__init__()
        self.scale = scale
        width = channels // scale
        self.blocks = nn.ModuleList(TDNN(width, width, kernel, dilation) for _ in range(scale - 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        parts = torch.chunk(x, self.scale, dim=1)
        outs = [parts[0]]
        for i, block in enumerate(self.blocks, start=1):
            outs.append(block(parts[i] if i == 1 else parts[i] + outs[-1]))
        return torch.cat(outs, dim=1)


class SqueezeExcite(nn.Module):
    def __init__(self, channels: int, se_channels: int) -> None:
        super().__init__()
        self.conv1 = _conv(channels, se_channels)
        self.conv2 = _conv(se_channels, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate = torch.sigmoid(self.conv2(torch.relu(self.conv1(x.mean(dim=2, keepdim=True)))))  # (B, C, 1)
        return x * gate


class SERes2NetBlock(nn.Module):
    """TDNN(1x1) -> Res2Net -> TDNN(1x1) -> squeeze-excite, plus the residual."""

    def __init__(self, c_in: int, c_out: int, scale: int, se_channels: int, kernel: int, dilation: int) -> None:
        super().__init__()
        self.tdnn1 = TDNN(c_in, c_out, 1, 1)
        self.res2net_block = Res2Net(c_out, scale, kernel, dilation)
        self.tdnn2 = TDNN(c_out, c_out, 1, 1)
        self.se_block = SqueezeExcite(c_out, se_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.se_block(self.tdnn2(self.res2net_block(self.tdnn1(x))))


def _weighted_stats(x: torch.Tensor, weights: torch.Tensor, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and std over time of x (B, C, T) under weights (B, 1|C, T) that sum to 1 -> (B, C) each."""
    mean = (weights * x).sum(dim=2)
    std = torch.sqrt((weights * (x - mean[:, :, None]).pow(2)).sum(dim=2).clamp(min=eps))
    return mean, std


class AttentiveStatsPool(nn.Module):
    """Per-channel attention over time, conditioned on the utterance's global mean and std; returns the
    attention-weighted mean and std concatenated (B, 2C, 1)."""

    eps = 1e-12

    def __init__(self, channels: int, attention_channels: int) -> None:
        super().__init__()
        self.tdnn = TDNN(channels * 3, attention_channels, 1, 1)
        self.conv = _conv(attention_channels, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, C, T = x.shape
        uniform = torch.ones(B, 1, T, dtype=x.dtype, device=x.device) / T
        mean, std = _weighted_stats(x, uniform, self.eps)
        context = torch.cat([x, mean[:, :, None].expand(B, C, T), std[:, :, None].expand(B, C, T)], dim=1)
        attention = torch.softmax(self.conv(torch.tanh(self.tdnn(context))), dim=2)  # (B, C, T)
        mean, std = _weighted_stats(x, attention, self.eps)
        return torch.cat([mean, std], dim=1)[:, :, None]


class SpeakerEncoder(nn.Module):
    def __init__(self, cfg: SpeakerEncoderConfig) -> None:
        super().__init__()
        chans, kernels, dils = cfg.enc_channels, cfg.enc_kernel_sizes, cfg.enc_dilations
        if not len(chans) == len(kernels) == len(dils):
            raise ValueError("enc_channels, enc_kernel_sizes and enc_dilations must have the same length")
        self.config = cfg
        blocks: list[nn.Module] = [TDNN(cfg.mel_dim, chans[0], kernels[0], dils[0])]
        for i in range(1, len(chans) - 1):
            blocks.append(SERes2NetBlock(chans[i - 1], chans[i], cfg.enc_res2net_scale, cfg.enc_se_channels,
                                         kernels[i], dils[i]))
        self.blocks = nn.ModuleList(blocks)
        # Multi-layer feature aggregation: the SE-Res2Net outputs concatenated (their sum must be chans[-1]).
        self.mfa = TDNN(chans[-1], chans[-1], kernels[-1], dils[-1])
        self.asp = AttentiveStatsPool(chans[-1], cfg.enc_attention_channels)
        self.fc = _conv(chans[-1] * 2, cfg.enc_dim)

    def forward(self, mels: torch.Tensor) -> torch.Tensor:
        """mels (B, T, mel_dim) -> x-vectors (B, enc_dim). T must exceed the largest reflect pad (4)."""
        x = mels.transpose(1, 2)  # (B, mel_dim, T)
        outs = []
        for block in self.blocks:
            x = block(x)
            outs.append(x)
        x = self.mfa(torch.cat(outs[1:], dim=1))
        return self.fc(self.asp(x))[:, :, 0]

    @torch.no_grad()
    def extract_xvector(self, audio_24k: torch.Tensor) -> torch.Tensor:
        """audio (n,) float at 24 kHz, mono -> x-vector (enc_dim,) in this module's dtype.

        As the official `extract_speaker_embedding`: the mel is computed in float32, then cast."""
        weight = self.fc.weight
        mels = log_mel_spectrogram(audio_24k.to(weight.device).reshape(1, -1))
        return self(mels.to(weight.dtype))[0]


@torch.no_grad()
def init_random_(encoder: SpeakerEncoder, generator: torch.Generator) -> None:
    """Deterministic scale-preserving random weights: conv weights ~N(0, 1/fan_in), small random biases."""
    for name, param in encoder.named_parameters():
        if name.endswith(".weight"):
            fan_in = param[0].numel()
            param.normal_(0.0, 1.0 / math.sqrt(fan_in), generator=generator)
        else:
            param.normal_(0.0, 0.1, generator=generator)
