"""Exact incremental Code2Wav: decode codes frame by frame; the samples equal one whole-sequence forward.

Every layer of the decoder is causal, so a step with n new frames needs only a bounded history per layer,
kept per stream in `CodecStreamState`:
  - causal conv (kernel k, dilation d): its last (k-1)*d input samples at its own rate. For the residual
    units that is the post-SnakeBeta input, which is what the conv sees. Zeros = the official left padding.
  - transposed conv (k = 2r, stride r): the r output samples the previous input spilled past its span
    (kept without bias; the bias is added once, when the samples are emitted).
  - attention: the rotated keys/values of the last window-1 frames. Their absolute positions follow from
    the row's frame counter, so RoPE and the window mask are those of the full pass.
RVQ dequantisation, norms, SnakeBeta, pointwise layers and the k = s transposed convs are stateless.
(The official chunked_decode re-decodes with 25 frames of left context, which truncates the attention
history: approximate. This is not that.)

Batching: a state holds B independent rows (streams). `CodecStreamState.stack` / `.split` / `.select`
gather and scatter rows; rows may be at different frame counts (a stream that started later).
`StreamingCodecDecoder.step(list_of_states, codes)` does the gather/step/scatter for a scheduler.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from .codec_decoder import (
    CausalConv1d,
    CausalTransposedConv1d,
    CodecAttention,
    CodecDecoder,
    DecoderBlock,
    SnakeBeta,
)


def pcm_to_int16(samples: torch.Tensor) -> torch.Tensor:
    """Samples in [-1, 1] (any float dtype) -> int16, scaled, rounded and clamped in fp32.

    Never scale in bf16: 1.0 * 32767 rounds to 32768 there, which wraps to -32768 in int16 (a full-scale
    click). In fp32 the clamp changes nothing for samples already in [-1, 1]."""
    return (samples.float() * 32767.0).round().clamp(-32768.0, 32767.0).to(torch.int16)


@dataclass
class CodecStreamState:
    """Decoder history of B streams. Every tensor is batch-first. A step replaces the tensors and never
    writes into them, so rows returned by `split`/`select` may share storage safely."""

    frames: torch.Tensor  # (B,) int64: frames decoded so far = absolute position of each row's next frame
    tails: dict[str, torch.Tensor]  # module path (+ ".k"/".v" for attention) -> (B, ...) history

    @property
    def batch(self) -> int:
        return self.frames.shape[0]

    @staticmethod
    def stack(states: Sequence[CodecStreamState]) -> CodecStreamState:
        """Rows of all `states`, in order, as one batched state."""
        if len(states) == 1:
            return CodecStreamState(states[0].frames, dict(states[0].tails))
        return CodecStreamState(torch.cat([s.frames for s in states]),
                                {k: torch.cat([s.tails[k] for s in states]) for k in states[0].tails})

    def split(self) -> list[CodecStreamState]:
        """One single-row state per row (views)."""
        return [self.select(slice(i, i + 1)) for i in range(self.batch)]

    def select(self, rows: slice | Sequence[int] | torch.Tensor) -> CodecStreamState:
        """The given rows, e.g. the live streams of a batch."""
        if not isinstance(rows, slice):
            rows = torch.as_tensor(rows, dtype=torch.long, device=self.frames.device)
        return CodecStreamState(self.frames[rows], {k: v[rows] for k, v in self.tails.items()})

    def assign_(self, other: CodecStreamState) -> None:
        """Take over `other`'s tensors (same batch size): how a batched step hands rows back."""
        assert other.batch == self.batch, (other.batch, self.batch)
        self.frames, self.tails = other.frames, dict(other.tails)

    def clone(self) -> CodecStreamState:
        """An independent copy, e.g. of a voice's primed state."""
        return CodecStreamState(self.frames.clone(), {k: v.clone() for k, v in self.tails.items()})


class StreamingCodecDecoder:
    """Runs a `CodecDecoder`'s own modules incrementally. Stateless itself: all history is in the states."""

    def __init__(self, decoder: CodecDecoder) -> None:
        self.decoder = decoder
        self.window = decoder.config.sliding_window
        self.samples_per_frame = decoder.samples_per_frame
        self._keys = {module: name for name, module in decoder.named_modules()}
        self._attention = [name for name, m in decoder.named_modules() if isinstance(m, CodecAttention)]

    def _tail_shapes(self) -> dict[str, tuple[int, ...]]:
        """Per-row shape of every history tensor, derived from the modules themselves."""
        shapes: dict[str, tuple[int, ...]] = {}
        for name, m in self.decoder.named_modules():
            if isinstance(m, CausalConv1d) and m.context > 0:
                shapes[name] = (m.conv.in_channels, m.context)
            elif isinstance(m, CausalTransposedConv1d) and m.overlap > 0:
                shapes[name] = (m.conv.out_channels, m.overlap)
            elif isinstance(m, CodecAttention):
                shapes[f"{name}.k"] = shapes[f"{name}.v"] = (m.n_kv_heads, self.window - 1, m.head_dim)
        return shapes

    def new_state(self, batch: int = 1) -> CodecStreamState:
        """B fresh streams: zero history (= the full pass's zero left padding), frame counter 0."""
        ref = self.decoder.pre_conv.conv.weight
        tails = {k: torch.zeros((batch, *shape), dtype=ref.dtype, device=ref.device)
                 for k, shape in self._tail_shapes().items()}
        return CodecStreamState(torch.zeros(batch, dtype=torch.long, device=ref.device), tails)

    def decode_step(self, codes: torch.Tensor, state: CodecStreamState) -> torch.Tensor:
        """codes (B, 16, n) -> samples (B, n*1920) of the n new frames, clamped to [-1, 1].

        Row b continues from state row b (its own frame count); `state` is updated in place.
        """
        dec = self.decoder
        batch, _, n = codes.shape
        if batch != state.batch:
            raise ValueError(f"codes have {batch} rows but the state has {state.batch}")
        if n < 1:
            raise ValueError("decode_step needs at least one frame")
        old, new = state.tails, {}
        codes = codes.to(state.frames.device)

        hidden = self._conv(dec.pre_conv, dec.quantizer.decode(codes), old, new)  # (B, latent, n)
        hidden = self._transformer(hidden.transpose(1, 2), state, new).transpose(1, 2)
        for transposed, convnext in dec.upsample:
            hidden = self._transposed(transposed, hidden, old, new)
            hidden = hidden + convnext.pointwise(self._conv(convnext.dwconv, hidden, old, new))
        for layer in dec.decoder:
            if isinstance(layer, CausalConv1d):
                hidden = self._conv(layer, hidden, old, new)
            elif isinstance(layer, DecoderBlock):
                hidden = self._block(layer, hidden, old, new)
            else:
                assert isinstance(layer, SnakeBeta)
                hidden = layer(hidden)

        state.tails, state.frames = new, state.frames + n
        return hidden.clamp(min=-1.0, max=1.0)[:, 0]  # (B, n*1920)

    @torch.no_grad()
    def prime(self, codes: torch.Tensor, state: CodecStreamState) -> None:
        """Run reference codes (B, 16, n) through the state, discarding their audio (voice cloning):
        the following steps continue as if the reference had been decoded in front of them."""
        self.decode_step(codes, state)

    @torch.no_grad()
    def step(self, states: Sequence[CodecStreamState], codes: torch.Tensor) -> torch.Tensor:
        """One batched step over independent streams: codes (B, 16) or (B, 16, n), states[b] is row b.

        Returns (B, n*1920); each state is updated in place.
        """
        if codes.dim() == 2:
            codes = codes[:, :, None]
        batched = CodecStreamState.stack(states)
        out = self.decode_step(codes, batched)
        rows = [batched] if len(states) == 1 else batched.split()
        for state, row in zip(states, rows, strict=True):
            state.assign_(row)
        return out

    # ------------------------------------------------------------------ stateful layers

    def _conv(self, conv: CausalConv1d, x: torch.Tensor, old: dict, new: dict) -> torch.Tensor:
        """Causal conv continued from its input history: (B, C, t) -> (B, C_out, t)."""
        if conv.context == 0:
            return conv.conv(x)
        key = self._keys[conv]
        full = torch.cat([old[key], x], dim=-1)
        new[key] = full[..., full.shape[-1] - conv.context:]
        return conv.conv(full)

    def _transposed(self, up: CausalTransposedConv1d, x: torch.Tensor, old: dict, new: dict) -> torch.Tensor:
        """Transposed conv: (B, C, t) -> (B, C_out, t*s); the spill-over past t*s waits for the next step.

        As one GEMM (torch's CPU transposed conv is a slow path): input sample i makes k = s + overlap
        outputs; its first s land in span i, the rest spill into span i+1.
        """
        weight, bias, s = up.conv.weight, up.conv.bias, up.stride  # weight (C, C_out, k)
        batch, _, t = x.shape
        c_out, k = weight.shape[1], weight.shape[2]
        if up.overlap not in (0, s):
            raise NotImplementedError(f"transposed conv with kernel {k}, stride {s}")
        taps = torch.matmul(x.transpose(1, 2), weight.flatten(1)).view(batch, t, c_out, k)
        spans = taps[..., :s]  # (B, t, C_out, s)
        if up.overlap:
            key = self._keys[up]
            spill = torch.cat([old[key][:, None], taps[..., s:]], dim=1)  # (B, t+1, C_out, s)
            spans = spans + spill[:, :t]
            new[key] = spill[:, t]
        return spans.permute(0, 2, 1, 3).reshape(batch, c_out, t * s) + bias[None, :, None]

    def _block(self, block: DecoderBlock, x: torch.Tensor, old: dict, new: dict) -> torch.Tensor:
        snake, up, *units = block.block
        x = self._transposed(up, snake(x), old, new)
        for unit in units:
            h = self._conv(unit.conv1, unit.act1(x), old, new)
            x = x + self._conv(unit.conv2, unit.act2(h), old, new)
        return x

    def _transformer(self, x: torch.Tensor, state: CodecStreamState, new: dict) -> torch.Tensor:
        """(B, n, latent) -> (B, n, latent), attending over each row's last window-1 frames and itself."""
        n, keep = x.shape[1], self.window - 1
        device = state.frames.device
        positions = state.frames[:, None] + torch.arange(n, device=device)  # (B, n) absolute
        # Cache slot j of a row holds frame frames-keep+j; negative = before the stream began (masked).
        past_positions = state.frames[:, None] - keep + torch.arange(keep, device=device)
        past = [(state.tails[f"{name}.k"], state.tails[f"{name}.v"]) for name in self._attention]
        out, present = self.decoder.pre_transformer(x, positions, past, past_positions)
        for name, (k, v) in zip(self._attention, present, strict=True):
            new[f"{name}.k"], new[f"{name}.v"] = k[:, :, k.shape[2] - keep:], v[:, :, v.shape[2] - keep:]
        return out
