"""VoiceActivityDetector on the committed espeak-ng WAVs (tests/fixtures/make_speech.sh) and synthetic signals.

Its cost per frame (it runs on the event loop) is measured by `python -m bench.vad`, not asserted here."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from agent.media.audio import read_wav
from agent.media.vad import SPEECH_STARTED, SPEECH_STOPPED, VadSettings, VoiceActivityDetector

SPEECH = Path(__file__).resolve().parents[1] / "fixtures" / "speech"
RATE = 16000
FRAME = 320  # 20 ms at 16 kHz


def wav16k(name: str) -> np.ndarray:
    pcm, rate = read_wav(SPEECH / name)
    assert rate == RATE
    return pcm


def silence(seconds: float) -> np.ndarray:
    return np.zeros(round(seconds * RATE), np.int16)


def feed(vad: VoiceActivityDetector, pcm: np.ndarray, chunk: int = FRAME, t0: float = 0.0) -> list[tuple[str, float]]:
    """Feed `pcm` in chunks, each stamped with the time of its last sample (t0 = time of sample 0)."""
    events = []
    for start in range(0, len(pcm), chunk):
        piece = pcm[start:start + chunk]
        events += vad.process(piece, t0 + (start + len(piece)) / RATE)
    return events


def test_speech_wav_starts_and_stops() -> None:
    speech = wav16k("speech_16k.wav")
    settings = VadSettings()
    vad = VoiceActivityDetector(settings)
    lead, tail = 0.5, 1.0
    events = feed(vad, np.concatenate([silence(lead), speech, silence(tail)]))
    assert [e for e, _ in events] == [SPEECH_STARTED, SPEECH_STOPPED]
    started, stopped = events[0][1], events[1][1]
    # decided min_speech_ms after the onset (webrtcvad flags this clean onset from its first frame)
    assert started == pytest.approx(lead + settings.min_speech_ms / 1000, abs=0.041)
    assert vad.onset_t == pytest.approx(lead, abs=0.041)
    speech_end = lead + len(speech) / RATE
    assert speech_end + settings.hangover_ms / 1000 - 0.02 <= stopped <= speech_end + settings.hangover_ms / 1000 + 0.1
    assert not vad.speaking


def test_pause_shorter_than_hangover_keeps_speaking() -> None:
    speech = wav16k("speech_16k.wav")
    vad = VoiceActivityDetector(VadSettings(hangover_ms=400))
    events = feed(vad, np.concatenate([silence(0.3), speech, silence(0.2), speech, silence(0.6)]))
    assert [e for e, _ in events] == [SPEECH_STARTED, SPEECH_STOPPED]


@pytest.mark.parametrize("aggressiveness", [2, 3])
def test_silence_and_room_noise_do_not_trigger(aggressiveness: int) -> None:
    """A mic's noise floor is there from the first frame: pink noise at about -34 dBFS, 3 s, never speech."""
    noise = wav16k("noise_16k.wav")
    vad = VoiceActivityDetector(VadSettings(aggressiveness=aggressiveness))
    assert feed(vad, silence(2.0)) == []
    vad = VoiceActivityDetector(VadSettings(aggressiveness=aggressiveness))
    assert feed(vad, np.concatenate([noise, noise, noise])) == []
    assert not vad.speaking


def test_speech_over_room_noise_triggers() -> None:
    noise = np.concatenate([wav16k("noise_16k.wav")] * 4).astype(np.int32)
    speech = wav16k("speech_16k.wav")
    noise[RATE:RATE + len(speech)] += speech
    mix = np.clip(noise, -32768, 32767).astype(np.int16)
    events = feed(VoiceActivityDetector(VadSettings()), mix)
    assert [e for e, _ in events] == [SPEECH_STARTED, SPEECH_STOPPED]
    assert events[0][1] == pytest.approx(1.0 + 0.12, abs=0.061)


def test_noise_startup_is_why_min_speech_defaults_to_120ms() -> None:
    """webrtcvad calls the first 4 frames of a fresh detector's input speech, noise included:
    3 frames (60 ms) would trigger on them."""
    noise = wav16k("noise_16k.wav")
    vad = VoiceActivityDetector(VadSettings(min_speech_ms=60))
    events = feed(vad, noise)
    assert events and events[0][0] == SPEECH_STARTED
    assert events[0][1] < 0.1


def test_a_knock_does_not_trigger() -> None:
    """40 ms of loud noise on a -60 dBFS floor: webrtcvad's overhang flags a few more frames, the energy gate
    drops them."""
    rng = np.random.default_rng(1)
    audio = (rng.standard_normal(3 * RATE) * 30).astype(np.int16)
    audio[2 * RATE:2 * RATE + 640] += (rng.standard_normal(640) * 8000).astype(np.int16)
    assert feed(VoiceActivityDetector(VadSettings()), audio) == []


def tone(freq: float, seconds: float, dbfs: float = -12.0) -> np.ndarray:
    t = np.arange(round(seconds * RATE)) / RATE
    return (np.sin(2 * np.pi * freq * t) * 32767 * 10 ** (dbfs / 20)).astype(np.int16)


@pytest.mark.parametrize("freq", [440.0, 1000.0, 2500.0])
def test_tones_do_not_trigger(freq: float) -> None:
    vad = VoiceActivityDetector(VadSettings())
    assert feed(vad, np.concatenate([silence(0.5), tone(freq, 1.5), silence(0.5)])) == []


def test_tone_gate_is_what_rejects_a_1khz_tone() -> None:
    """Without the tonality gate webrtcvad calls a steady 1 kHz tone speech."""
    vad = VoiceActivityDetector(VadSettings(max_tonality=None))
    events = feed(vad, np.concatenate([silence(0.5), tone(1000.0, 1.0)]))
    assert [e for e, _ in events] == [SPEECH_STARTED]


def test_quiet_signal_is_gated() -> None:
    speech = wav16k("speech_16k.wav")
    whisper = (speech.astype(np.float32) * 10 ** (-55 / 20)).astype(np.int16)  # -58 dBFS peak
    assert feed(VoiceActivityDetector(VadSettings()), np.concatenate([silence(0.5), whisper])) == []


@pytest.mark.parametrize("min_speech_ms,hangover_ms", [(60, 100), (120, 300), (200, 500)])
def test_min_speech_and_hangover_timing(min_speech_ms: int, hangover_ms: int) -> None:
    """Bursts of loud speech frames: a burst shorter than min_speech_ms never starts; the start is decided on
    the frame that completes min_speech_ms, the stop on the frame that completes hangover_ms of silence."""
    loud = wav16k("speech_16k.wav")[3 * FRAME:33 * FRAME]  # 30 frames webrtcvad calls speech
    settings = VadSettings(min_speech_ms=min_speech_ms, hangover_ms=hangover_ms)
    short = loud[:(settings.start_frames - 1) * FRAME]
    vad = VoiceActivityDetector(settings)
    assert feed(vad, np.concatenate([silence(0.4), short, silence(0.4)])) == []
    vad = VoiceActivityDetector(settings)
    lead = 0.4
    events = feed(vad, np.concatenate([silence(lead), loud, silence(1.0)]))
    assert [e for e, _ in events] == [SPEECH_STARTED, SPEECH_STOPPED]
    assert events[0][1] == pytest.approx(lead + settings.start_frames * 0.020, abs=1e-6)
    end = lead + len(loud) / RATE
    assert events[1][1] == pytest.approx(end + settings.stop_frames * 0.020, abs=1e-6)


def test_chunking_does_not_change_decisions() -> None:
    audio = np.concatenate([silence(0.3), wav16k("speech_16k.wav"), silence(0.8)])
    reference = feed(VoiceActivityDetector(VadSettings()), audio)
    rng = np.random.default_rng(0)
    vad = VoiceActivityDetector(VadSettings())
    events, start = [], 0
    while start < len(audio):
        n = int(rng.integers(1, 1500))
        piece = audio[start:start + n]
        start += len(piece)
        events += vad.process(piece.tobytes() if n % 2 else piece, start / RATE)
    assert [e for e, _ in events] == [e for e, _ in reference]
    assert [t for _, t in events] == pytest.approx([t for _, t in reference], abs=1e-9)


def test_other_rates_and_frame_sizes() -> None:
    speech = wav16k("speech_16k.wav")
    up = np.repeat(speech, 3)  # crude 48 kHz (nearest neighbour): still clearly speech
    settings = VadSettings(sample_rate=48000, frame_ms=30)
    vad = VoiceActivityDetector(settings)
    events = []
    audio = np.concatenate([np.zeros(48000 // 2, np.int16), up, np.zeros(48000, np.int16)])
    for start in range(0, len(audio), 960):
        events += vad.process(audio[start:start + 960], (start + 960) / 48000)
    assert [e for e, _ in events] == [SPEECH_STARTED, SPEECH_STOPPED]


def test_bad_input_and_settings() -> None:
    vad = VoiceActivityDetector()
    with pytest.raises(TypeError):
        vad.process(np.zeros(320, np.float32), 0.0)
    assert vad.process(b"\x00" * 100, 0.0) == []  # partial frame is buffered
    for bad in (dict(aggressiveness=4), dict(frame_ms=25), dict(sample_rate=44100), dict(min_speech_ms=-1)):
        with pytest.raises(ValueError):
            VadSettings(**bad)

