"""Streaming-engine benchmark (JSON on stdout): time to first audio under word-by-word feeding, and the
per-frame step time of B streams batched together.

    python -m bench.streaming --model DIR [--batches 1,2,4,...,128] [--compile] [--tokens-per-s 30]

- ttfa_ms: from the first pushed character to the first 80 ms frame delivered, text fed word by word at
  `--tokens-per-s` (an LLM's pace), p50 over `--repeats` utterances.
- step_ms[B]: one engine frame step with B live streams (median) = talker forward + code 0 + 15 predictor
  micro-steps + one incremental codec frame, for B rows padded to their bucket; every stream advances
  80 ms per step, so B streams are real time while step_ms <= 80. `largest_realtime_batch` is the biggest
  such B measured. `--compile` runs the compiled frame step (every bucket and window is built first;
  `compile_s`). Memory: the KV cache holds max(batches) x --max-positions positions.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import threading
import time
from pathlib import Path
from typing import Any

import torch

from tts_engine import Engine, EngineSettings, load_model

LONG_TEXT = " ".join(["This sentence keeps the stream busy while we measure how long one step takes."] * 6)


def _ttfa(engine: Engine, speaker: str | None, text: str, tokens_per_s: float) -> float:
    stream = engine.open_stream(speaker=speaker, greedy=True)
    words = text.split(" ")
    first_push: list[float] = []

    def feed() -> None:
        for i, word in enumerate(words):
            if not first_push:
                first_push.append(time.perf_counter())
            try:
                stream.push_text(word if i + 1 == len(words) else word + " ")
            except RuntimeError:  # cancelled once its first frame came: the rest of the text is not needed
                return
            time.sleep(1.0 / tokens_per_s)
        stream.finish()

    thread = threading.Thread(target=feed)
    thread.start()
    frame = stream.next_frame(timeout=600)
    ttfa = (time.perf_counter() - first_push[0]) * 1e3
    assert frame is not None
    stream.cancel()
    thread.join()
    return ttfa


def _step_times(engine: Engine, speaker: str | None, batch: int, frames: int) -> dict[str, float]:
    scheduler = engine.scheduler
    scheduler.timings.clear()
    streams = [engine.open_stream(speaker=speaker, seed=i) for i in range(batch)]
    for s in streams:
        s.push_text(LONG_TEXT)
        s.finish()

    def drain(stream) -> None:  # type: ignore[no-untyped-def]
        for i, _ in enumerate(stream):
            if i + 1 >= frames:
                stream.cancel()
                break

    threads = [threading.Thread(target=drain, args=(s,)) for s in streams]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    full = [t["ms"] for t in scheduler.timings if t["batch"] == batch]
    if not full:
        return {"steps": 0}
    step = statistics.median(full)
    return {"steps": len(full), "step_ms": step, "step_ms_min": min(full), "rtf": step / 80.0,
            "realtime": step <= 80.0}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--batches", default="1,2,4,8,16,32,64,128")
    parser.add_argument("--compile", action="store_true", help="the compiled frame step (torch.compile)")
    parser.add_argument("--precision", default="auto", choices=("auto", "fp32", "bf16", "int8"),
                        help="auto: bf16 on CUDA, fp32 on a CPU; the report says what ran")
    parser.add_argument("--frames", type=int, default=5, help="frames per stream per batch size")
    parser.add_argument("--tokens-per-s", type=float, default=30.0)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--max-positions", type=int, default=256)
    args = parser.parse_args()

    batches = [int(b) for b in args.batches.split(",")]
    model = load_model(args.model, device=args.device, precision=args.precision)
    speaker = model.speakers[0] if model.speakers else None
    settings = EngineSettings(max_streams=max(batches), max_positions=args.max_positions,
                              max_lead_frames=10_000, compile=args.compile)
    report: dict[str, Any] = {"model": str(args.model), "device": str(model.device),
                              "threads": torch.get_num_threads(),
                              "tokens_per_s": args.tokens_per_s, "compiled": args.compile,
                              "precision": model.precision, "precision_asked": args.precision,
                              "max_positions": args.max_positions}
    progress = lambda line: print(line, file=sys.stderr, flush=True)  # noqa: E731
    with Engine(model, settings, progress=progress) as engine:
        report["compile_s"] = engine.scheduler.warm_up_s
        engine.scheduler.profile = True
        _ttfa(engine, speaker, "Warm up.", args.tokens_per_s)
        ttfas = [_ttfa(engine, speaker, "Hello there, this is a quick check of first audio.", args.tokens_per_s)
                 for _ in range(args.repeats)]
        report["ttfa_ms_p50"] = statistics.median(ttfas)
        report["ttfa_ms"] = ttfas
        report["batches"] = {}
        for batch in batches:
            report["batches"][str(batch)] = _step_times(engine, speaker, batch, args.frames)
            print(f"batch {batch}: {report['batches'][str(batch)]}", flush=True, file=sys.stderr)
    realtime = [b for b in batches if report["batches"][str(b)].get("realtime")]
    report["largest_realtime_batch"] = max(realtime) if realtime else 0
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
