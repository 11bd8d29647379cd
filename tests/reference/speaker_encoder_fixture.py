"""Write tests/fixtures/speaker_encoder.json from the OFFICIAL speaker encoder and mel. Runs INSIDE the
reference venv (tests/reference/build_env.sh), from the repo root:

    REF/bin/python tests/reference/speaker_encoder_fixture.py [OUT.json]

Records: the official `Qwen3TTSSpeakerEncoder` parameter names and shapes (tiny and released sizes); the
librosa Slaney filterbank (non-zero entries) and the official log-mel of a short synthetic clip; the
official x-vector of a synthetic clip, with the tiny encoder's weights drawn by our `init_random_` from
SEED (the test redraws them). Regenerate when init_random_, the signal or the tiny config change.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
sys.path[:0] = [str(HERE), str(REPO)]
import official_stubs  # noqa: E402,F401  (must precede the qwen_tts import)

OUT = REPO / "tests" / "fixtures" / "speaker_encoder.json"
SEED = 1234
XVECTOR_SIGNAL = {"n_samples": 24000 * 3 + 111, "seed": 5}
MEL_SIGNAL = {"n_samples": 6000, "seed": 6}


def _f32(values) -> list:  # type: ignore[no-untyped-def]
    """Nested lists of floats written with 9 significant digits: enough to round-trip a float32."""
    return json.loads(json.dumps(values), parse_float=lambda s: float(f"{float(s):.9g}"))


def main() -> None:
    import librosa
    import numpy as np
    import torch
    from qwen_tts.core.models.configuration_qwen3_tts import Qwen3TTSSpeakerEncoderConfig
    from qwen_tts.core.models.modeling_qwen3_tts import Qwen3TTSSpeakerEncoder, mel_spectrogram
    from speaker_signal import synthetic_speech

    from tts_engine.model.config import SpeakerEncoderConfig
    from tts_engine.model.speaker_encoder import SpeakerEncoder, init_random_, tiny_speaker_encoder_config

    def official(cfg: SpeakerEncoderConfig) -> Qwen3TTSSpeakerEncoder:
        with torch.device("meta"):
            return Qwen3TTSSpeakerEncoder(Qwen3TTSSpeakerEncoderConfig(**cfg.to_dict()))

    def official_mel(audio: torch.Tensor) -> torch.Tensor:  # as extract_speaker_embedding calls it
        return mel_spectrogram(audio[None], n_fft=1024, num_mels=128, sampling_rate=24000, hop_size=256,
                               win_size=1024, fmin=0, fmax=12000).transpose(1, 2)

    tiny = tiny_speaker_encoder_config(enc_dim=64)
    keys = {name: {k: list(v.shape) for k, v in official(cfg).state_dict().items()} for name, cfg in [
        ("tiny", tiny), ("real_1024", SpeakerEncoderConfig(enc_dim=1024)),
        ("real_2048", SpeakerEncoderConfig(enc_dim=2048))]}

    fbank = librosa.filters.mel(sr=24000, n_fft=1024, n_mels=128, fmin=0, fmax=12000)
    nonzero = [[int(r), int(c), float(fbank[r, c])] for r, c in np.argwhere(fbank != 0)]
    mel_audio = synthetic_speech(**MEL_SIGNAL)
    log_mel = official_mel(mel_audio)[0]

    ours = SpeakerEncoder(tiny).eval()
    init_random_(ours, torch.Generator().manual_seed(SEED))
    ref = Qwen3TTSSpeakerEncoder(Qwen3TTSSpeakerEncoderConfig(**tiny.to_dict())).eval()
    ref.load_state_dict(ours.state_dict(), strict=True)
    with torch.no_grad():
        xvector = ref(official_mel(synthetic_speech(**XVECTOR_SIGNAL)))[0]

    fixture = {
        "generated_by": "tests/reference/speaker_encoder_fixture.py (qwen-tts 0.1.1, librosa "
                        f"{librosa.__version__}, torch {torch.__version__})",
        "official_keys": keys,
        "filterbank": {"shape": list(fbank.shape),
                       "nonzero": _f32(nonzero)},
        "log_mel": {"signal": MEL_SIGNAL, "values": _f32(log_mel.tolist())},
        "xvector": {"seed": SEED, "config": tiny.to_dict(), "signal": XVECTOR_SIGNAL,
                    "values": _f32(xvector.tolist())},
    }
    out = Path(sys.argv[1]) if len(sys.argv) > 1 else OUT  # tests run it into a temp file (reference/live.py)
    out.write_text(json.dumps(fixture, separators=(",", ":")) + "\n")
    print(f"wrote {out} ({out.stat().st_size} bytes)")


if __name__ == "__main__":
    main()
