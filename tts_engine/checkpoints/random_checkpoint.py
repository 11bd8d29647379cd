"""`voicegate make-checkpoint`: random weights in the official Qwen3-TTS 12 Hz repository layout.

DIR/config.json, generation_config.json, model.safetensors, tokenizer files, and
DIR/speech_tokenizer/{config.json, configuration.json, preprocessor_config.json, model.safetensors}.
The output loads strictly in voicegate and in the official `qwen-tts` package. Sizes: `tiny` (tests:
seconds on 2 CPU cores) and the real `0.6b` / `1.7b` shapes (speed measurements).

Random weights cannot know when to stop talking, so the tts_pad text vector is wired to the EOS logit
(`_wire_eos_to_tts_pad`): once the text and its tts_eos have been fed, P rides on the next input and
EOS wins, as a trained model would stop at the end of its text — under the official EOS policy too.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import nn

from ..model.codec_decoder import CodecDecoder, tiny_codec_decoder_config
from ..model.codec_decoder import init_random_ as init_codec_decoder_
from ..model.codec_encoder import CodecEncoder, real_mimi_config, tiny_mimi_config
from ..model.codec_encoder import init_random_ as init_codec_encoder_
from ..model.config import (
    CodePredictorConfig,
    Qwen3TTSConfig,
    SpeakerEncoderConfig,
    SpeechTokenizerConfig,
    TalkerConfig,
)
from ..model.qwen3_tts import Qwen3TTS
from ..model.speaker_encoder import init_random_ as init_speaker_encoder_
from ..model.speaker_encoder import tiny_speaker_encoder_config
from ..text.vocab import write_qwen2_tokenizer

SIZES = ("tiny", "0.6b", "1.7b")
KINDS = ("custom_voice", "base", "voice_design")

LANGUAGES = {
    "chinese": 2055, "english": 2050, "german": 2053, "italian": 2070, "portuguese": 2071, "spanish": 2054,
    "japanese": 2058, "korean": 2064, "french": 2061, "russian": 2069,
    "beijing_dialect": 2074, "sichuan_dialect": 2062,
}
# Ids of vivian/serena/ryan/dylan/eric are the released ones; the other four were not published where we
# could read them, so they are placeholders in free rows of the codec table.
SPEAKERS = {
    "vivian": 3065, "serena": 3066, "uncle_fu": 3010, "ryan": 3061, "aiden": 2861, "ono_anna": 2873,
    "sohee": 2864, "eric": 2875, "dylan": 2878,
}
DIALECTS = {"dylan": "beijing_dialect", "eric": "sichuan_dialect"}

GENERATION_CONFIG = {
    "do_sample": True, "top_k": 50, "top_p": 1.0, "temperature": 0.9, "repetition_penalty": 1.05,
    "subtalker_dosample": True, "subtalker_top_k": 50, "subtalker_top_p": 1.0, "subtalker_temperature": 0.9,
    "max_new_tokens": 8192,
}


def model_config(size: str, kind: str) -> Qwen3TTSConfig:
    if size not in SIZES or kind not in KINDS:
        raise ValueError(f"size must be one of {SIZES} and kind one of {KINDS}, got {size!r}, {kind!r}")
    if size == "tiny":
        # Predictor narrower than the talker so the 1.7B-style input projection is exercised.
        predictor = CodePredictorConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                        num_attention_heads=4, num_key_value_heads=2, head_dim=8)
        talker = TalkerConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                              num_key_value_heads=2, head_dim=16, text_hidden_size=32,
                              code_predictor_config=predictor)
        speaker = tiny_speaker_encoder_config(enc_dim=talker.hidden_size)
    else:
        big = size == "1.7b"
        talker = TalkerConfig(hidden_size=2048 if big else 1024, intermediate_size=6144 if big else 3072)
        speaker = SpeakerEncoderConfig(enc_dim=talker.hidden_size)
    talker.codec_language_id = dict(LANGUAGES)
    if kind == "custom_voice":
        talker.spk_id = dict(SPEAKERS)
        talker.spk_is_dialect = {name: DIALECTS.get(name, False) for name in SPEAKERS}
    return Qwen3TTSConfig(talker_config=talker, speaker_encoder_config=speaker,
                          tts_model_size="1b7" if size == "1.7b" else "0b6", tts_model_type=kind)


def speech_tokenizer_config(size: str) -> SpeechTokenizerConfig:
    if size == "tiny":
        return SpeechTokenizerConfig(encoder_config=tiny_mimi_config(), decoder_config=tiny_codec_decoder_config())
    return SpeechTokenizerConfig(encoder_config=real_mimi_config())


def _randomize_(module: nn.Module, generator: torch.Generator) -> None:
    """Scale-preserving random weights: embeddings ~N(0,1), linear ~N(0, 1/fan_in), norms 1, biases 0."""
    for name, param in module.named_parameters():
        with torch.no_grad():
            if name.endswith("norm.weight") or name.endswith("layernorm.weight"):
                param.fill_(1.0)
            elif name.endswith(".bias"):
                param.zero_()
            elif "embedding" in name:
                param.normal_(0.0, 1.0, generator=generator)
            else:
                param.normal_(0.0, 1.0 / math.sqrt(param.shape[-1]), generator=generator)


@torch.no_grad()
def _wire_eos_to_tts_pad(model: Qwen3TTS, cfg: Qwen3TTSConfig, generator: torch.Generator) -> None:
    """Make EOS win exactly when tts_pad (P) is on the text track, i.e. right after the text and tts_eos.

    One direction d of the talker's residual stream is reserved for P: every codec embedding, every
    layer output (o_proj, down_proj) and every other codec-head row is made orthogonal to d, so the
    stream's d-component is whatever the input put there. One text-projection neuron fires for the
    tts_pad embedding only and writes along d; the EOS row of the codec head reads d. Text tokens,
    tts_eos and codes carry no d, so EOS stays far below the best code until P arrives.
    """
    talker, tcfg = model.talker, cfg.talker_config
    hidden = tcfg.hidden_size
    d = torch.randn(hidden, generator=generator)
    d /= d.norm()

    def orthogonal_rows(weight: torch.Tensor) -> None:  # (n, H): every row loses its d-component
        weight -= (weight @ d)[:, None] * d[None, :]

    def orthogonal_outputs(weight: torch.Tensor) -> None:  # (H, n): outputs lose their d-component
        weight -= d[:, None] * (d @ weight)[None, :]

    orthogonal_rows(talker.model.codec_embedding.weight)
    for table in talker.code_predictor.model.codec_embedding:
        orthogonal_rows(table.weight)
    for layer in talker.model.layers:
        orthogonal_outputs(layer.self_attn.o_proj.weight)
        orthogonal_outputs(layer.mlp.down_proj.weight)
    projection = talker.text_projection
    orthogonal_outputs(projection.linear_fc2.weight)
    projection.linear_fc2.bias -= (projection.linear_fc2.bias @ d) * d

    # Neuron 0 of the text projection: strongly on for tts_pad, off (SiLU(-24 + 4z), z ~ N(0, 1)) otherwise.
    pad_embedding = talker.model.text_embedding.weight[cfg.tts_pad_token_id]
    pad_embedding *= 12.0 / pad_embedding.norm()
    projection.linear_fc1.weight[0] = 4.0 * pad_embedding / pad_embedding.norm()
    projection.linear_fc1.bias[0] = -24.0
    # P's d-component about as large as the 16 summed code embeddings (norm ~4 sqrt(H)).
    projection.linear_fc2.weight[:, 0] = d * (4.0 * math.sqrt(hidden) / 24.0)

    orthogonal_rows(talker.codec_head.weight)
    talker.codec_head.weight[tcfg.codec_eos_token_id] = 4.0 * d


def build_random_model(cfg: Qwen3TTSConfig, seed: int) -> Qwen3TTS:
    generator = torch.Generator().manual_seed(seed)
    with torch.device("meta"):  # skip torch's default init: every tensor is filled below
        model = Qwen3TTS(cfg)
    model.to_empty(device="cpu")
    _randomize_(model.talker, generator)
    if model.speaker_encoder is not None:
        init_speaker_encoder_(model.speaker_encoder, generator)
    _wire_eos_to_tts_pad(model, cfg, generator)
    return model


def build_random_speech_tokenizer(cfg: SpeechTokenizerConfig, seed: int) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed + 1)
    decoder = CodecDecoder(cfg.decoder_config)
    init_codec_decoder_(decoder, generator)
    encoder = CodecEncoder.from_config(cfg.encoder_config)
    init_codec_encoder_(encoder, generator)
    state = {f"decoder.{k}": v for k, v in decoder.state_dict().items()}
    state.update({f"encoder.{k}": v for k, v in encoder.state_dict().items()})
    return state


def _save(state: dict[str, torch.Tensor], path: Path, dtype: torch.dtype | None) -> None:
    tensors = {k: (v.to(dtype) if dtype is not None and v.is_floating_point() else v).contiguous()
               for k, v in state.items()}
    save_file(tensors, str(path), metadata={"format": "pt"})


def _write_json(path: Path, data: dict) -> None:
    path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n")


def make_checkpoint(out_dir: str | Path, size: str = "tiny", kind: str = "custom_voice", seed: int = 0) -> Path:
    """Write a random checkpoint in the official layout and return its directory."""
    out = Path(out_dir)
    cfg = model_config(size, kind)
    st_cfg = speech_tokenizer_config(size)
    out.mkdir(parents=True, exist_ok=True)
    (out / "speech_tokenizer").mkdir(exist_ok=True)

    model = build_random_model(cfg, seed)
    # Released weights are bf16 (the speech tokenizer fp32); tiny stays fp32 so fixtures are exact.
    _save(model.state_dict(), out / "model.safetensors", None if size == "tiny" else torch.bfloat16)
    del model
    config = cfg.to_dict()
    # A pre-4.57.3 version string keeps the official loader's `fix_mistral_regex` regex swap off.
    config["transformers_version"] = "4.57.1"
    _write_json(out / "config.json", config)
    _write_json(out / "generation_config.json", dict(GENERATION_CONFIG))
    write_qwen2_tokenizer(out)

    _save(build_random_speech_tokenizer(st_cfg, seed), out / "speech_tokenizer" / "model.safetensors", None)
    st_config = st_cfg.to_dict()
    st_config["transformers_version"] = "4.57.1"
    _write_json(out / "speech_tokenizer" / "config.json", st_config)
    _write_json(out / "speech_tokenizer" / "configuration.json", {"framework": "pytorch"})
    _write_json(out / "speech_tokenizer" / "preprocessor_config.json", {
        "chunk_length_s": None, "feature_extractor_type": "EncodecFeatureExtractor", "feature_size": 1,
        "overlap": None, "padding_side": "right", "padding_value": 0.0, "return_attention_mask": True,
        "sampling_rate": 24000,
    })
    _write_json(out / "voicegate_checkpoint.json", {"size": size, "kind": kind, "seed": seed, "random": True})
    return out
