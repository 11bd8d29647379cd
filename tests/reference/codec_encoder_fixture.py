"""Write tests/fixtures/codec_encoder.json from the OFFICIAL 12 Hz tokenizer encoder. Runs INSIDE the
reference venv (tests/reference/build_env.sh), from the repo root:

    REF/bin/python tests/reference/codec_encoder_fixture.py

Records the `encoder.*` names and shapes of speech_tokenizer/model.safetensors (tiny and released
configs) and the codes that the official `Qwen3TTSTokenizer.encode` (feature extractor included, loaded
from a saved directory like a released one) gives for synthetic clips, with the tiny encoder's weights
drawn by our `init_random_` from SEED (the test redraws them). The long clip spans more than 250 frames
at 25 Hz, where a sliding attention window would change the codes. Regenerate when init_random_, the
signal or tiny_mimi_config change.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
sys.path[:0] = [str(HERE), str(REPO)]
import official_stubs  # noqa: E402,F401  (must precede the qwen_tts import)

OUT = REPO / "tests" / "fixtures" / "codec_encoder.json"
SEED = 2024
CLIPS = {"short": {"n_samples": 24000 + 4321, "seed": 11}, "long": {"n_samples": 24000 * 11 + 99, "seed": 12}}
# Any decoder will do (encode never touches it); small so the directory saves and loads fast.
TINY_DECODER = {"codebook_size": 2048, "codebook_dim": 64, "hidden_size": 32, "latent_dim": 64,
                "num_attention_heads": 2, "num_key_value_heads": 2, "head_dim": 16, "intermediate_size": 64,
                "num_hidden_layers": 1, "decoder_dim": 64, "sliding_window": 72}
PREPROCESSOR = {"chunk_length_s": None, "feature_extractor_type": "EncodecFeatureExtractor", "feature_size": 1,
                "overlap": None, "padding_side": "right", "padding_value": 0.0, "return_attention_mask": True,
                "sampling_rate": 24000}


def main() -> None:
    import torch
    from qwen_tts.core.tokenizer_12hz.configuration_qwen3_tts_tokenizer_v2 import Qwen3TTSTokenizerV2Config
    from qwen_tts.core.tokenizer_12hz.modeling_qwen3_tts_tokenizer_v2 import Qwen3TTSTokenizerV2Model
    from qwen_tts.inference.qwen3_tts_tokenizer import Qwen3TTSTokenizer
    from safetensors.torch import save_file
    from speaker_signal import synthetic_speech

    from tts_engine.model.codec_encoder import CodecEncoder, init_random_, real_mimi_config, tiny_mimi_config

    def tokenizer_config(mimi: dict) -> Qwen3TTSTokenizerV2Config:
        return Qwen3TTSTokenizerV2Config(encoder_config=mimi, decoder_config=TINY_DECODER,
                                         encoder_valid_num_quantizers=16, input_sample_rate=24000,
                                         output_sample_rate=24000, decode_upsample_rate=1920,
                                         encode_downsample_rate=1920)

    keys = {}
    for name, mimi in [("tiny", tiny_mimi_config()), ("real", real_mimi_config())]:
        with torch.device("meta"):
            model = Qwen3TTSTokenizerV2Model(tokenizer_config(mimi))
        keys[name] = {k[len("encoder."):]: list(v.shape) for k, v in model.state_dict().items()
                      if k.startswith("encoder.")}

    ours = CodecEncoder.from_config(tiny_mimi_config())
    init_random_(ours, torch.Generator().manual_seed(SEED))
    config = tokenizer_config(tiny_mimi_config())
    state = {k: v for k, v in Qwen3TTSTokenizerV2Model(config).state_dict().items() if k.startswith("decoder.")}
    state.update({f"encoder.{k}": v for k, v in ours.state_dict().items()})
    os.environ["HF_HUB_OFFLINE"] = "1"
    with tempfile.TemporaryDirectory() as tmp:
        save_file({k: v.contiguous() for k, v in state.items()}, f"{tmp}/model.safetensors", metadata={"format": "pt"})
        Path(tmp, "config.json").write_text(json.dumps({**config.to_dict(), "transformers_version": "4.57.1"}))
        Path(tmp, "preprocessor_config.json").write_text(json.dumps(PREPROCESSOR))
        tokenizer = Qwen3TTSTokenizer.from_pretrained(tmp, dtype=torch.float32)
    loaded = tokenizer.model.state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in state.items()), "official loader changed the weights"

    codes = {}
    for name, clip in CLIPS.items():
        audio = synthetic_speech(**clip).numpy()
        codes[name] = {"signal": clip, "codes": tokenizer.encode(audio, sr=24000).audio_codes[0].tolist()}

    fixture = {
        "generated_by": f"tests/reference/codec_encoder_fixture.py (qwen-tts 0.1.1, torch {torch.__version__}, "
                        f"attention {tokenizer.model.encoder.config._attn_implementation})",
        "official_keys": keys,
        "seed": SEED,
        "mimi_config": tiny_mimi_config(),
        "clips": codes,
    }
    OUT.write_text(json.dumps(fixture, separators=(",", ":")) + "\n")
    print(f"wrote {OUT} ({OUT.stat().st_size} bytes)")


if __name__ == "__main__":
    main()
