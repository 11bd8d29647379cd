"""Wyoming first-audio benchmark (JSON on stdout), measured at the client as Home Assistant sees it.

    python -m bench.wyoming --model DIR [--trials 20] [--clients 1] [--chunk-chars 4] [--chunk-interval-ms 20]
    python -m bench.wyoming --uri tcp://HOST:10200 ...     # a running `voicegate wyoming` (e.g. the GPU image)

Each trial is one connection: synthesize-start, then the reply text in `--chunk-chars` pieces (about one LLM
token each, split inside words) every `--chunk-interval-ms`, synthesize-stop, audio until synthesize-stopped.
- first_audio_ms: first synthesize-chunk sent -> first audio-chunk received. The first piece ("Hell") ends
  inside a word, so this includes waiting for the piece that completes the first word.
- after_first_word_ms: the piece that completes the first word sent -> first audio-chunk received: the
  pipeline's own latency (tokenizer, engine step, codec frame, Wyoming framing, loopback TCP).
- complete_ms: synthesize-stop sent -> synthesize-stopped received; audio_s: seconds of audio per reply.
- engine_only_after_first_word_ms (in-process, one client): the same schedule pushed into the engine
  directly, to the first frame: the difference to after_first_word_ms is what the Wyoming layer adds.
`--clients C` runs C trials at once (C homes sharing one engine); two warm-up trials are not counted.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import time
from typing import Any

from wyoming.audio import AudioChunk
from wyoming.client import AsyncTcpClient
from wyoming.tts import SynthesizeChunk, SynthesizeStart, SynthesizeStop, SynthesizeVoice

from agent.media.frames import frames

TEXT = ("Okay! The kitchen lights are off now, and I set the thermostat to twenty-one degrees for the evening. "
        "Anything else?")


def pieces(text: str, size: int) -> list[str]:
    return [text[i:i + size] for i in range(0, len(text), size)]


async def one_reply(host: str, port: int, voice: str | None, chunk_chars: int, interval_s: float) -> dict[str, float]:
    chunks = pieces(TEXT, chunk_chars)
    word_done = next(i for i, c in enumerate(chunks) if " " in c or "!" in c)  # completes the first word
    sent: list[float] = []
    first_audio: float | None = None
    stop_sent = 0.0
    samples = 0
    async with AsyncTcpClient(host, port) as client:
        async def send() -> None:
            nonlocal stop_sent
            await client.write_event(SynthesizeStart(voice=SynthesizeVoice(name=voice) if voice else None).event())
            for chunk in chunks:
                sent.append(time.perf_counter())
                await client.write_event(SynthesizeChunk(text=chunk).event())
                await asyncio.sleep(interval_s)
            stop_sent = time.perf_counter()
            await client.write_event(SynthesizeStop().event())

        sender = asyncio.create_task(send())
        while (event := await client.read_event()) is not None:
            if AudioChunk.is_type(event.type):
                if first_audio is None:
                    first_audio = time.perf_counter()
                samples += AudioChunk.from_event(event).samples
            elif event.type == "error":
                raise RuntimeError(f"server error: {event.data}")
            elif event.type == "synthesize-stopped":
                break
        done = time.perf_counter()
        await sender
    assert first_audio is not None, "no audio"
    return {"first_audio_ms": (first_audio - sent[0]) * 1e3,
            "after_first_word_ms": (first_audio - sent[word_done]) * 1e3,
            "complete_ms": (done - stop_sent) * 1e3, "audio_s": samples / 24000}


async def engine_first_frame(engine: Any, speaker: str | None, chunk_chars: int, interval_s: float) -> float:
    """The same schedule pushed into the engine directly: word-completing piece -> first frame (ms)."""
    chunks = pieces(TEXT, chunk_chars)
    word_done = next(i for i, c in enumerate(chunks) if " " in c or "!" in c)
    stream = engine.open_stream(speaker, "auto")
    sent: list[float] = []

    async def feed() -> None:
        for chunk in chunks:
            sent.append(time.perf_counter())
            stream.push_text(chunk)
            await asyncio.sleep(interval_s)

    feeder = asyncio.create_task(feed())
    async for _frame in frames(stream):
        first = time.perf_counter()
        break
    stream.cancel()
    feeder.cancel()
    return (first - sent[word_done]) * 1e3


def summary(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)
    p95 = ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]
    return {"p50": round(statistics.median(ordered), 1), "p95": round(p95, 1), "min": round(ordered[0], 1),
            "max": round(ordered[-1], 1)}


async def run(args: argparse.Namespace) -> dict[str, Any]:
    service = None
    engine = None
    if args.uri:
        host, port = args.uri.removeprefix("tcp://").rsplit(":", 1)
        where: dict[str, Any] = {"server": args.uri}
    else:
        import torch

        from agent.wyoming.handler import WyomingService, WyomingSettings
        from tts_engine import Engine, load_model

        if args.threads:
            torch.set_num_threads(args.threads)
        engine = Engine(load_model(args.model, device=args.device))
        service = WyomingService(engine, WyomingSettings(uri="tcp://127.0.0.1:0"), model_name=args.model)
        await service.start()
        host, port = "127.0.0.1", str(service.port)
        where = {"server": "in-process", "model": args.model, "device": str(engine.model.device),
                 "torch_threads": torch.get_num_threads()}
    load_before = os.getloadavg()[0]
    try:
        interval = args.chunk_interval_ms / 1e3
        for _ in range(2):  # warm-up: prefix caches, allocator, first-call paths
            await one_reply(host, int(port), args.voice, args.chunk_chars, interval)
        results: list[dict[str, float]] = []
        baseline: list[float] = []
        for _ in range(args.trials):
            batch = [one_reply(host, int(port), args.voice, args.chunk_chars, interval) for _ in range(args.clients)]
            results += await asyncio.gather(*batch)
            if service is not None and args.clients == 1:  # the engine alone, same schedule, interleaved
                speaker = service.resolve(None).name if service.info.voices else None
                baseline.append(await engine_first_frame(engine, args.voice or speaker, args.chunk_chars, interval))
        extra = {"engine_only_after_first_word_ms": summary(baseline)} if baseline else {}
    finally:
        if service is not None:
            await service.stop()
        if engine is not None:
            engine.close()
    return {"bench": "wyoming", **where, "machine": platform.machine(), "python": platform.python_version(),
            "cpus": os.cpu_count(), "load_avg_1m": [round(load_before, 2), round(os.getloadavg()[0], 2)],
            "trials": len(results), "clients": args.clients, "chunk_chars": args.chunk_chars,
            "chunk_interval_ms": args.chunk_interval_ms, "text_chars": len(TEXT),
            **{key: summary([r[key] for r in results])
               for key in ("first_audio_ms", "after_first_word_ms", "complete_ms")},
            "audio_s": round(statistics.median(r["audio_s"] for r in results), 2), **extra}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="checkpoint directory or hub id (in-process server)")
    parser.add_argument("--uri", help="tcp://HOST:PORT of a running `voicegate wyoming` instead")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    parser.add_argument("--voice", help="voice name (default: the server's default)")
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument("--clients", type=int, default=1, help="concurrent connections per trial")
    parser.add_argument("--chunk-chars", type=int, default=4)
    parser.add_argument("--chunk-interval-ms", type=float, default=20.0)
    args = parser.parse_args()
    if bool(args.model) == bool(args.uri):
        parser.error("give --model (in-process server) or --uri (a running one)")
    print(json.dumps(asyncio.run(run(args))))


if __name__ == "__main__":
    main()
