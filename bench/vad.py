"""VAD benchmark: the cost of `VoiceActivityDetector.process` per 20 ms mic frame (it runs on the event loop,
once per frame of every listener). JSON on stdout.

    python -m bench.vad [--repeats N] [--aggressiveness A]

Input: the committed espeak-ng speech and noise WAVs (tests/fixtures/speech, 16 kHz), fed frame by frame as the
RTC peer does. Reported: microseconds per frame (median and worst of the repeats, and p99 over single frames
of the median repeat), and whether the median stays under the 1 ms budget (a loop tick the paced audio and
barge-in share; measured 5-50 us per frame on one CPU core).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np

from agent.media.audio import read_wav
from agent.media.vad import VadSettings, VoiceActivityDetector

FIXTURES = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "speech"
BUDGET_US = 1000.0


def _audio(settings: VadSettings) -> np.ndarray:
    parts = []
    for name in ("speech_16k.wav", "noise_16k.wav"):
        pcm, rate = read_wav(FIXTURES / name)
        if rate != settings.sample_rate:
            raise SystemExit(f"{name} is {rate} Hz; the benchmark feeds it at {settings.sample_rate} Hz")
        parts.append(pcm)
    return np.concatenate(parts)


def _one_pass(vad: VoiceActivityDetector, audio: np.ndarray, frame: int) -> list[float]:
    """Seconds per frame, each frame stamped with the time of its last sample."""
    costs = []
    for start in range(0, len(audio) - frame + 1, frame):
        t = (start + frame) / vad.settings.sample_rate
        began = time.perf_counter()
        vad.process(audio[start:start + frame], t)
        costs.append(time.perf_counter() - began)
    return costs


def run(repeats: int, aggressiveness: int) -> dict[str, Any]:
    settings = VadSettings(aggressiveness=aggressiveness, sample_rate=16000, frame_ms=20)
    audio = _audio(settings)
    frame = settings.frame_samples
    vad = VoiceActivityDetector(settings)
    _one_pass(vad, audio, frame)  # warm-up
    passes = [_one_pass(vad, audio, frame) for _ in range(repeats)]
    per_pass_us = [sum(costs) / len(costs) * 1e6 for costs in passes]
    median_us = statistics.median(per_pass_us)
    middle = passes[per_pass_us.index(sorted(per_pass_us)[len(per_pass_us) // 2])]
    return {"bench": "vad", "frames_per_pass": len(passes[0]), "repeats": repeats, "aggressiveness": aggressiveness,
            "per_frame_us": {"median": round(median_us, 2), "worst_pass": round(max(per_pass_us), 2),
                             "p99_single_frame": round(float(np.percentile(np.asarray(middle) * 1e6, 99)), 2)},
            "budget_us": BUDGET_US, "within_budget": median_us < BUDGET_US,
            "machine": platform.machine(), "python": platform.python_version()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--aggressiveness", type=int, default=VadSettings().aggressiveness)
    args = parser.parse_args()
    print(json.dumps(run(args.repeats, args.aggressiveness)))


if __name__ == "__main__":
    main()
