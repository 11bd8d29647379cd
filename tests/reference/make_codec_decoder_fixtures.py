"""Fixtures for tests/engine/test_codec_decoder.py, from the official decoder. Runs INSIDE the reference venv.

    PYTHONPATH=. <ref-venv>/bin/python tests/reference/make_codec_decoder_fixtures.py [OUT_DIR]

Writes (tiny config of tts_engine.model.codec_decoder):
- tests/fixtures/codec_decoder_keys_tiny.json: the official Qwen3TTSTokenizerV2Decoder's state_dict
  names and shapes (= the `decoder.` keys of speech_tokenizer/model.safetensors).
- tests/fixtures/codec_decoder_tiny_official.npz: the official forward on our init_random_ weights
  (seed 0) for 80 frames of random codes (seed 1), every STRIDE-th sample (keeps the file small).
Both envs run torch 2.13, so init_random_ gives the same weights here and in the test.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parents[1]))
import official_stubs  # noqa: E402,F401  (must precede the qwen_tts import)

FRAMES, STRIDE = 80, 37


def main() -> None:
    import numpy as np
    import torch
    from qwen_tts.core.tokenizer_12hz.configuration_qwen3_tts_tokenizer_v2 import (
        Qwen3TTSTokenizerV2DecoderConfig,
    )
    from qwen_tts.core.tokenizer_12hz.modeling_qwen3_tts_tokenizer_v2 import Qwen3TTSTokenizerV2Decoder

    from tts_engine.model.codec_decoder import CodecDecoder, init_random_, tiny_codec_decoder_config

    out_dir = Path(sys.argv[1]) if len(sys.argv) > 1 else HERE.parent / "fixtures"  # tests: a temp dir
    cfg = tiny_codec_decoder_config()
    official = Qwen3TTSTokenizerV2Decoder(
        Qwen3TTSTokenizerV2DecoderConfig(**cfg.to_dict(), attn_implementation="sdpa")).eval()
    keys = {name: list(t.shape) for name, t in official.state_dict().items()}
    (out_dir / "codec_decoder_keys_tiny.json").write_text(json.dumps(
        {"config": cfg.to_dict(), "keys": keys}, indent=1) + "\n")

    ours = CodecDecoder(cfg)
    init_random_(ours, torch.Generator().manual_seed(0))
    official.load_state_dict(ours.state_dict(), strict=True)
    codes = torch.randint(0, cfg.codebook_size, (1, cfg.num_quantizers, FRAMES),
                          generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        wav = official(codes)[0, 0]
    np.savez_compressed(out_dir / "codec_decoder_tiny_official.npz", codes=codes[0].numpy().astype(np.int16),
                        stride=np.int64(STRIDE), samples=wav[::STRIDE].numpy().astype(np.float32))
    print(f"{len(keys)} keys; {FRAMES} frames, {wav.numel()} samples, std {wav.std():.3f}")


if __name__ == "__main__":
    main()
