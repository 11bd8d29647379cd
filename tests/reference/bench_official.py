"""Time the official qwen-tts on a checkpoint; prints one JSON object. Runs INSIDE the reference venv.

Called by `python -m bench.engine` so both implementations are measured in one run on the same weights.
Timers wrap the official modules' own methods: the talker forward (its decode steps run the code
predictor inside), the code predictor's `generate`, and the speech tokenizer's `decode`.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import official_stubs  # noqa: F401  (must precede the qwen_tts import)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", required=True)
    parser.add_argument("--text", required=True)
    parser.add_argument("--speaker", default=None)
    parser.add_argument("--language", default="English")
    parser.add_argument("--max-new-tokens", type=int, default=400)
    parser.add_argument("--threads", type=int, default=0)
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    import torch
    from qwen_tts import Qwen3TTSModel

    if args.threads:
        torch.set_num_threads(args.threads)
    started = time.perf_counter()
    wrapper = Qwen3TTSModel.from_pretrained(args.model, dtype=torch.float32, attn_implementation="sdpa")
    load_s = time.perf_counter() - started
    model = wrapper.model
    timers = {"talker_forward": [], "predictor": [], "decode": []}

    def timed(name: str, fn):  # type: ignore[no-untyped-def]
        @functools.wraps(fn)  # HF generate validates kwargs against the forward's signature
        def run(*a, **k):  # type: ignore[no-untyped-def]
            t0 = time.perf_counter()
            out = fn(*a, **k)
            timers[name].append(time.perf_counter() - t0)
            return out
        return run

    model.talker.forward = timed("talker_forward", model.talker.forward)
    model.talker.code_predictor.generate = timed("predictor", model.talker.code_predictor.generate)
    model.speech_tokenizer.decode = timed("decode", model.speech_tokenizer.decode)
    speaker = args.speaker or sorted(model.get_supported_speakers())[0]

    t0 = time.perf_counter()
    wavs, sr = wrapper.generate_custom_voice(
        text=args.text, speaker=speaker, language=args.language, non_streaming_mode=False, do_sample=False,
        subtalker_dosample=False, max_new_tokens=args.max_new_tokens)
    total_s = time.perf_counter() - t0
    frames = len(wavs[0]) // 1920
    prefill_s = timers["talker_forward"][0]
    decode_steps = timers["talker_forward"][1:]
    predictor_s = sum(timers["predictor"])
    talker_s = sum(decode_steps) - predictor_s
    decode_s = sum(timers["decode"])
    audio_s = len(wavs[0]) / sr
    print(json.dumps({
        "impl": "official qwen-tts 0.1.1",
        "load_s": load_s,
        "frames": frames,
        "prefill_ms": prefill_s * 1e3,
        "talker_ms_per_frame": talker_s * 1e3 / max(frames, 1),
        "predictor_ms_per_frame": predictor_s * 1e3 / max(frames, 1),
        "codec_ms_per_frame": decode_s * 1e3 / max(frames, 1),
        "frame_ms": (total_s - prefill_s) * 1e3 / max(frames, 1),
        # The official API returns audio only when the whole utterance is generated and decoded.
        "ttfa_ms": total_s * 1e3,
        "total_s": total_s,
        "audio_s": audio_s,
        "rtf": total_s / audio_s if audio_s else None,
    }))


if __name__ == "__main__":
    main()
