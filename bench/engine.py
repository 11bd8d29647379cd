"""Engine benchmark: ours and the official qwen-tts side by side, one run, same weights. JSON on stdout.

    python -m bench.engine --model DIR            # an existing checkpoint (e.g. make-checkpoint --size 0.6b)
    python -m bench.engine --make 0.6b            # writes (once) a random 0.6B CustomVoice checkpoint

Ours: load time, prefill (prompt) ms, per-frame ms split into talker / code predictor / codec decode
(the exact incremental decoder, one frame), time to first audio (text known up front) and the real-time
factor (compute seconds per audio second; < 1 is faster than real time).
The official package runs in its isolated environment (tests/reference/bench_official.py) under the
same greedy settings; the ratios are official / ours (> 1: we are faster).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_TEXT = ("Hello there. This is a benchmark of the voicegate engine, "
                "speaking one sentence of moderate length.")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


@torch.no_grad()
def bench_ours(model_dir: Path, text: str, device: str, max_frames: int) -> dict[str, Any]:
    from tts_engine.codec_stream import StreamingCodecDecoder
    from tts_engine.generate import frame_input
    from tts_engine.loading import load_model
    from tts_engine.prompt import first_target_row
    from tts_engine.sampling import CodeZeroProcessor, draw

    t0 = time.perf_counter()
    model = load_model(model_dir, device=device)
    load_s = time.perf_counter() - t0
    dev = model.device
    talker = model.talker
    speaker = model.speakers[0] if model.speakers else None
    params = model.sampling(greedy=True)
    eos = model.config.talker_config.codec_eos_token_id
    codec = StreamingCodecDecoder(model.codec)

    def run() -> dict[str, Any]:
        timings = {"talker": 0.0, "predictor": 0.0, "codec": 0.0}
        started = time.perf_counter()
        ids = model.tokenizer.target_ids(text)
        voice = model.voice(speaker, "english" if "english" in model.languages else "auto")
        prefill = torch.cat([model.prefix(voice), first_target_row(talker, model.rows, ids[0])])
        trailing = torch.cat([talker.embed_text(torch.tensor(ids[1:], device=dev)), model.rows.eos[None]])
        talker.setup_cache(1, prefill.shape[0] + max_frames + 1)
        hidden = talker(prefill[None], torch.arange(prefill.shape[0], device=dev)[None])[:, -1]
        _sync(dev)
        prefill_ms = (time.perf_counter() - started) * 1e3
        processor = CodeZeroProcessor(talker.config.vocab_size, eos, params, 1, dev)
        state = codec.new_state()
        ttfa_ms, frames = None, 0
        for frame in range(max_frames):
            t = time.perf_counter()
            logits = processor(talker.logits(hidden).float(), torch.tensor([frame], device=dev),
                               torch.tensor([True], device=dev))
            code0 = draw(logits, [], True, 1.0, 0, 1.0)
            _sync(dev)
            timings["talker"] += time.perf_counter() - t
            if int(code0[0]) == eos:
                break
            processor.record(code0)
            t = time.perf_counter()
            residual, embeds = talker.code_predictor.predict(hidden, talker.embed_codec(code0),
                                                             lambda lg, _s: lg.argmax(-1))
            _sync(dev)
            timings["predictor"] += time.perf_counter() - t
            t = time.perf_counter()
            codec.step([state], torch.cat([code0[:, None], residual], dim=1))
            _sync(dev)
            timings["codec"] += time.perf_counter() - t
            frames += 1
            if ttfa_ms is None:
                ttfa_ms = (time.perf_counter() - started) * 1e3
            t = time.perf_counter()
            row = trailing[frame] if frame < trailing.shape[0] else model.rows.pad
            hidden = talker(frame_input(talker, code0, embeds, row[None]),
                            torch.tensor([[prefill.shape[0] + frame]], device=dev))[:, -1]
            _sync(dev)
            timings["talker"] += time.perf_counter() - t
        total_s = time.perf_counter() - started
        audio_s = frames * 0.08
        per = max(frames, 1)
        return {"frames": frames, "prefill_ms": prefill_ms, "ttfa_ms": ttfa_ms,
                "talker_ms_per_frame": timings["talker"] * 1e3 / per,
                "predictor_ms_per_frame": timings["predictor"] * 1e3 / per,
                "codec_ms_per_frame": timings["codec"] * 1e3 / per,
                "frame_ms": (total_s * 1e3 - prefill_ms) / per, "total_s": total_s, "audio_s": audio_s,
                "rtf": total_s / audio_s if audio_s else None}

    run()  # warm-up (allocations, kernels)
    result = run()
    return {"impl": "voicegate", "load_s": load_s, "device": str(dev), "dtype": str(model.talker.codec_head.weight.dtype),
            **result}


def bench_official(model_dir: Path, text: str, python: Path, max_frames: int) -> dict[str, Any]:
    cmd = [str(python), str(ROOT / "tests" / "reference" / "bench_official.py"), "--model", str(model_dir),
           "--text", text, "--max-new-tokens", str(max_frames + 1)]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=3600)
    if proc.returncode != 0:
        raise RuntimeError(f"official benchmark failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, help="checkpoint directory")
    parser.add_argument("--make", choices=("tiny", "0.6b", "1.7b"), help="write a random checkpoint to bench")
    parser.add_argument("--text", default=DEFAULT_TEXT)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--max-frames", type=int, default=200)
    parser.add_argument("--reference-python", type=Path, default=ROOT / ".ref-venv" / "bin" / "python",
                        help="python of the isolated qwen-tts environment (tests/reference/build_env.sh)")
    parser.add_argument("--no-reference", action="store_true")
    args = parser.parse_args()

    model_dir = args.model
    if model_dir is None:
        if not args.make:
            parser.error("give --model DIR or --make SIZE")
        from tts_engine.checkpoint import make_checkpoint

        model_dir = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "voicegate" / f"bench-{args.make}"
        if not (model_dir / "model.safetensors").exists():
            print(f"writing a random {args.make} checkpoint to {model_dir} ...", file=sys.stderr)
            make_checkpoint(model_dir, args.make, "custom_voice", seed=0)

    report: dict[str, Any] = {
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "torch": torch.__version__,
                    "threads": torch.get_num_threads(),
                    "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None},
        "model": str(model_dir), "text": args.text,
        "ours": bench_ours(model_dir, args.text, args.device, args.max_frames),
    }
    if not args.no_reference and args.device == "cpu":
        if not args.reference_python.exists():
            print("reference env missing: run tests/reference/build_env.sh (or pass --no-reference)",
                  file=sys.stderr)
        else:
            ref = bench_official(model_dir, args.text, args.reference_python, args.max_frames)
            report["official"] = ref
            ours = report["ours"]
            report["speedup_official_over_ours"] = {
                key: ref[key] / ours[key] for key in
                ("prefill_ms", "talker_ms_per_frame", "predictor_ms_per_frame", "codec_ms_per_frame", "frame_ms",
                 "ttfa_ms", "rtf") if ref.get(key) and ours.get(key)}
            report["same_frame_count"] = ref["frames"] == ours["frames"]
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
