"""Barge-in latency and outbound frame jitter through the real server, tiny model, real aiortc peers on
127.0.0.1 (JSON on stdout).

    python -m bench.bargein [--trials 10] [--buffers low_latency,aiortc] [--model DIR]

One trial: a session over the WebSocket (session.update audio "webrtc", webrtc.offer/answer), long text
in, speech frames out; once the client has heard `--speak-after` s of speech its mic track plays
tests/fixtures/speech/speech_48k.wav (after silence). Times are time.monotonic() of this one process:
- onset: the first mic frame holding the WAV leaves the client's mic track recv() (RtcClient.mic_onsets);
- onset_at_server: that frame (by pts) comes out of the server's receive path (RtcPeer.mic_stats.arrivals);
- decision: the VAD decided speech_started: the arrival of the mic frame that completed min_speech_ms
  (RtcPeer.mic_stats.events); the session's on_speech then cancels the engine stream, flushes the track and
  sends utterance.interrupted in that same tick (on_speech_handler_ms: how long that took);
- last audio sent / received: the server's last frame carrying utterance audio (the fade) leaves the
  track's recv() / reaches the client (matched by pts; the client's receive buffer releases each packet on
  arrival, so this is network arrival: a browser adds its jitter buffer and output, ~30-50 ms + 30 ms);
- last non-silent: the last frame with any non-zero sample the client received (idle frames are exact
  zeros). The tiny model on a busy CPU can run slower than real time: its audio then has gaps (reported as
  engine_underrun_frames), and the last non-silent frame may precede the decision.
Reported p50/p95 over trials, per server receive buffer ("low_latency" = ours, "aiortc" = its prefetch 4):
  decision_ms (onset -> decision), decision_after_arrival_ms (onset_at_server -> decision; target
  <= min_speech_ms + 40), last_audio_sent_ms / last_audio_received_ms / last_nonsilent_received_ms (from
  the onset), stop_sent_ms / stop_received_ms (from the decision).
Jitter: client-side arrival intervals of the outbound track, |interval - 20 ms| p50/p99 over all trials
(idle silence and speech), and the server-side recv() lateness against its absolute schedule.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import websockets

from agent.media.audio import read_wav
from agent.media.rtc import RtcSettings
from agent.media.vad import SPEECH_STARTED, VadSettings
from bench.rtc_client import RtcClient

SPEECH_WAV = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "speech" / "speech_48k.wav"
TEXT = ("Thank you for calling. I am going to read you a rather long answer, so that there is plenty of "
        "speech still playing when you decide to interrupt me somewhere in the middle of this sentence, "
        "and then some more words after that, just to be sure the reply does not end on its own.")


class EventLog:
    """Reads a session WebSocket in a task: every event with its arrival time."""

    def __init__(self, ws: Any) -> None:
        self.ws = ws
        self.events: list[tuple[float, dict[str, Any]]] = []
        self._new = asyncio.Event()
        self._task = asyncio.get_running_loop().create_task(self._read())

    async def _read(self) -> None:
        async for data in self.ws:
            if isinstance(data, str):
                self.events.append((time.monotonic(), json.loads(data)))
                self._new.set()

    async def wait_for(self, kind: str, timeout: float = 10.0, **match: Any) -> tuple[float, dict[str, Any]]:
        deadline = time.monotonic() + timeout
        seen = 0
        while True:
            for t, ev in self.events[seen:]:
                if ev.get("type") == "error":
                    raise RuntimeError(f"server error: {ev}")
                if ev.get("type") == kind and all(ev.get(k) == v for k, v in match.items()):
                    return t, ev
            seen = len(self.events)
            self._new.clear()
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"no {kind} within {timeout} s; got {[e['type'] for _, e in self.events]}")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._new.wait(), left)

    def send(self, kind: str, **fields: Any) -> Any:
        return self.ws.send(json.dumps({"type": kind, **fields}))

    async def close(self) -> None:
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError, websockets.ConnectionClosed):
            await self._task


@dataclass
class Trial:
    interrupted: dict[str, Any] | None = None
    events: list[str] = field(default_factory=list)
    onset: float = float("nan")
    onset_at_server: float = float("nan")
    decision: float = float("nan")
    handled: float = float("nan")
    interrupted_received: float = float("nan")
    first_loud: float = float("nan")
    last_loud: float = float("nan")
    last_audio_sent: float = float("nan")  # the server's last frame carrying utterance audio left recv()
    last_audio_received: float = float("nan")  # ... and reached the client (matched by pts)
    underruns: int = 0  # server frames that ran short of engine audio (the engine slower than real time)
    queued_at_flush_ms: float = 0.0  # audio in the track when the barge-in flushed it (0: a gap in the audio)
    silent_after: bool = False  # nothing loud reached the client 200 ms after the decision
    intervals_ms: list[float] = field(default_factory=list)
    lateness_ms: list[float] = field(default_factory=list)


async def barge_in_trial(server: Any, speech: np.ndarray, speak_after: float = 0.5, voice: str | None = None,
                         text: str = TEXT, settle: float = 0.8) -> Trial:
    """One session: text in, audio out, then the client's mic plays `speech` (48 kHz)."""
    out = Trial()
    url = f"ws://127.0.0.1:{server.port}/v1/session"
    client = RtcClient()
    async with websockets.connect(url) as ws:
        log = EventLog(ws)
        try:
            _, created = await log.wait_for("session.created")
            update: dict[str, Any] = {"audio": "webrtc"}
            if voice:
                update["voice"] = voice
            await log.send("session.update", **update)
            await log.send("webrtc.offer", sdp=await client.offer())
            _, answer = await log.wait_for("webrtc.answer")
            await client.accept(answer["sdp"])
            await client.connected()
            peer = server.sessions[created["session"]].peer
            await log.send("text.append", text=text)
            await log.send("text.flush")
            deadline = time.monotonic() + 20.0
            while client.last_loud_t() is None:  # first speech frame heard
                if time.monotonic() > deadline:
                    raise TimeoutError("no speech received")
                await asyncio.sleep(0.005)
            out.first_loud = next(r.t for r in client.received if r.peak > 64)
            await asyncio.sleep(speak_after)
            client.speak(speech, "speech")
            t_int, ev = await log.wait_for("utterance.interrupted", timeout=5.0)
            out.interrupted, out.interrupted_received = ev, t_int
            await asyncio.sleep(settle)
            out.events = [e["type"] for _, e in log.events]
            out.onset = client.mic_onsets.get("speech", float("nan"))
            decisions = [(t, t_done) for event, t, t_done in peer.mic_stats.events if event == SPEECH_STARTED]
            out.decision, out.handled = decisions[0] if decisions else (float("nan"), float("nan"))
            onset_pts = client.mic_onset_pts.get("speech")
            out.onset_at_server = next((t for pts, t in peer.mic_stats.arrivals if pts == onset_pts), float("nan"))
            loud = [r.t for r in client.received if r.peak > 0]
            out.last_loud = loud[-1] if loud else float("nan")
            out.silent_after = all(r.peak == 0 for r in client.frames_after(out.decision + 0.2))
            stats = peer.outbound.stats
            out.last_audio_sent = stats.last_audio_t
            out.last_audio_received = next((r.t for r in client.received if r.pts == stats.last_audio_pts),
                                           float("nan"))
            out.underruns = stats.underruns
            out.queued_at_flush_ms = stats.last_flush_ms if stats.flushes else 0.0
            out.intervals_ms = list(np.diff([r.t for r in client.received]) * 1000.0)
            out.lateness_ms = list(peer.outbound.stats.lateness_ms)
        finally:
            await log.close()
            await client.close()
    return out


def _pct(values: list[float], q: float) -> float | None:
    clean = [v for v in values if np.isfinite(v)]
    return round(float(np.percentile(clean, q)), 1) if clean else None


def summarize(trials: list[Trial]) -> dict[str, Any]:
    def stats(values: list[float]) -> dict[str, Any]:
        return {"p50": _pct(values, 50), "p95": _pct(values, 95), "n": int(np.isfinite(values).sum())}

    ms = 1000.0
    playing = [t for t in trials if t.queued_at_flush_ms > 0]
    intervals = np.concatenate([t.intervals_ms for t in trials]) if trials else np.zeros(0)
    lateness = np.concatenate([t.lateness_ms for t in trials]) if trials else np.zeros(0)
    deviation = np.abs(intervals - 20.0)
    return {
        "trials": len(trials),
        "barge_in_reason_ok": sum(1 for t in trials if t.interrupted and t.interrupted["reason"] == "barge_in"),
        "silent_200ms_after_decision": sum(t.silent_after for t in trials),
        "decision_ms": stats([(t.decision - t.onset) * ms for t in trials]),
        "onset_transport_ms": stats([(t.onset_at_server - t.onset) * ms for t in trials]),
        "decision_after_arrival_ms": stats([(t.decision - t.onset_at_server) * ms for t in trials]),
        "last_audio_sent_ms": stats([(t.last_audio_sent - t.onset) * ms for t in trials]),
        "last_audio_received_ms": stats([(t.last_audio_received - t.onset) * ms for t in trials]),
        "last_nonsilent_received_ms": stats([(t.last_loud - t.onset) * ms for t in trials]),
        # from the decision; only trials where audio was queued when the barge-in flushed (not in a gap)
        "playing_at_decision": len(playing),
        "stop_sent_ms": stats([(t.last_audio_sent - t.decision) * ms for t in playing]),
        "stop_received_ms": stats([(t.last_audio_received - t.decision) * ms for t in playing]),
        "engine_underrun_frames": stats([float(t.underruns) for t in trials]),
        "on_speech_handler_ms": stats([(t.handled - t.decision) * ms for t in trials]),
        "interrupted_event_after_decision_ms": stats([(t.interrupted_received - t.decision) * ms for t in trials]),
        "frame_jitter_ms": {"p50": _pct(list(deviation), 50), "p99": _pct(list(deviation), 99),
                            "interval_p50": _pct(list(intervals), 50), "interval_p99": _pct(list(intervals), 99),
                            "frames": int(intervals.size)},
        "server_recv_lateness_ms": {"p50": _pct(list(lateness), 50), "p99": _pct(list(lateness), 99)},
    }


async def run(args: argparse.Namespace) -> dict[str, Any]:
    from agent.server.app import Server
    from agent.settings import ServerSettings
    from tts_engine import Engine, EngineSettings, load_model, make_checkpoint

    model_dir = args.model
    tmp = None
    if model_dir is None:
        tmp = tempfile.TemporaryDirectory()
        model_dir = make_checkpoint(Path(tmp.name), "tiny", "custom_voice", 0)
    model = load_model(model_dir, device=args.device)
    speech, rate = read_wav(SPEECH_WAV)
    assert rate == 48000
    vad = VadSettings(min_speech_ms=args.min_speech_ms)
    report: dict[str, Any] = {"model": "tiny" if args.model is None else str(args.model), "trials": args.trials,
                              "cpus": os.cpu_count(), "loadavg_1m_before": round(os.getloadavg()[0], 2),
                              "min_speech_ms": vad.min_speech_ms, "aggressiveness": vad.aggressiveness,
                              "target_decision_after_arrival_ms": vad.min_speech_ms + 40, "buffers": {}}
    with Engine(model, EngineSettings(max_streams=4)) as engine:
        for buffer in args.buffers.split(","):
            rtc = RtcSettings(host_addresses=["127.0.0.1"], receive_buffer=buffer)
            server = Server(engine, ServerSettings(port=0), model_name="bench", rtc_settings=rtc, vad_defaults=vad)
            await server.start()
            trials = []
            try:
                await barge_in_trial(server, speech, voice=args.voice)  # warm-up, not counted
                for _ in range(args.trials):
                    trials.append(await barge_in_trial(server, speech, speak_after=args.speak_after,
                                                       voice=args.voice))
            finally:
                await server.shutdown()
            report["buffers"][buffer] = summarize(trials)
    if tmp is not None:
        tmp.cleanup()
    report["loadavg_1m_after"] = round(os.getloadavg()[0], 2)
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=10)
    parser.add_argument("--buffers", default="low_latency,aiortc", help="server receive buffers to compare")
    parser.add_argument("--min-speech-ms", type=int, default=VadSettings().min_speech_ms)
    parser.add_argument("--speak-after", type=float, default=0.5, help="s of received speech before the mic talks")
    parser.add_argument("--model", default=None, help="checkpoint dir (default: a fresh tiny custom_voice one)")
    parser.add_argument("--voice", default=None)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    import torch

    torch.set_num_threads(1)
    print(json.dumps(asyncio.run(run(args)), indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
