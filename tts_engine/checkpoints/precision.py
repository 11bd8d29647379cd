"""CPU precision modes: the talker and its code predictor in bf16, or with int8 weights.

    model = load_model("./ckpt", precision="int8")        # or apply_precision(load_model(...), "int8")
    variant = with_precision(model, "bf16")               # a second model on the same loaded weights

The fidelity contract (codes equal to the official package) holds for `fp32`, the default: the strict
fp32 load, untouched. The other modes are converted after that load and trade exactness for speed; at
batch 1 the engine is memory-bound, so fewer weight bytes per frame is most of the gain:
  - bf16: talker and code predictor weights and activations in bf16 (half the bytes). What stays fp32:
    RMSNorm statistics (layers.RMSNorm normalises in fp32 whatever the input), the RoPE frequencies and
    angles (cos/sin are computed in fp32 and rounded once, as the official bf16 model does), the logits
    processors and the sampling softmax (frame_step/generate cast the logits to fp32), the codec decoder
    and the speaker encoder.
  - int8: bf16 as above, and every nn.Linear of the talker but `codec_head` (decoder layers, text
    projection, the predictor's input projection and its 15 heads) replaced by `Int8Linear`: weight-only,
    per-output-channel symmetric int8 (a quarter of the fp32 bytes), bf16 activations,
    `torch._weight_int8pack_mm` where the device has it, dequantize-then-matmul elsewhere.
Choices, measured on the random 0.6B checkpoint (2-core AMD EPYC Zen4, torch 2.13 CPU):
  - embeddings in bf16, not int8: a lookup reads one row per token, there is no time to win.
  - `codec_head` stays a bf16 nn.Linear (3M weights): its `.weight` is what the prompt layout, frame step and
    TTSModel read the model's device and dtype from, so nothing else needs to know about the modes.
  - the predictor's heads in int8: teacher-forced agreement with fp32 was the same with bf16 heads.
  - the codec decoder stays fp32: in bf16 it was slower on this CPU (conv-heavy) and its waveform only
    18 dB SNR from fp32 on the same codes; it is also the PCM itself (bf16 has an 8-bit mantissa).
"""

from __future__ import annotations

import functools
import logging

import torch
import torch.nn.functional as F
from torch import nn

from ..model.layers import DecoderStack, rope_inv_freq
from ..model.talker import Talker
from ..synthesis.prompt import TextRows
from ..synthesis.tts_model import TTSModel

log = logging.getLogger(__name__)

PRECISIONS = ("fp32", "bf16", "int8")  # what runs
PRECISION_CHOICES = ("auto", *PRECISIONS)  # what may be asked: auto = bf16 on CUDA, fp32 on a CPU
COMPUTE_DTYPE = torch.bfloat16  # activations of the bf16 and int8 modes


def check_precision(precision: str) -> str:
    if precision not in PRECISION_CHOICES:
        raise ValueError(f"unknown precision {precision!r}: choose one of {', '.join(PRECISION_CHOICES)} "
                         f"(auto: bf16 on CUDA, fp32 on a CPU; fp32 exact, bf16 half the weight bytes, int8 a "
                         f"quarter)")
    return precision


def resolve_precision(precision: str, device: torch.device) -> str:
    """The mode that runs for `precision` on `device` (what the model's `.precision` then says).

    auto: bf16 on CUDA (tensor cores; fp32 would be slower and the engine memory-bound), fp32 on a CPU (the
    exact path). int8 on CUDA runs bf16 instead, with a warning: torch's CUDA `_weight_int8pack_mm` is a naive
    kernel (one thread per output, no tensor cores), slower there than the bf16 matmul it would replace."""
    check_precision(precision)
    if precision == "auto":
        return "bf16" if device.type == "cuda" else "fp32"
    if precision == "int8" and device.type == "cuda":
        log.warning("int8 on CUDA runs as bf16: torch's CUDA int8 weight-only kernel is slower than bf16 there")
        return "bf16"
    return precision


# ----------------------------------------------------------------------------- int8 weights

def quantize_per_channel(weight: torch.Tensor, scale_dtype: torch.dtype = COMPUTE_DTYPE
                         ) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric per-output-channel int8: weight (N, K) -> q (N, K) int8 in [-127, 127], scales (N,).

    The scale is rounded to `scale_dtype` first and q computed against the rounded scale, so that
    q * scales is the best int8 grid the kernel can actually apply."""
    w = weight.detach().float()
    scales = (w.abs().amax(dim=1) / 127.0).clamp(min=1e-12).to(scale_dtype)  # (N,)
    q = torch.round(w / scales.float()[:, None]).clamp(-127, 127).to(torch.int8)
    return q, scales


def dequantize(q: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
    """The fp32 weight an Int8Linear applies: (N, K)."""
    return q.float() * scales.float()[:, None]


@functools.cache
def int8pack_supported(device_type: str, dtype: torch.dtype) -> bool:
    """Whether `torch._weight_int8pack_mm` runs on this device for these activations (probed once)."""
    if not hasattr(torch.ops.aten, "_weight_int8pack_mm"):
        return False
    try:
        x = torch.zeros(1, 64, dtype=dtype, device=device_type)
        q = torch.zeros(8, 64, dtype=torch.int8, device=device_type)
        torch._weight_int8pack_mm(x, q, torch.ones(8, dtype=dtype, device=device_type))
        return True
    except (RuntimeError, NotImplementedError):
        return False


class Int8Linear(nn.Module):
    """y = x @ (q * scales[:, None]).T + bias with int8 `q` (N, K): weight-only int8, bf16 activations.

    Shapes, not values, decide everything in forward (torch.compile(fullgraph=True) traces it)."""

    def __init__(self, q: torch.Tensor, scales: torch.Tensor, bias: torch.Tensor | None) -> None:
        super().__init__()
        self.out_features, self.in_features = q.shape
        self.register_buffer("qweight", q.contiguous())  # (N, K) int8
        self.register_buffer("scales", scales.contiguous())  # (N,) activation dtype
        self.register_buffer("bias", None if bias is None else bias.to(scales.dtype).contiguous())
        self.packed = int8pack_supported(q.device.type, scales.dtype)

    @classmethod
    def from_linear(cls, linear: nn.Linear, dtype: torch.dtype = COMPUTE_DTYPE) -> Int8Linear:
        q, scales = quantize_per_channel(linear.weight, dtype)
        return cls(q, scales, linear.bias.detach() if linear.bias is not None else None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lead = x.shape[:-1]
        x2 = x.reshape(-1, self.in_features).to(self.scales.dtype)  # (M, K)
        if self.packed:
            out = torch._weight_int8pack_mm(x2.contiguous(), self.qweight, self.scales)
        else:  # dequantize-then-matmul: the scale applies per output column, after the matmul
            out = F.linear(x2, self.qweight.to(x2.dtype)) * self.scales
        if self.bias is not None:
            out = out + self.bias
        return out.reshape(*lead, self.out_features)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"bias={self.bias is not None}, kernel={'int8pack_mm' if self.packed else 'dequantize'}")


def quantize_linears_(module: nn.Module, keep: tuple[nn.Module, ...] = (), dtype: torch.dtype = COMPUTE_DTYPE) -> int:
    """Replace every nn.Linear under `module` but those in `keep` by an Int8Linear, in place; returns how many."""
    count = 0
    for name, child in list(module.named_children()):
        if any(child is k for k in keep):
            continue
        if isinstance(child, nn.Linear):
            setattr(module, name, Int8Linear.from_linear(child, dtype))
            count += 1
        else:
            count += quantize_linears_(child, keep, dtype)
    return count


# ----------------------------------------------------------------------------- the modes

def _drop_caches(stack: DecoderStack) -> None:
    """KV caches are rebuilt in the new dtype on the next setup_cache; RoPE frequencies stay fp32."""
    for layer in stack.layers:
        layer.self_attn.kv_cache = None
    stack.max_batch = stack.max_seq = 0
    stack.inv_freq = rope_inv_freq(stack.head_dim, stack.rope_theta).to(stack.norm.weight.device)


def _convert_talker_(talker: Talker, precision: str) -> None:
    if precision == "int8":  # every linear layer: decoder layers, text projection, predictor input and heads
        count = quantize_linears_(talker, keep=(talker.codec_head,))  # from the fp32 weights
        log.info("int8: %d linear layers quantized per output channel", count)
    talker.to(COMPUTE_DTYPE)  # floating parameters and buffers (embeddings, norms, codec_head, biases); int8 stays
    for stack in (talker.model, talker.code_predictor.model):
        _drop_caches(stack)


def apply_precision(model: TTSModel, precision: str) -> TTSModel:
    """Convert a loaded (fp32) model in place to `precision` and return it; `fp32` leaves it untouched.

    Call it after loading and before an Engine is built on the model (the engine's buffers take the
    model's dtype when it starts)."""
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}: choose one of {', '.join(PRECISIONS)} (what runs: "
                         f"resolve 'auto' with resolve_precision first)")
    if precision == getattr(model, "precision", "fp32"):
        return model
    if getattr(model, "precision", "fp32") != "fp32":
        raise ValueError(f"this model is already {model.precision}; convert an fp32 model "
                         f"(with_precision makes a converted copy of one)")
    if model.engine_active:
        raise RuntimeError("an Engine is running on this model: convert it before building the Engine")
    _convert_talker_(model.talker, precision)
    model.rows = TextRows.build(model.talker, model.config)  # E, P, codec rows in the new dtype
    model.precision = precision
    return model


def with_precision(model: TTSModel, precision: str) -> TTSModel:
    """A new TTSModel at `precision` built from `model`'s already loaded weights (model is unchanged).

    The talker is a fresh module tree on the same tensors (conversion allocates the converted copies;
    `fp32` shares them outright); config, tokenizer, codec decoder and speaker encoder are shared (no
    per-model state). Each variant has its own KV caches, so each can drive its own Engine."""
    check_precision(precision)
    source = model.model
    with torch.device("meta"):
        clone = type(source)(model.config)
    clone.load_state_dict(source.state_dict(), strict=True, assign=True)
    if source.speaker_encoder is not None:
        clone.speaker_encoder = source.speaker_encoder
    clone.eval()
    for stack in (clone.talker.model, clone.talker.code_predictor.model):  # meta-built: recompute
        stack.inv_freq = rope_inv_freq(stack.head_dim, stack.rope_theta).to(stack.norm.weight.device)
    variant = TTSModel(model.path, model.config, model.speech_config, clone, model.codec, model.tokenizer,
                       model.generation_defaults, model.codec_encoder_loader)
    variant.precision = getattr(model, "precision", "fp32")
    return apply_precision(variant, precision)
