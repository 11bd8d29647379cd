"""Wyoming speech-to-text latency (JSON on stdout), measured at the client as Home Assistant sees it.

    python -m bench.wyoming_stt --model CHECKPOINT_DIR [--stt-model WHISPER_DIR] [--trials 5] [--silence-ms 700]

Each trial streams one espeak-ng sentence at real time in 100 ms chunks, then `--silence-ms` of silence (the
pause after which Home Assistant's VAD ends a command), then `audio-stop`, and times `audio-stop` ->
`transcript`. Three modes, interleaved trial by trial so the machine's load hits them alike:
- legacy: no `transcribe` first, so no partial decodes (only `transcript` comes back);
- streaming: `transcribe` first: `transcript-chunk` partials while audio arrives, gated on speech (a partial
  starts only if the VAD heard speech in the last `PARTIAL_SPEECH_S` of audio);
- streaming_ungated: the same with the gate open (any speech heard so far), as before the gate existed: a
  partial may start in the closing silence, and the final waits for it.
The recognizer is the pinned test model (Whisper tiny.en) unless `--stt-model` names another directory.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import platform
import statistics
import time
from typing import Any

import numpy as np
from wyoming.asr import Transcribe, Transcript
from wyoming.audio import AudioChunk, AudioStart, AudioStop
from wyoming.client import AsyncTcpClient

from agent.wyoming import asr
from bench.speech import RATE, espeak, wer
from bench.stt import SENTENCES
from bench.wyoming import summary

MODES = ("legacy", "streaming", "streaming_ungated")
CHUNK = RATE // 10  # 100 ms


async def one_request(port: int, pcm: np.ndarray, streaming: bool) -> tuple[float, str]:
    """Audio at real time; (audio-stop -> transcript in ms, the transcript's text)."""
    async with AsyncTcpClient("127.0.0.1", port) as client:
        if streaming:
            await client.write_event(Transcribe(language="en").event())
        await client.write_event(AudioStart(rate=RATE, width=2, channels=1).event())
        started = time.perf_counter()
        for i, offset in enumerate(range(0, len(pcm), CHUNK)):
            await client.write_event(AudioChunk(rate=RATE, width=2, channels=1,
                                                audio=pcm[offset:offset + CHUNK].tobytes()).event())
            await asyncio.sleep(max(0.0, started + (i + 1) * 0.1 - time.perf_counter()))
        stop_sent = time.perf_counter()
        await client.write_event(AudioStop().event())
        while True:
            event = await asyncio.wait_for(client.read_event(), 60)
            assert event is not None, "the server closed the connection"
            if Transcript.is_type(event.type):
                return (time.perf_counter() - stop_sent) * 1e3, Transcript.from_event(event).text


async def run(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    from agent.speech_in.faster_whisper import FasterWhisperRecognizer, FasterWhisperSettings
    from agent.speech_in.service import RecognizerService
    from agent.wyoming.handler import WyomingService, WyomingSettings
    from tts_engine import Engine, load_model

    if args.stt_model is None:
        from tests.agent.speech_helpers import test_model_dir

        args.stt_model = str(test_model_dir())
    torch.set_num_threads(1)
    engine = Engine(load_model(args.model, device="cpu"))
    stt = RecognizerService(FasterWhisperRecognizer(FasterWhisperSettings(model=args.stt_model,
                                                                          cpu_threads=args.threads)))
    service = WyomingService(engine, WyomingSettings(uri="tcp://127.0.0.1:0"), model_name=args.model,
                             recognizer=stt)
    await service.start()
    assert service.port is not None
    silence = np.zeros(round(args.silence_ms * RATE / 1000), np.int16)
    speech = [(text, np.concatenate([espeak(text), silence])) for text in SENTENCES[:args.trials]]
    gate = asr.PARTIAL_SPEECH_S
    latencies: dict[str, list[float]] = {mode: [] for mode in MODES}
    errors: dict[str, list[float]] = {mode: [] for mode in MODES}
    load_before = os.getloadavg()[0]
    try:
        await one_request(service.port, speech[0][1], streaming=True)  # warm-up
        for text, pcm in speech:
            for mode in MODES:
                asr.PARTIAL_SPEECH_S = math.inf if mode == "streaming_ungated" else gate
                ms, heard = await one_request(service.port, pcm, streaming=mode != "legacy")
                latencies[mode].append(ms)
                errors[mode].append(wer(text, heard))
    finally:
        asr.PARTIAL_SPEECH_S = gate
        await service.stop()
        await stt.close()
        engine.close()
    return {"bench": "wyoming_stt", "stt_model": os.path.basename(args.stt_model.rstrip("/")),
            "stt_threads": args.threads, "trials": len(speech), "silence_ms": args.silence_ms,
            "audio_stop_to_transcript_ms": {mode: summary(v) for mode, v in latencies.items()},
            "mean_wer": {mode: round(statistics.mean(v), 3) for mode, v in errors.items()},
            "decode_s": round(stt.stats.decode_s, 2), "requests_done": stt.stats.done,
            "machine": platform.machine(), "cpus": os.cpu_count(), "python": platform.python_version(),
            "load_avg_1m": [round(load_before, 2), round(os.getloadavg()[0], 2)]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="TTS checkpoint directory (the Wyoming server needs one)")
    parser.add_argument("--stt-model", help="CTranslate2 Whisper directory (default: the pinned test model)")
    parser.add_argument("--threads", type=int, default=2, help="recognizer CPU threads")
    parser.add_argument("--trials", type=int, default=5, help="sentences, each spoken once per mode")
    parser.add_argument("--silence-ms", type=int, default=700, help="silence before audio-stop")
    args = parser.parse_args()
    print(json.dumps(asyncio.run(run(args))))


if __name__ == "__main__":
    main()
