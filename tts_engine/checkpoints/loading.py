"""Loading official Qwen3-TTS 12 Hz checkpoints: a local directory or a Hugging Face hub id.

Every state dict is loaded strictly: a missing, unexpected or mis-shaped tensor is an error that names
the file and the key. The big talker is built on the meta device and takes the checkpoint's tensors
directly (no random init of a billion parameters).
"""

from __future__ import annotations

import functools
import json
import logging
import os
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import nn

from ..model.codec_decoder import CodecDecoder
from ..model.codec_encoder import CodecEncoder
from ..model.config import Qwen3TTSConfig, SpeechTokenizerConfig
from ..model.qwen3_tts import Qwen3TTS
from ..synthesis.tts_model import TTSModel
from ..text.tokenizer import TextTokenizer
from .device import pick_device
from .precision import apply_precision, check_precision, resolve_precision

log = logging.getLogger(__name__)

DEFAULT_MODEL = "Qwen/Qwen3-TTS-12Hz-0.6B-CustomVoice"
REQUIRED_FILES = ("config.json", "model.safetensors", "speech_tokenizer/config.json",
                  "speech_tokenizer/model.safetensors")


class CheckpointError(ValueError):
    """A checkpoint that cannot be used, with a message a person can act on."""


def _offline_message(model_id: str, reason: str) -> str:
    return (f"cannot fetch {model_id!r} from the Hugging Face hub ({reason}). Download it on a connected "
            f"machine (e.g. `huggingface-cli download {model_id} --local-dir ./{model_id.split('/')[-1]}`) and "
            f"pass that directory with --model, or try the pipeline with a tiny random checkpoint: "
            f"`voicegate make-checkpoint ./tiny && voicegate synth --model ./tiny ...`.")


def resolve_checkpoint(model: str | os.PathLike[str]) -> Path:
    """A local checkpoint directory, downloading a hub id (with a progress bar) when needed."""
    path = Path(model).expanduser()
    if path.is_dir():
        return path
    name = str(model)
    looks_like_hub_id = name.count("/") == 1 and not name.startswith((".", "/", "~")) and not path.exists()
    if not looks_like_hub_id:
        raise CheckpointError(f"{name!r} is not a checkpoint directory (expected a folder with "
                              f"{', '.join(REQUIRED_FILES)}) nor a hub id like {DEFAULT_MODEL!r}")
    try:
        from huggingface_hub import snapshot_download
        from huggingface_hub.errors import LocalEntryNotFoundError
    except ImportError as exc:  # pragma: no cover - a declared dependency
        raise CheckpointError(_offline_message(name, "huggingface_hub is not installed")) from exc
    offline = os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes")
    try:
        return Path(snapshot_download(name, local_files_only=offline))
    except LocalEntryNotFoundError as exc:
        raise CheckpointError(_offline_message(name, "offline and no cached copy")) from exc
    except Exception as exc:  # network errors come in many types; all mean the same to the user
        raise CheckpointError(_offline_message(name, f"{type(exc).__name__}: {exc}")) from exc


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError as exc:
        raise CheckpointError(f"missing {path}") from exc
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{path} is not valid JSON: {exc}") from exc


def _read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    if not path.exists():
        raise CheckpointError(f"missing {path}")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"{path} is not a readable safetensors file: {exc}") from exc


def load_strict(module: nn.Module, state: dict[str, torch.Tensor], source: Path, assign: bool = False) -> None:
    """load_state_dict(strict=True) with errors that name the file and the offending keys."""
    expected = module.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing {len(missing)} key(s), e.g. {missing[:5]}")
        if unexpected:
            parts.append(f"unexpected {len(unexpected)} key(s), e.g. {unexpected[:5]}")
        raise CheckpointError(f"{source} does not match this model ({'; '.join(parts)}): "
                              f"a foreign or corrupt checkpoint?")
    for key, tensor in state.items():
        if tuple(tensor.shape) != tuple(expected[key].shape):
            raise CheckpointError(f"{source}: tensor {key!r} has shape {tuple(tensor.shape)}, the config "
                                  f"implies {tuple(expected[key].shape)}")
    module.load_state_dict(state, strict=True, assign=assign)


def split_prefix(state: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}


def load_model_config(path: Path) -> Qwen3TTSConfig:
    try:
        return Qwen3TTSConfig.from_dict(_read_json(path / "config.json"))
    except (TypeError, ValueError, KeyError) as exc:
        if isinstance(exc, CheckpointError):
            raise
        raise CheckpointError(f"{path / 'config.json'}: {exc}") from exc


def load_speech_tokenizer_config(path: Path) -> SpeechTokenizerConfig:
    file = path / "speech_tokenizer" / "config.json"
    try:
        return SpeechTokenizerConfig.from_dict(_read_json(file))
    except (TypeError, ValueError, KeyError) as exc:
        if isinstance(exc, CheckpointError):
            raise
        raise CheckpointError(f"{file}: {exc}") from exc


def load_qwen3_tts(path: Path, cfg: Qwen3TTSConfig, dtype: torch.dtype, device: torch.device,
                   meta: bool = False) -> Qwen3TTS:
    """Build on the meta device and adopt the checkpoint's tensors; `meta=True` checks keys/shapes only."""
    file = path / "model.safetensors"
    with torch.device("meta"):
        model = Qwen3TTS(cfg)
    if meta:
        from safetensors import safe_open

        with safe_open(str(file), framework="pt") as handle:
            state = {k: torch.empty(handle.get_slice(k).get_shape(), device="meta") for k in handle.keys()}  # noqa: SIM118
        load_strict(model, state, file, assign=True)
        return model
    state = {k: v.to(device=device, dtype=dtype) for k, v in _read_safetensors(file).items()}
    load_strict(model, state, file, assign=True)
    return model.eval()


def load_codec_decoder(path: Path, cfg: SpeechTokenizerConfig, dtype: torch.dtype,
                       device: torch.device) -> CodecDecoder:
    file = path / "speech_tokenizer" / "model.safetensors"
    decoder = CodecDecoder(cfg.decoder_config)
    load_strict(decoder, split_prefix(_read_safetensors(file), "decoder."), file)
    return decoder.to(device=device, dtype=dtype).eval()


def load_codec_encoder(path: Path, cfg: SpeechTokenizerConfig, device: torch.device) -> CodecEncoder:
    """The Mimi-based encoder of speech_tokenizer/ (voice cloning only), kept in the checkpoint's fp32."""
    file = path / "speech_tokenizer" / "model.safetensors"
    with torch.device("meta"):
        encoder = CodecEncoder.from_config(cfg.encoder_config)
    state = {k: v.to(device) for k, v in split_prefix(_read_safetensors(file), "encoder.").items()}
    load_strict(encoder, state, file, assign=True)
    return encoder.eval()


def read_generation_config(path: Path) -> dict[str, Any]:
    file = path / "generation_config.json"
    return _read_json(file) if file.exists() else {}


def load_model(model: str | os.PathLike[str] = DEFAULT_MODEL, device: str | torch.device = "auto",
               precision: str = "auto") -> TTSModel:
    """Load a checkpoint into a ready `TTSModel`; `model.precision` says what runs.

    Every weight is loaded in the checkpoint's fp32 (the exact path). `precision` (precision.PRECISION_CHOICES;
    auto: bf16 on CUDA, fp32 on a CPU) then converts the talker and code predictor (bf16 / int8: faster, not
    bit-exact). The codec decoder and the speaker encoder stay fp32 in every mode: the decoder's output is the
    PCM itself (18 dB SNR from fp32 when run in bf16, measured on the same codes). fp32 on CUDA also turns
    TF32 off, so that fp32 means fp32 everywhere."""
    check_precision(precision)  # before reading gigabytes
    path = resolve_checkpoint(model)
    dev = pick_device(device)
    precision = resolve_precision(precision, dev)
    if precision == "fp32" and dev.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
    dtype = torch.float32
    cfg = load_model_config(path)
    st_cfg = load_speech_tokenizer_config(path)
    tokenizer = TextTokenizer.from_dir(path)
    qwen = load_qwen3_tts(path, cfg, dtype, dev)
    codec = load_codec_decoder(path, st_cfg, dtype, dev)
    log.info("loaded %s (%s, %s) on %s, precision %s", path, cfg.tts_model_type, cfg.tts_model_size, dev,
             precision)
    loaded = TTSModel(path, cfg, st_cfg, qwen, codec, tokenizer, read_generation_config(path),
                      codec_encoder_loader=functools.partial(load_codec_encoder, path, st_cfg, dev))
    return apply_precision(loaded, precision)
