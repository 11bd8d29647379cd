"""First audio through the compatible APIs next to our own protocol, same server, same run (JSON on stdout).

    python -m bench.apis                  # a tiny random CustomVoice checkpoint (temporary)
    python -m bench.apis --make 0.6b      # writes (once) a random real-size 0.6B checkpoint to the cache
    python -m bench.apis --model DIR [--runs 5] [--tokens-per-s 30]

The server (the real `agent.server.app.Server`) runs in this process on its own thread; the clients run on
this thread's event loop. Each measure is `--runs` utterances of the same text and voice, after a warm-up:

- openai_speech_{pcm,mp3}: POST /v1/audio/speech with the whole input (the official `openai` SDK's
  streaming response) -> its first body bytes; `full_ms`: the last byte. `openai_speech_pcm_speed_1.5`: the
  same with `speed` 1.5 (the time-stretch's cost, side by side with `openai_speech_pcm`).
- elevenlabs_tokens: an open multi-stream-input socket; the text goes in word by word at `--tokens-per-s`
  (an LLM's pace), then flush -> the first audio message after the first word was sent.
- session_tokens: an open /v1/session socket (headless audio); the same words as text.append at the same
  pace, then text.flush -> the first binary audio frame after the first word.

All three share the engine and its defaults (sampling, seed 0); `model_ms` of the engine's own first frame
is what bench/streaming.py measures without a server.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import logging
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

TEXT = "Hello there! This is a short reply, spoken as soon as its first words arrive."


def _words(text: str) -> list[str]:
    words = text.split(" ")
    return [w + " " for w in words[:-1]] + [words[-1]]


async def openai_first_audio(base: str, voice: str, text: str, fmt: str, speed: float = 1.0) -> dict[str, float]:
    import openai

    client = openai.AsyncOpenAI(base_url=base + "/v1", api_key="bench", max_retries=0)
    try:
        start = time.perf_counter()
        first = None
        async with client.audio.speech.with_streaming_response.create(
                model="bench", voice=voice, input=text, response_format=fmt, speed=speed) as response:
            async for chunk in response.iter_bytes():
                if chunk and first is None:
                    first = time.perf_counter()
        end = time.perf_counter()
    finally:
        await client.close()
    assert first is not None
    return {"first_audio_ms": (first - start) * 1e3, "full_ms": (end - start) * 1e3}


async def elevenlabs_first_audio(ws_base: str, voice: str, text: str, tokens_per_s: float) -> dict[str, float]:
    import websockets

    url = f"{ws_base}/v1/text-to-speech/{voice}/multi-stream-input?output_format=pcm_24000"
    async with websockets.connect(url, max_size=2**24) as ws:
        await ws.send(json.dumps({"text": " ", "context_id": "bench"}))
        first_audio: asyncio.Future[float] = asyncio.get_running_loop().create_future()

        async def read() -> None:
            async for message in ws:
                msg = json.loads(message)
                if msg.get("audio") and not first_audio.done():
                    first_audio.set_result(time.perf_counter())
                    base64.b64decode(msg["audio"])
                if msg.get("isFinal"):
                    return

        reader = asyncio.create_task(read())
        start = time.perf_counter()
        for word in _words(text):
            await ws.send(json.dumps({"text": word, "context_id": "bench"}))
            await asyncio.sleep(1.0 / tokens_per_s)
        await ws.send(json.dumps({"context_id": "bench", "flush": True}))
        await ws.send(json.dumps({"context_id": "bench", "close_context": True}))
        await reader
        end = time.perf_counter()
    return {"first_audio_ms": (await first_audio - start) * 1e3, "full_ms": (end - start) * 1e3}


async def session_first_audio(ws_base: str, voice: str, text: str, tokens_per_s: float) -> dict[str, float]:
    import websockets

    async with websockets.connect(ws_base + "/v1/session", max_size=2**24) as ws:
        json.loads(await ws.recv())  # session.created
        await ws.send(json.dumps({"type": "session.update", "voice": voice, "audio": "websocket"}))
        while json.loads(await ws.recv())["type"] != "session.updated":
            pass
        first: float | None = None
        start = time.perf_counter()

        async def feed() -> None:
            for word in _words(text):
                await ws.send(json.dumps({"type": "text.append", "text": word}))
                await asyncio.sleep(1.0 / tokens_per_s)
            await ws.send(json.dumps({"type": "text.flush"}))

        feeder = asyncio.create_task(feed())
        while True:
            data = await ws.recv()
            if isinstance(data, bytes):
                first = first or time.perf_counter()
                continue
            if json.loads(data)["type"] in ("utterance.done", "utterance.interrupted", "error"):
                break
        end = time.perf_counter()
        await feeder
    assert first is not None
    # paced playout: full_ms is the playing time, not the generation time
    return {"first_audio_ms": (first - start) * 1e3, "full_ms": (end - start) * 1e3}


def _summary(runs: list[dict[str, float]]) -> dict[str, Any]:
    firsts = [r["first_audio_ms"] for r in runs]
    return {"first_audio_ms_p50": round(statistics.median(firsts), 1), "first_audio_ms_min": round(min(firsts), 1),
            "first_audio_ms_max": round(max(firsts), 1), "full_ms_p50": round(statistics.median(
                r["full_ms"] for r in runs), 1), "runs": [round(f, 1) for f in firsts]}


async def bench(port: int, voice: str, text: str, runs: int, tokens_per_s: float) -> dict[str, Any]:
    base, ws_base = f"http://127.0.0.1:{port}", f"ws://127.0.0.1:{port}"
    measures = {
        "openai_speech_pcm": lambda: openai_first_audio(base, voice, text, "pcm"),
        "openai_speech_mp3": lambda: openai_first_audio(base, voice, text, "mp3"),
        "openai_speech_pcm_speed_1.5": lambda: openai_first_audio(base, voice, text, "pcm", 1.5),
        "elevenlabs_tokens": lambda: elevenlabs_first_audio(ws_base, voice, text, tokens_per_s),
        "session_tokens": lambda: session_first_audio(ws_base, voice, text, tokens_per_s),
    }
    for measure in measures.values():  # warm-up: first-call costs, the voice's prefix cache
        await measure()
    results: dict[str, list[dict[str, float]]] = {name: [] for name in measures}
    for _ in range(runs):  # interleaved, so a busy moment of the machine hits every API alike
        for name, measure in measures.items():
            results[name].append(await measure())
    return {name: _summary(values) for name, values in results.items()}


def _checkpoint(args: argparse.Namespace, tmp: str) -> tuple[str, str]:
    from tts_engine import make_checkpoint

    if args.model:
        return args.model, args.model
    if args.make and args.make != "tiny":
        from bench.checkpoints import bench_checkpoint

        return str(bench_checkpoint(args.make)), f"{args.make} (random)"
    return str(make_checkpoint(Path(tmp) / "tiny", "tiny", "custom_voice", 0)), "tiny (random)"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", help="checkpoint directory (default: a tiny random CustomVoice one)")
    parser.add_argument("--make", choices=("tiny", "0.6b", "1.7b"), help="write (once) a random checkpoint")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--tokens-per-s", type=float, default=30.0, help="word pace of the token-fed APIs")
    parser.add_argument("--text", default=TEXT)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)

    import torch

    from bench.server import _ServerThread
    from tts_engine import Engine, EngineSettings, load_model

    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        model_dir, name = _checkpoint(args, tmp)
        model = load_model(model_dir, device=args.device)
        engine = Engine(model, EngineSettings(max_streams=4))
        srv = _ServerThread(engine, name)
        try:
            voice = srv.server.info.voices[0]
            results = asyncio.run(bench(srv.server.port, voice, args.text, args.runs, args.tokens_per_s))
        finally:
            srv.stop()
            engine.close()
    report = {"bench": "apis", "model": name, "device": str(model.device), "threads": args.threads,
              "voice": voice, "text_chars": len(args.text), "tokens_per_s": args.tokens_per_s, "results": results}
    json.dump(report, sys.stdout, indent=2)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
