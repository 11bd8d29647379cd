"""TurnCutter: synthetic frames with chosen speech flags (exact boundaries), then the committed espeak-ng WAVs
through the real VAD (tests/fixtures/make_speech.sh)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from agent.media.audio import read_wav
from agent.speech_in.turns import TurnAudio, TurnCutter, TurnEnded, TurnEvent, TurnSettings, TurnStarted
from tests.agent.speech_helpers import FRAME, RATE, silence, vad_frames

SPEECH = Path(__file__).resolve().parents[1] / "fixtures" / "speech"


def numbered(i: int) -> np.ndarray:
    """A frame whose samples all equal its index: where each turn's audio came from is visible."""
    return np.full(FRAME, i, np.int16)


def run(flags: list[bool], settings: TurnSettings | None = None) -> tuple[TurnCutter, list[TurnEvent]]:
    cutter = TurnCutter(settings)
    events: list[TurnEvent] = []
    for i, speech in enumerate(flags):
        events += cutter.push(numbered(i), speech, t=float(i))
    return cutter, events


def of(events: list[TurnEvent], kind: type) -> list:
    return [e for e in events if isinstance(e, kind)]


def test_turn_with_pre_roll_and_end_of_turn() -> None:
    flags = [False] * 20 + [True] * 10 + [False] * 40
    cutter, events = run(flags)
    (started,), (ended,) = of(events, TurnStarted), of(events, TurnEnded)
    # decided on the 6th speech frame (min_speech_ms 120): frame 25, 26 frames = 520 ms in
    assert started.t == 25.0 and started.speech_ms == 400 and started.start_ms == 100
    assert started.turn_id == "turn_1" and started.continues is None
    # ended after 25 silent frames (end_of_turn_ms 500) following the last speech frame (29)
    assert ended.t == 54.0 and ended.end_ms == 1100 and not ended.capped
    assert ended.duration_ms == 1000
    # its audio: pre-roll frames 5..19 (300 ms), speech 20..29, silence 30..54, each frame once, in order
    assert len(ended.pcm) == 50 * FRAME
    assert list(ended.pcm[::FRAME]) == list(range(5, 55))
    assert np.array_equal(np.concatenate([a.pcm for a in of(events, TurnAudio)]), ended.pcm)
    assert not cutter.in_turn


def test_speech_from_the_first_frame_has_a_short_pre_roll() -> None:
    _, events = run([True] * 10 + [False] * 30)
    (started,), (ended,) = of(events, TurnStarted), of(events, TurnEnded)
    assert started.start_ms == 0 and started.speech_ms == 0
    assert ended.pcm[0] == 0 and len(ended.pcm) == 35 * FRAME


def test_pre_roll_zero_starts_at_the_speech_run() -> None:
    _, events = run([False] * 20 + [True] * 10 + [False] * 30, TurnSettings(pre_roll_ms=0))
    (ended,) = of(events, TurnEnded)
    assert ended.start_ms == 400 and ended.pcm[0] == 20


def test_short_bursts_start_no_turn() -> None:
    """5 speech frames (100 ms, under min_speech_ms), repeatedly: webrtcvad's overhang after a knock."""
    _, events = run(([False] * 10 + [True] * 5) * 10 + [False] * 30)
    assert events == []


def test_a_pause_shorter_than_end_of_turn_keeps_the_turn() -> None:
    _, events = run([True] * 10 + [False] * 24 + [True] * 10 + [False] * 25)
    assert len(of(events, TurnEnded)) == 1
    _, events = run([True] * 10 + [False] * 25 + [True] * 10 + [False] * 25)
    ends = of(events, TurnEnded)
    assert [e.turn_id for e in ends] == ["turn_1", "turn_2"]
    # the second turn's pre-roll only reaches back to the end of the first
    assert ends[1].start_ms == ends[0].end_ms


@pytest.mark.parametrize("end_of_turn_ms", [200, 1000])
def test_end_of_turn_is_configurable(end_of_turn_ms: int) -> None:
    _, events = run([True] * 10 + [False] * 100, TurnSettings(end_of_turn_ms=end_of_turn_ms))
    (ended,) = of(events, TurnEnded)
    assert ended.end_ms == 200 + end_of_turn_ms


def test_the_cap_cuts_and_a_new_turn_continues() -> None:
    settings = TurnSettings(max_turn_ms=1000)
    _, events = run([False] * 20 + [True] * 150 + [False] * 30, settings)
    ends = of(events, TurnEnded)
    starts = of(events, TurnStarted)
    assert [e.capped for e in ends] == [True, True, True, False]
    assert all(len(e.pcm) <= 50 * FRAME for e in ends)  # no turn holds more than max_turn_ms
    assert [s.continues for s in starts] == [None, "turn_1", "turn_2", "turn_3"]
    for cut, nxt in zip(ends, starts[1:], strict=False):
        assert nxt.start_ms == cut.end_ms
    # together, the pieces are the audio from the pre-roll to the end, each frame once
    audio = np.concatenate([e.pcm for e in ends])
    assert list(audio[::FRAME]) == list(range(5, 5 + len(audio) // FRAME))
    assert ends[-1].end_ms == (170 + 25) * 20


def test_flush_ends_the_open_turn() -> None:
    cutter, events = run([True] * 10)
    assert cutter.in_turn and not of(events, TurnEnded)
    (ended,) = cutter.flush(t=99.0)
    assert ended.t == 99.0 and len(ended.pcm) == 10 * FRAME and not ended.capped
    assert cutter.flush() == []


def test_bad_frames_and_settings() -> None:
    cutter = TurnCutter()
    with pytest.raises(ValueError, match="320 int16"):
        cutter.push(np.zeros(160, np.int16), True)
    with pytest.raises(ValueError, match="320 int16"):
        cutter.push(np.zeros(320, np.float32), True)
    with pytest.raises(ValueError):
        TurnSettings(max_turn_ms=100)
    with pytest.raises(ValueError):
        TurnSettings(pre_roll_ms=-1)


def feed(pcm: np.ndarray, settings: TurnSettings | None = None) -> list[TurnEvent]:
    cutter = TurnCutter(settings)
    events: list[TurnEvent] = []
    for i, (frame, speech) in enumerate(vad_frames(pcm)):
        events += cutter.push(frame, speech, t=i * 0.02)
    return events


def test_espeak_phrase_is_one_turn_with_all_its_audio() -> None:
    speech, rate = read_wav(SPEECH / "speech_16k.wav")
    assert rate == RATE
    lead = 1.0
    events = feed(np.concatenate([silence(lead), speech, silence(1.0)]))
    (started,), (ended,) = of(events, TurnStarted), of(events, TurnEnded)
    speech_end_ms = (lead * RATE + len(speech)) * 1000 / RATE
    assert started.speech_ms == pytest.approx(lead * 1000, abs=40)  # a clean espeak onset
    assert started.start_ms == pytest.approx(lead * 1000 - 300, abs=40)
    assert speech_end_ms + 500 - 20 <= ended.end_ms <= speech_end_ms + 500 + 100
    # the whole phrase is inside the turn
    offset = round(started.start_ms * RATE / 1000)
    assert np.array_equal(ended.pcm[round(lead * RATE) - offset:][:len(speech)], speech)


def test_room_noise_and_silence_start_no_turn() -> None:
    noise, _ = read_wav(SPEECH / "noise_16k.wav")
    assert feed(np.concatenate([noise] * 3)) == []
    assert feed(silence(3.0)) == []


def test_a_knock_starts_no_turn() -> None:
    rng = np.random.default_rng(1)
    audio = (rng.standard_normal(3 * RATE) * 30).astype(np.int16)
    audio[2 * RATE:2 * RATE + 1600] += (rng.standard_normal(1600) * 8000).astype(np.int16)  # 100 ms burst
    assert feed(audio) == []
