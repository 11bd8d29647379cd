"""Media server benchmark: N concurrent headless sessions through the real server (JSON on stdout).

    python -m bench.server [--sessions 1,8,32] [--utterances 2] [--model DIR] [--device cpu]

The server (the real `agent.server.app.Server`, tiny CustomVoice model by default) runs in this process on its
own thread; the N WebSocket clients run in a child process, so their CPU is not counted as the server's.
Each session: session.update (audio "websocket"), then `--utterances` times: the text word by word,
text.flush, every binary frame until utterance.done. Per N:

- frame jitter, client side: |arrival interval - 80 ms| between consecutive audio frames of an utterance,
  from its 3rd frame on (the first frames leave at once: the 120 ms lead), p50/p99 over every session;
  `underruns` counts intervals over 120 ms (the engine, not the server, was late: the model is shared by
  N streams on this machine's CPU);
- frame jitter, server side: lateness of each paced frame against its schedule, for frames the engine had
  ready in time (voicegate_frame_jitter_seconds, raw values), p50/p99;
- server CPU: CPU time of the event-loop thread (everything but the engine thread and torch's threads),
  per session (% of one core) and per 80 ms frame sent (target <= 1 ms). A frame costs a few loop
  wake-ups (engine hand-over, pacing timer); `machine.loop_wake_cpu_us` is what one costs here;
- with `--buffered-ms` (a second pass): the server's start buffer holds each utterance until it is fully
  generated, so frame timing no longer depends on the model keeping up: jitter of the server alone;
- first audio excluding model time: `audio.first.latency_ms - audio.first.model_ms` (server side: text in
  -> engine frame ready is the model's; the rest is ours), and client side: first audio frame received
  - text sent - model_ms; p50/p95.

Barge-in latency (mic onset -> last speech frame) is measured through this same server by bench/bargein.py.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import logging
import multiprocessing as mp
import platform
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

TEXT = "Hello there! This is one of many sessions speaking at once, to measure the server. "


# ---- clients (child process) ------------------------------------------------------------------------

async def _one_session(url: str, utterances: int, text: str, start: asyncio.Event) -> dict[str, Any]:
    import websockets

    out: dict[str, Any] = {"utterances": []}
    async with websockets.connect(url, max_size=2**22) as ws:
        created = json.loads(await ws.recv())
        await ws.send(json.dumps({"type": "session.update", "audio": "websocket", "voice": created["voices"][0]}))
        await start.wait()
        for i in range(utterances):
            if i:
                await asyncio.sleep(0.3)  # the listener's buffer drains: each utterance starts from silence
            rec: dict[str, Any] = {"frames": [], "events": {}}
            rec["sent"] = time.monotonic()
            for word in text.split(" "):
                await ws.send(json.dumps({"type": "text.append", "text": word + " "}))
            await ws.send(json.dumps({"type": "text.flush"}))
            while True:
                data = await ws.recv()
                now = time.monotonic()
                if isinstance(data, bytes):
                    rec["frames"].append(now)
                    continue
                evt = json.loads(data)
                if evt["type"] in ("audio.first", "utterance.done", "utterance.interrupted", "error"):
                    rec["events"][evt["type"]] = evt
                if evt["type"] in ("utterance.done", "utterance.interrupted", "error"):
                    break
            out["utterances"].append(rec)
    return out


async def _clients(url: str, n: int, utterances: int, text: str) -> list[dict[str, Any]]:
    start = asyncio.Event()
    tasks = [asyncio.create_task(_one_session(url, utterances, text, start)) for _ in range(n)]
    await asyncio.sleep(0.5)  # every session created and configured
    start.set()
    return await asyncio.gather(*tasks)


def _client_process(url: str, n: int, utterances: int, text: str, conn: Any) -> None:
    conn.send(asyncio.run(_clients(url, n, utterances, text)))
    conn.close()


# ---- server (this process) --------------------------------------------------------------------------

class _RawHistogram:
    """Stands in for a Histogram: keeps every observed value."""

    def __init__(self) -> None:
        self.values: list[float] = []

    def observe(self, value: float) -> None:
        self.values.append(value)


class _ServerThread:
    def __init__(self, engine: Any, name: str, start_buffer_ms: float = 0.0, engine_nice: int = 5) -> None:
        from agent.server.app import Server
        from agent.settings import ServerSettings, SessionSettings

        self.loop = asyncio.new_event_loop()
        settings = ServerSettings(port=0, max_sessions=1000, engine_nice=engine_nice, session=SessionSettings(
            max_outgoing_bytes=2**24, start_buffer_ms=start_buffer_ms))
        self.server = Server(engine, settings, model_name=name)
        self.jitter = _RawHistogram()
        self.server.metrics.frame_jitter = self.jitter  # type: ignore[assignment]
        self.thread_id = 0
        ready = threading.Event()

        def run() -> None:
            asyncio.set_event_loop(self.loop)
            self.thread_id = threading.get_ident()
            self.loop.run_until_complete(self.server.start())
            ready.set()
            self.loop.run_forever()

        self.thread = threading.Thread(target=run, name="bench-server-loop", daemon=True)
        self.thread.start()
        ready.wait(30)

    def cpu_s(self) -> float:
        return time.clock_gettime(time.pthread_getcpuclockid(self.thread_id))

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self.server.shutdown(), self.loop).result(60)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


def wake_cost_us(n: int = 300) -> float:
    """CPU time one event-loop sleep/wake (asyncio.sleep(1 ms)) costs on this machine (a VM can charge a lot)."""
    async def run() -> float:
        start = time.thread_time()
        for _ in range(n):
            await asyncio.sleep(0.001)
        return (time.thread_time() - start) / n * 1e6

    return round(asyncio.run(run()), 1)


def _pct(values: list[float], q: float) -> float | None:
    return round(float(np.percentile(np.asarray(values), q)), 3) if values else None


def bench_sessions(model: Any, name: str, n: int, utterances: int, text: str,
                   start_buffer_ms: float = 0.0, engine_nice: int = 5) -> dict[str, Any]:
    from tts_engine import Engine, EngineSettings

    engine = Engine(model, EngineSettings(max_streams=max(1, n)))
    srv = _ServerThread(engine, name, start_buffer_ms, engine_nice)
    url = f"ws://127.0.0.1:{srv.server.port}/v1/session"
    try:
        # warm-up: one utterance through the same path (prefix cache, first-call costs)
        asyncio.run(_clients(url, 1, 1, "Warm up. "))
        srv.jitter.values.clear()
        cpu0, wall0, proc0 = srv.cpu_s(), time.monotonic(), time.process_time()
        steps0, batches0 = engine.scheduler.steps, len(engine.scheduler.batch_sizes)
        parent, child = mp.get_context("spawn").Pipe()
        proc = mp.get_context("spawn").Process(target=_client_process, args=(url, n, utterances, text, child))
        proc.start()
        sessions = parent.recv()
        proc.join(30)
        wall, cpu, proc_cpu = time.monotonic() - wall0, srv.cpu_s() - cpu0, time.process_time() - proc0
        batches = engine.scheduler.batch_sizes[batches0:]
        steps = engine.scheduler.steps - steps0
    finally:
        srv.stop()
        engine.close()

    intervals, underruns, frames, overhead_srv, overhead_cli, latency, model_ms = [], 0, 0, [], [], [], []
    ended = {}
    for session in sessions:
        for utt in session["utterances"]:
            times = utt["frames"]
            frames += len(times)
            for a, b in itertools.pairwise(times[2:]):
                gap = (b - a) * 1000.0
                if gap > 120.0:
                    underruns += 1
                else:
                    intervals.append(abs(gap - 80.0))
            first = utt["events"].get("audio.first")
            end = next((e for k, e in utt["events"].items() if k != "audio.first"), {})
            ended[end.get("ended_by") or end.get("reason") or end.get("code")] = \
                ended.get(end.get("ended_by") or end.get("reason") or end.get("code"), 0) + 1
            if first is not None:
                latency.append(first["latency_ms"])
                model_ms.append(first["model_ms"])
                overhead_srv.append(first["latency_ms"] - first["model_ms"])
                if times:
                    overhead_cli.append((times[0] - utt["sent"]) * 1000.0 - first["model_ms"])
    audio_s = frames * 0.08
    return {
        "sessions": n, "start_buffer_ms": start_buffer_ms, "engine_nice": engine_nice,
        "utterances": sum(len(s["utterances"]) for s in sessions), "ended": ended,
        "frames": frames, "audio_s": round(audio_s, 2), "wall_s": round(wall, 2),
        "frame_jitter_client_ms": {"p50": _pct(intervals, 50), "p99": _pct(intervals, 99),
                                   "intervals": len(intervals), "underruns": underruns},
        "frame_jitter_server_ms": {"p50": _pct([v * 1e3 for v in srv.jitter.values], 50),
                                   "p99": _pct([v * 1e3 for v in srv.jitter.values], 99),
                                   "frames": len(srv.jitter.values)},
        "server_cpu": {"loop_cpu_s": round(cpu, 3),
                       "per_session_pct_of_core": round(100.0 * cpu / wall / n, 3),
                       "ms_per_80ms_frame": round(1000.0 * cpu / frames, 3) if frames else None,
                       "process_cpu_s": round(proc_cpu, 2)},
        "first_audio_ms": {"p50": _pct(latency, 50), "p95": _pct(latency, 95)},
        "first_audio_model_ms": {"p50": _pct(model_ms, 50), "p95": _pct(model_ms, 95)},
        "first_audio_excl_model_ms": {"server_p50": _pct(overhead_srv, 50), "server_p95": _pct(overhead_srv, 95),
                                      "client_p50": _pct(overhead_cli, 50), "client_p95": _pct(overhead_cli, 95)},
        "engine": {"steps": steps, "mean_batch": round(float(np.mean(batches)), 2) if batches else None,
                   # 1.0: every session's audio flowed at real time from start to end; less: gaps (engine late)
                   "realtime_ratio": round(audio_s / n / wall, 3) if wall else None},
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sessions", default="1,8,32", help="comma-separated session counts")
    parser.add_argument("--utterances", type=int, default=2, help="utterances per session")
    parser.add_argument("--text", default=TEXT)
    parser.add_argument("--model", help="checkpoint directory (default: a tiny random CustomVoice one)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--engine-nice", type=int, default=5, help="ServerSettings.engine_nice")
    parser.add_argument("--buffered-ms", type=float, default=4000.0,
                        help="also run with this start buffer (0: skip): the engine generates each utterance "
                             "before it plays, so the jitter is the server's alone")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)

    import torch

    from tts_engine import load_model

    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = args.model
        if model_dir is None:
            from tts_engine import make_checkpoint

            model_dir = str(make_checkpoint(Path(tmp) / "tiny", "tiny", "custom_voice", 0))
        model = load_model(model_dir, device=args.device)
        name = "tiny" if args.model is None else args.model
        buffers = [0.0] + ([args.buffered_ms] if args.buffered_ms > 0 else [])
        runs = [bench_sessions(model, name, int(n), args.utterances, args.text, buffer, args.engine_nice)
                for buffer in buffers for n in args.sessions.split(",")]
    report = {"bench": "server", "model": args.model or "tiny (random)", "device": str(model.device),
              "machine": {"cpus": mp.cpu_count(), "python": platform.python_version(),
                          "loop_wake_cpu_us": wake_cost_us()},
              "text_chars": len(args.text), "runs": runs}
    json.dump(report, sys.stdout, indent=2)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
