"""`voicegate synth` end to end on a tiny random checkpoint (real plumbing, noise audio)."""

import json
import subprocess
import sys
import wave
from pathlib import Path

import numpy as np
import pytest


def _voicegate(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "agent.cli.main", *args], capture_output=True, text=True, timeout=300)


def test_synth_writes_24k_wav_of_whole_frames_and_int64_codes(tiny_checkpoint, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    ckpt = tiny_checkpoint("custom_voice")
    wav_path, codes_path = tmp_path / "x.wav", tmp_path / "codes.npy"
    proc = _voicegate("synth", "--model", str(ckpt), "--text", "Hello there.", "--out", str(wav_path),
                      "--codes-out", str(codes_path), "--greedy")
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stderr.strip().splitlines()[-1])
    with wave.open(str(wav_path)) as wav:
        assert (wav.getframerate(), wav.getnchannels(), wav.getsampwidth()) == (24000, 1, 2)
        n = wav.getnframes()
    codes = np.load(codes_path)
    assert codes.dtype == np.int64 and codes.ndim == 2 and codes.shape[1] == 16
    assert n == codes.shape[0] * 1920 and n > 0
    assert report["frames"] == codes.shape[0] and report["ended_by"] == "eos"
    assert codes[:, 0].max() < 2048 and codes.min() >= 0


def test_synth_reports_bad_input_in_one_line(tiny_checkpoint, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    ckpt = tiny_checkpoint("custom_voice")
    proc = _voicegate("synth", "--model", str(ckpt), "--text", "Hi.", "--speaker", "nobody",
                      "--out", str(tmp_path / "x.wav"))
    assert proc.returncode == 2 and "unknown speaker 'nobody'" in proc.stderr
    assert "Traceback" not in proc.stderr


@pytest.mark.parametrize("kind", ["voice_design"])
def test_make_checkpoint_cli(tmp_path: Path, kind: str) -> None:
    proc = _voicegate("make-checkpoint", str(tmp_path / "c"), "--size", "tiny", "--kind", kind, "--seed", "3")
    assert proc.returncode == 0, proc.stderr
    assert json.loads((tmp_path / "c" / "config.json").read_text())["tts_model_type"] == kind
