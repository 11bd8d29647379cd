"""`voicegate serve --stt`: a recognizer that cannot load stops the server before the TTS model loads."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_serve_with_a_missing_stt_model_exits_2_with_one_line() -> None:
    began = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "agent.cli", "serve", "--stt", "faster-whisper:/nonexistent",
                           "--model", "/nonexistent-tts-model"], cwd=ROOT, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert lines == ["error: --stt faster-whisper: no CTranslate2 Whisper model in /nonexistent (model.bin missing)"]
    assert done.stdout == ""
    assert time.monotonic() - began < 60  # no TTS model was loaded (the --model given does not exist either)


def test_serve_with_an_unknown_recognizer_is_a_usage_error() -> None:
    done = subprocess.run([sys.executable, "-m", "agent.cli", "serve", "--stt", "whisper.cpp"], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "unknown recognizer 'whisper.cpp'" in done.stderr
