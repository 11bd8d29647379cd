"""Proxy overhead: first audio from a replica reached directly and through nginx (JSON on stdout).

    python -m bench.proxy [--sessions 40] [--model DIR] [--device cpu]

One `voicegate serve` replica (a subprocess; tiny random CustomVoice model by default, one torch thread) and
Debian's nginx in front of it with the config the Helm chart renders (bench.fleet: replica ids mapped to
127.0.0.1 ports), both on loopback. N sessions, one at a time, alternately direct and through the proxy in
ABBA order (so neither path always runs first or on a warmer server). Each session: open the WebSocket
(`connect_ms`: handshake until session.created, with the API key), session.update to headless audio, the
text in one `text.append` and `text.flush`; `first_audio_ms`: text sent -> first binary audio frame received.
`transit_ms` is that less the server's own `audio.first.latency_ms` (its first text in -> first audio out):
the time on the wire (loopback, and nginx on the proxy path) without the model's time, which on a busy CPU
varies by far more than a proxy costs. A pair's difference (proxy - direct) is what the proxy adds.
min/p50/p95 per path and of the pair differences (the minimum is the least disturbed by other load).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench.fleet import AUTH, nginx_binary, run_fleet

TEXT = "Hello! How can I help you today?"


async def one_session(url: str, text: str) -> dict[str, float]:
    import websockets

    started = time.perf_counter()
    async with websockets.connect(url, additional_headers=AUTH, max_size=2**22) as ws:
        created = json.loads(await ws.recv())
        connected = time.perf_counter()
        if created.get("type") != "session.created":
            raise RuntimeError(f"no session: {created}")
        await ws.send(json.dumps({"type": "session.update", "audio": "websocket"}))
        while json.loads(await ws.recv())["type"] != "session.updated":
            pass
        sent = time.perf_counter()
        await ws.send(json.dumps({"type": "text.append", "text": text}))
        await ws.send(json.dumps({"type": "text.flush"}))
        first: float | None = None
        server_ms: float | None = None
        while first is None or server_ms is None:
            message = await ws.recv()
            if isinstance(message, bytes):
                first = first or time.perf_counter()
            elif (event := json.loads(message))["type"] == "audio.first":
                server_ms = float(event["latency_ms"])
            elif event["type"] == "error":
                raise RuntimeError(f"server error: {event}")
    client_ms = (first - sent) * 1000
    return {"connect_ms": (connected - started) * 1000, "first_audio_ms": client_ms,
            "transit_ms": client_ms - server_ms}


def stats(values: list[float]) -> dict[str, float]:
    arr = np.asarray(values)
    return {"min": round(float(arr.min()), 3), "p50": round(float(np.percentile(arr, 50)), 3),
            "p95": round(float(np.percentile(arr, 95)), 3), "mean": round(float(arr.mean()), 3)}


async def measure(direct: str, proxied: str, n: int, text: str, warmup: int = 2) -> dict[str, Any]:
    for _ in range(warmup):  # first sessions pay one-off costs (imports, nginx's first upstream connection)
        await one_session(direct, text)
        await one_session(proxied, text)
    runs: dict[str, list[dict[str, float]]] = {"direct": [], "proxy": []}
    for i in range(n):
        order = ("direct", "proxy") if i % 4 in (0, 3) else ("proxy", "direct")  # ABBA
        for path in order:
            runs[path].append(await one_session(direct if path == "direct" else proxied, text))
    out: dict[str, Any] = {}
    for key in ("first_audio_ms", "transit_ms", "connect_ms"):
        d = [r[key] for r in runs["direct"]]
        p = [r[key] for r in runs["proxy"]]
        out[key] = {"direct": stats(d), "proxy": stats(p), "proxy_minus_direct": stats([b - a for a, b in zip(d, p, strict=True)])}
    return out


def nginx_version() -> str:
    done = subprocess.run([nginx_binary(), "-v"], capture_output=True, text=True, check=False)
    return done.stderr.strip().removeprefix("nginx version: ")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sessions", type=int, default=40, help="sessions per path (direct, proxy)")
    parser.add_argument("--text", default=TEXT)
    parser.add_argument("--model", help="checkpoint directory (default: a tiny random CustomVoice one)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = Path(args.model) if args.model else None
        if model_dir is None:
            from tts_engine import make_checkpoint

            model_dir = make_checkpoint(Path(tmp) / "tiny", "tiny", "custom_voice", 0)
        with run_fleet(model_dir, Path(tmp), n=1) as fleet:
            (replica,) = fleet.replicas.values()
            direct = f"ws://127.0.0.1:{replica.port}/v1/session"
            results = asyncio.run(measure(direct, fleet.ws_url, args.sessions, args.text))
    report = {"bench": "proxy", "model": args.model or "tiny (random)", "device": "cpu",
              "sessions_per_path": args.sessions, "text_chars": len(args.text), "nginx": nginx_version(),
              "machine": {"cpus": os.cpu_count(), "python": platform.python_version()}, **results}
    json.dump(report, sys.stdout, indent=2)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
