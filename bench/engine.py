"""Engine benchmark: ours and the official qwen-tts side by side, one run, same weights. JSON on stdout.

    python -m bench.engine --model DIR            # an existing checkpoint (e.g. make-checkpoint --size 0.6b)
    python -m bench.engine --make 0.6b            # writes (once) a random 0.6B CustomVoice checkpoint

Ours, two ways:
- `ours_split`: fp32 eager, each part timed on its own: prefill, talker (+ code 0), code predictor and
  codec (the exact incremental decoder, one frame) per frame.
- `ours[variant]`: the streaming engine's real frame step (FrameStep: talker, code 0, 15 residual codes,
  codec frame, one host copy), one stream: `eager` and `compiled` (torch.compile, inductor) in fp32, and
  the `bf16` / `int8` precision modes (`--variants`; `int8_compiled` too). `compile_s` is the warm-up.
The official package runs in its isolated environment (tests/reference/bench_official.py) under the
same greedy settings. Ratios are ours / official (< 1: we are faster); the official frame includes its
amortized full-utterance codec decode, ours one incremental codec frame.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch

from bench.checkpoints import bench_checkpoint

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_TEXT = ("Hello there. This is a benchmark of the voicegate engine, "
                "speaking one sentence of moderate length.")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


VARIANTS = {  # name -> (compiled frame step, precision)
    "eager": (False, "fp32"), "compiled": (True, "fp32"), "bf16": (False, "bf16"), "int8": (False, "int8"),
    "int8_compiled": (True, "int8"),
}


def _load(model_dir: Path, device: str, precision: str):  # type: ignore[no-untyped-def]
    from tts_engine import load_model

    return load_model(model_dir, device=device, precision=precision)


@torch.no_grad()
def bench_split(model_dir: Path, text: str, device: str, max_frames: int,
                compile_codec: bool = False) -> dict[str, Any]:
    """fp32 eager, one stream, each part timed on its own: talker (+ code 0), predictor, codec frame."""
    from tts_engine.model.codec_stream import StreamingCodecDecoder
    from tts_engine.sampling.processors import process_code0, suppressed_ids
    from tts_engine.synthesis.generate import frame_input
    from tts_engine.synthesis.prompt import first_target_row

    t0 = time.perf_counter()
    model = _load(model_dir, device, "fp32")
    load_s = time.perf_counter() - t0
    dev = model.device
    talker = model.talker
    speaker = model.speakers[0] if model.speakers else None
    params = model.sampling(greedy=True)
    eos = model.config.talker_config.codec_eos_token_id
    vocab = talker.config.vocab_size
    suppressed = suppressed_ids(vocab, eos, dev)
    penalty = torch.tensor([params.repetition_penalty], device=dev)
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
        seen = torch.zeros(1, vocab, dtype=torch.bool, device=dev)
        state = codec.new_state()
        codes.clear()
        ttfa_ms, frames = None, 0
        for frame in range(max_frames):
            t = time.perf_counter()
            eos_ok = torch.tensor([frame >= params.min_new_tokens], device=dev)
            logits = process_code0(talker.logits(hidden).float(), seen, penalty, eos_ok, suppressed, eos)
            code0 = logits.argmax(dim=-1)
            _sync(dev)
            timings["talker"] += time.perf_counter() - t
            if int(code0[0]) == eos:
                break
            seen[0, code0[0]] = True
            t = time.perf_counter()
            residual, embeds = talker.code_predictor.predict(hidden, talker.embed_codec(code0),
                                                             lambda lg, _s: lg.argmax(-1))
            _sync(dev)
            timings["predictor"] += time.perf_counter() - t
            t = time.perf_counter()
            codes.append(torch.cat([code0[:, None], residual], dim=1))
            codec.step([state], codes[-1])
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

    codes: list[torch.Tensor] = []  # (1, 16) per frame of the last run
    run()  # warm-up (allocations, kernels)
    result = {"impl": "voicegate (parts timed apart, fp32 eager)", "load_s": load_s, "device": str(dev), **run()}
    if compile_codec and codes:
        result["codec_compiled"] = _codec_compiled(codec, codes, dev)
    return result


def _codec_compiled(codec, codes: list[torch.Tensor], dev: torch.device) -> dict[str, Any]:  # type: ignore[no-untyped-def]
    """The incremental codec frame alone, compiled (as inside the compiled frame step), on the split run's
    codes: ms per frame and the largest sample difference from the eager decoder."""
    from tts_engine.model.codec_stream import CodecStreamState

    def frame(step_codes: torch.Tensor, state: CodecStreamState) -> tuple[torch.Tensor, CodecStreamState]:
        pcm = codec.decode_step(step_codes, state)
        return pcm, state

    compiled = torch.compile(frame, fullgraph=True, dynamic=False)

    def decode(fn) -> tuple[torch.Tensor, float]:  # type: ignore[no-untyped-def]
        state, pieces, seconds = codec.new_state(), [], 0.0
        for c in codes:
            t = time.perf_counter()
            pcm, state = fn(c[:, :, None], state)
            _sync(dev)
            seconds += time.perf_counter() - t
            pieces.append(pcm)
        return torch.cat(pieces, dim=1), seconds

    t0 = time.perf_counter()
    decode(compiled)  # compiles
    compile_s = time.perf_counter() - t0
    eager_pcm, eager_s = decode(frame)
    compiled_pcm, compiled_s = decode(compiled)
    n = len(codes)
    return {"compile_s": compile_s, "eager_ms_per_frame": eager_s * 1e3 / n,
            "compiled_ms_per_frame": compiled_s * 1e3 / n,
            "max_abs_diff_vs_eager": float((eager_pcm - compiled_pcm).abs().max())}


@torch.no_grad()
def bench_engine(model_dir: Path, text: str, device: str, max_frames: int, compiled: bool,
                 precision: str) -> dict[str, Any]:
    """The streaming engine's real path, one stream: prefill, then one FrameStep per frame (talker, code 0,
    15 residual codes, codec frame, one host copy). One bucket and one KV window: one graph when compiled."""
    from tts_engine import Engine, EngineSettings

    t0 = time.perf_counter()
    model = _load(model_dir, device, precision)
    load_s = time.perf_counter() - t0
    speaker = model.speakers[0] if model.speakers else None
    language = "english" if "english" in model.languages else "auto"
    positions = 128 * -(-(len(model.tokenizer.target_ids(text)) + 64 + max_frames) // 128)
    settings = EngineSettings(max_streams=1, max_positions=positions, kv_windows=(positions,), buckets=(1,),
                              compile=compiled, max_lead_frames=10**6, frames_per_token=10**3)
    with Engine(model, settings, progress=lambda line: print(line, file=sys.stderr, flush=True)) as engine:
        engine.scheduler.profile = True

        def run() -> dict[str, Any]:
            engine.scheduler.timings.clear()
            started = time.perf_counter()
            stream = engine.open_stream(speaker=speaker, language=language, greedy=True)
            stream.push_text(text)
            stream.finish()
            frames, ttfa_ms = 0, None
            for _ in stream:
                frames += 1
                if ttfa_ms is None:
                    ttfa_ms = (time.perf_counter() - started) * 1e3
                if frames >= max_frames:
                    stream.cancel()
                    break
            total_s = time.perf_counter() - started
            steps = [t["ms"] for t in engine.scheduler.timings]
            audio_s = frames * 0.08
            return {"frames": frames, "ttfa_ms": ttfa_ms, "frame_ms": sum(steps) / max(len(steps), 1),
                    "frame_ms_p50": statistics.median(steps) if steps else None,
                    "total_s": total_s, "audio_s": audio_s, "rtf": total_s / audio_s if audio_s else None}

        run()  # warm-up
        result = run()
        compile_s = engine.scheduler.warm_up_s if compiled else 0.0
    # what ran, not what was asked (int8 on CUDA runs as bf16)
    return {"impl": f"voicegate engine ({'compiled' if compiled else 'eager'}, {model.precision})",
            "precision_asked": precision, "precision": model.precision, "load_s": load_s,
            "compile_s": compile_s, "device": str(model.device), **result}


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
    parser.add_argument("--variants", default="eager,compiled,bf16,int8",
                        help=f"engine variants to time, comma-separated, from {sorted(VARIANTS)}")
    args = parser.parse_args()

    model_dir = args.model
    if model_dir is None:
        if not args.make:
            parser.error("give --model DIR or --make SIZE")
        model_dir = bench_checkpoint(args.make)

    variants = [v for v in args.variants.split(",") if v]
    unknown = sorted(set(variants) - set(VARIANTS))
    if unknown:
        parser.error(f"unknown variants {unknown}; choose from {sorted(VARIANTS)}")
    report: dict[str, Any] = {
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "torch": torch.__version__,
                    "threads": torch.get_num_threads(),
                    "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None},
        "model": str(model_dir), "text": args.text, "max_frames": args.max_frames,
        "ours_split": bench_split(model_dir, args.text, args.device, args.max_frames,
                                  compile_codec=any(VARIANTS[v][0] for v in variants)),
        "ours": {},
    }
    for name in variants:
        print(f"bench.engine: {name} ...", file=sys.stderr, flush=True)
        compiled, precision = VARIANTS[name]
        report["ours"][name] = bench_engine(model_dir, args.text, args.device, args.max_frames, compiled, precision)
    if not args.no_reference and args.device == "cpu":
        if not args.reference_python.exists():
            print("reference env missing: run tests/reference/build_env.sh (or pass --no-reference)",
                  file=sys.stderr)
        else:
            ref = bench_official(model_dir, args.text, args.reference_python, args.max_frames)
            report["official"] = ref
            split = report["ours_split"]
            # ours / official: < 1 means we are faster.
            report["split_over_official"] = {
                key: split[key] / ref[key] for key in
                ("prefill_ms", "talker_ms_per_frame", "predictor_ms_per_frame", "codec_ms_per_frame", "frame_ms")
                if ref.get(key) and split.get(key)}
            report["frame_over_official"] = {name: r["frame_ms"] / ref["frame_ms"]
                                             for name, r in report["ours"].items()}
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
