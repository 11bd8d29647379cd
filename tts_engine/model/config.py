"""Configs of the Qwen3-TTS 12 Hz checkpoints, read from and written to the official JSON layout.

Field names are the official ones (config.json / speech_tokenizer/config.json); defaults are the
released checkpoints' values, not the official classes' defaults (which differ: eos 4198, 32 groups...).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any


def _from_dict(cls: type, data: dict[str, Any]) -> Any:
    """Build a dataclass from a dict, ignoring keys the dataclass does not know (HF bookkeeping)."""
    names = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k: v for k, v in data.items() if k in names})


@dataclass
class CodePredictorConfig:
    vocab_size: int = 2048
    hidden_size: int = 1024
    intermediate_size: int = 3072
    num_hidden_layers: int = 5
    num_attention_heads: int = 16
    num_key_value_heads: int = 8
    head_dim: int = 128
    hidden_act: str = "silu"
    max_position_embeddings: int = 65536
    rms_norm_eps: float = 1e-6
    rope_theta: float = 1_000_000.0
    attention_bias: bool = False
    num_code_groups: int = 16

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CodePredictorConfig:
        return _from_dict(cls, data)

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out.update(model_type="qwen3_tts_talker_code_predictor", rope_scaling=None, use_sliding_window=False,
                   sliding_window=None, max_window_layers=28, attention_dropout=0.0, use_cache=True,
                   tie_word_embeddings=False, initializer_range=0.02,
                   layer_types=["full_attention"] * self.num_hidden_layers)
        return out


@dataclass
class TalkerConfig:
    vocab_size: int = 3072
    hidden_size: int = 1024
    intermediate_size: int = 3072
    num_hidden_layers: int = 28
    num_attention_heads: int = 16
    num_key_value_heads: int = 8
    head_dim: int = 128
    hidden_act: str = "silu"
    max_position_embeddings: int = 32768
    rms_norm_eps: float = 1e-6
    rope_theta: float = 1_000_000.0
    # The official talker uses interleaved 3-D mRoPE; for TTS all three position rows are equal,
    # which makes it exactly ordinary 1-D rotate-half RoPE. Kept for round-tripping config.json.
    rope_scaling: dict[str, Any] = field(
        default_factory=lambda: {"rope_type": "default", "mrope_section": [24, 20, 20], "interleaved": True})
    attention_bias: bool = False
    num_code_groups: int = 16
    text_hidden_size: int = 2048
    text_vocab_size: int = 151936
    codec_eos_token_id: int = 2150
    codec_think_id: int = 2154
    codec_nothink_id: int = 2155
    codec_think_bos_id: int = 2156
    codec_think_eos_id: int = 2157
    codec_pad_id: int = 2148
    codec_bos_id: int = 2149
    spk_id: dict[str, int] = field(default_factory=dict)
    spk_is_dialect: dict[str, str | bool] = field(default_factory=dict)
    codec_language_id: dict[str, int] = field(default_factory=dict)
    code_predictor_config: CodePredictorConfig = field(default_factory=CodePredictorConfig)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TalkerConfig:
        cfg = _from_dict(cls, data)
        cfg.code_predictor_config = CodePredictorConfig.from_dict(data.get("code_predictor_config") or {})
        cfg.spk_id = dict(cfg.spk_id or {})
        cfg.spk_is_dialect = dict(cfg.spk_is_dialect or {})
        cfg.codec_language_id = dict(cfg.codec_language_id or {})
        return cfg

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["code_predictor_config"] = self.code_predictor_config.to_dict()
        out.update(model_type="qwen3_tts_talker", use_sliding_window=False, sliding_window=None,
                   attention_dropout=0.0, use_cache=True, tie_word_embeddings=False, initializer_range=0.02)
        return out


@dataclass
class SpeakerEncoderConfig:
    mel_dim: int = 128
    enc_dim: int = 1024
    enc_channels: list[int] = field(default_factory=lambda: [512, 512, 512, 512, 1536])
    enc_kernel_sizes: list[int] = field(default_factory=lambda: [5, 3, 3, 3, 1])
    enc_dilations: list[int] = field(default_factory=lambda: [1, 2, 3, 4, 1])
    enc_attention_channels: int = 128
    enc_res2net_scale: int = 8
    enc_se_channels: int = 128
    sample_rate: int = 24000

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SpeakerEncoderConfig:
        return _from_dict(cls, data)

    def to_dict(self) -> dict[str, Any]:
        # The official speaker-encoder config class takes no **kwargs: write only its own fields.
        return dataclasses.asdict(self)


MODEL_TYPES = ("custom_voice", "base", "voice_design")


@dataclass
class Qwen3TTSConfig:
    talker_config: TalkerConfig = field(default_factory=TalkerConfig)
    speaker_encoder_config: SpeakerEncoderConfig = field(default_factory=SpeakerEncoderConfig)
    tokenizer_type: str = "qwen3_tts_tokenizer_12hz"
    tts_model_size: str = "0b6"
    tts_model_type: str = "custom_voice"
    im_start_token_id: int = 151644
    im_end_token_id: int = 151645
    tts_pad_token_id: int = 151671
    tts_bos_token_id: int = 151672
    tts_eos_token_id: int = 151673
    assistant_token_id: int = 77091

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Qwen3TTSConfig:
        if data.get("model_type") != "qwen3_tts":
            raise ValueError(f"not a Qwen3-TTS config: model_type={data.get('model_type')!r} (expected 'qwen3_tts')")
        cfg = _from_dict(cls, data)
        cfg.talker_config = TalkerConfig.from_dict(data.get("talker_config") or {})
        cfg.speaker_encoder_config = SpeakerEncoderConfig.from_dict(data.get("speaker_encoder_config") or {})
        if cfg.tokenizer_type != "qwen3_tts_tokenizer_12hz":
            raise ValueError(f"unsupported tokenizer_type {cfg.tokenizer_type!r}: voicegate runs the 12 Hz models only")
        if cfg.tts_model_type not in MODEL_TYPES:
            raise ValueError(f"unknown tts_model_type {cfg.tts_model_type!r}; expected one of {MODEL_TYPES}")
        return cfg

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"architectures": ["Qwen3TTSForConditionalGeneration"], "model_type": "qwen3_tts"}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            out[f.name] = value.to_dict() if hasattr(value, "to_dict") else value
        return out

    @property
    def has_speaker_encoder(self) -> bool:
        return self.tts_model_type == "base"


@dataclass
class CodecDecoderConfig:
    """speech_tokenizer/config.json -> decoder_config (the 12 Hz Code2Wav decoder)."""

    codebook_size: int = 2048
    codebook_dim: int = 512
    hidden_size: int = 512
    latent_dim: int = 1024
    max_position_embeddings: int = 8000
    rope_theta: float = 10000.0
    num_attention_heads: int = 16
    num_key_value_heads: int = 16
    head_dim: int = 64
    attention_bias: bool = False
    sliding_window: int = 72
    intermediate_size: int = 1024
    hidden_act: str = "silu"
    layer_scale_initial_scale: float = 0.01
    rms_norm_eps: float = 1e-5
    num_hidden_layers: int = 8
    num_quantizers: int = 16
    upsample_rates: list[int] = field(default_factory=lambda: [8, 5, 4, 3])
    upsampling_ratios: list[int] = field(default_factory=lambda: [2, 2])
    decoder_dim: int = 1536

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CodecDecoderConfig:
        cfg = _from_dict(cls, data)
        cfg.upsample_rates = list(cfg.upsample_rates)
        cfg.upsampling_ratios = list(cfg.upsampling_ratios)
        return cfg

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["attention_dropout"] = 0.0
        return out

    @property
    def samples_per_frame(self) -> int:
        total = 1
        for r in [*self.upsample_rates, *self.upsampling_ratios]:
            total *= r
        return total


@dataclass
class SpeechTokenizerConfig:
    """speech_tokenizer/config.json: the Mimi-based encoder (a transformers MimiConfig dict) and our decoder."""

    encoder_config: dict[str, Any] = field(default_factory=dict)
    decoder_config: CodecDecoderConfig = field(default_factory=CodecDecoderConfig)
    encoder_valid_num_quantizers: int = 16
    input_sample_rate: int = 24000
    output_sample_rate: int = 24000
    decode_upsample_rate: int = 1920
    encode_downsample_rate: int = 1920

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SpeechTokenizerConfig:
        if data.get("model_type") != "qwen3_tts_tokenizer_12hz":
            raise ValueError(
                f"not a Qwen3-TTS 12 Hz speech tokenizer config: model_type={data.get('model_type')!r}")
        cfg = _from_dict(cls, data)
        cfg.encoder_config = dict(data.get("encoder_config") or {})
        cfg.decoder_config = CodecDecoderConfig.from_dict(data.get("decoder_config") or {})
        return cfg

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"architectures": ["Qwen3TTSTokenizerV2Model"], "model_type": "qwen3_tts_tokenizer_12hz"}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            out[f.name] = value.to_dict() if hasattr(value, "to_dict") else value
        return out
