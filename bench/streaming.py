"""Streaming-engine benchmark (JSON on stdout): time to first audio under word-by-word feeding, and the
per-frame step time of B streams batched together.

    python -m bench.streaming --model DIR [--batches 1,2,4,8,16,32] [--tokens-per-s 30]

- ttfa_ms: from the first pushed character to the first 80 ms frame delivered, text fed word by word at
  `--tokens-per-s` (an LLM's pace), p50 over `--repeats` utterances.
- step_ms[B]: one engine step with B live streams = talker forward (B rows) + code 0 + 15 predictor
  micro-steps (B rows) + one incremental codec frame (B rows); every stream advances 80 ms per step, so
  B streams are real time while step_ms <= 80. `largest_realtime_batch` is the biggest such B measured.
"""

from __future__ import annotations

import argparse
import json
import statistics
import threading
import time
from pathlib import Path
from typing import Any

import torch

from tts_engine.engine import Engine
from tts_engine.loading import load_model
from tts_engine.scheduler import EngineSettings

LONG_TEXT = " ".join(["This sentence keeps the stream busy while we measure how long one step takes."] * 6)


def _ttfa(engine: Engine, speaker: str | None, text: str, tokens_per_s: float) -> float:
    stream = engine.open_stream(speaker=speaker, greedy=True)
    words = text.split(" ")
    first_push: list[float] = []

    def feed() -> None:
        for i, word in enumerate(words):
            if not first_push:
                first_push.append(time.perf_counter())
            stream.push_text(word if i + 1 == len(words) else word + " ")
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
    full = [t for t in scheduler.timings if t["batch"] == batch]
    talker = [t["ms"] for t in full if t["phase"] == "talker"]
    frame = [t for t in full if t["phase"] == "frame"]
    if not talker or not frame:
        return {"steps": 0}
    talker_ms = statistics.median(talker)
    code0_ms = statistics.median(t["code0_ms"] for t in frame)
    predictor_ms = statistics.median(t["predictor_ms"] for t in frame)
    codec_ms = statistics.median(t["codec_ms"] for t in frame)
    step = talker_ms + code0_ms + predictor_ms + codec_ms
    return {"steps": len(frame), "talker_ms": talker_ms, "code0_ms": code0_ms, "predictor_ms": predictor_ms,
            "codec_ms": codec_ms, "step_ms": step, "rtf": step / 80.0, "realtime": step <= 80.0}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--batches", default="1,2,4,8,16,32")
    parser.add_argument("--frames", type=int, default=5, help="frames per stream per batch size")
    parser.add_argument("--tokens-per-s", type=float, default=30.0)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--max-positions", type=int, default=512)
    args = parser.parse_args()

    batches = [int(b) for b in args.batches.split(",")]
    model = load_model(args.model, device=args.device)
    speaker = model.speakers[0] if model.speakers else None
    settings = EngineSettings(max_streams=max(batches), max_positions=args.max_positions,
                              max_lead_frames=10_000)
    report: dict[str, Any] = {"model": str(args.model), "device": str(model.device),
                              "dtype": str(model.talker.codec_head.weight.dtype), "threads": torch.get_num_threads(),
                              "tokens_per_s": args.tokens_per_s}
    with Engine(model, settings) as engine:
        engine.scheduler.profile = True
        _ttfa(engine, speaker, "Warm up.", args.tokens_per_s)
        ttfas = [_ttfa(engine, speaker, "Hello there, this is a quick check of first audio.", args.tokens_per_s)
                 for _ in range(args.repeats)]
        report["ttfa_ms_p50"] = statistics.median(ttfas)
        report["ttfa_ms"] = ttfas
        report["batches"] = {}
        for batch in batches:
            report["batches"][str(batch)] = _step_times(engine, speaker, batch, args.frames)
            print(f"batch {batch}: {report['batches'][str(batch)]}", flush=True, file=__import__("sys").stderr)
    realtime = [b for b in batches if report["batches"][str(b)].get("realtime")]
    report["largest_realtime_batch"] = max(realtime) if realtime else 0
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
