"""User turns cut from the mic: pre-roll, end after a silence, a cap on length.

Pure and synchronous, like agent.media.vad: `TurnCutter.push(frame, speech, t)` is called on the event loop
for every VAD frame (20 ms of 16 kHz s16 mono = 320 samples by default) with the VAD's decision for that
frame, and returns the events it decided on. No asyncio, no clock reads: times are on the audio clock
(milliseconds of audio pushed so far) and `t` is whatever arrival time the caller passes, carried through.

Rules (defaults in `TurnSettings`):
- A turn starts after `min_speech_ms` of consecutive speech frames (the VAD's own start rule, so a knock or
  webrtcvad's first-frames overhang on noise starts no turn). Its audio begins `pre_roll_ms` before the
  first frame of that run, so the first syllable (quieter than the VAD's threshold) is kept.
- It ends after `end_of_turn_ms` of consecutive non-speech frames; its PCM runs up to that decision.
- At `max_turn_ms` it is cut (`capped=True`) and a new turn continues at once with the next frame
  (`continues` names the cut one): no buffer grows without bound.
"""

from __future__ import annotations

import collections
import math
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class TurnSettings:
    sample_rate: int = 16000  # the VAD's rate (agent.media.vad.VadSettings.sample_rate)
    frame_ms: int = 20  # the VAD's frame (VadSettings.frame_ms)
    pre_roll_ms: int = 300  # audio kept from before the speech run that started the turn
    min_speech_ms: int = 120  # consecutive speech that starts a turn (VadSettings.min_speech_ms)
    end_of_turn_ms: int = 500  # consecutive silence that ends it (OpenAI server VAD's silence_duration_ms)
    max_turn_ms: int = 30_000  # a turn this long is cut and a new one continues (Whisper's window is 30 s)
    id_prefix: str = "turn_"

    def __post_init__(self) -> None:
        if self.sample_rate <= 0 or self.frame_ms <= 0:
            raise ValueError("sample_rate and frame_ms must be > 0")
        if self.pre_roll_ms < 0 or self.min_speech_ms < 0 or self.end_of_turn_ms < 0:
            raise ValueError("pre_roll_ms, min_speech_ms and end_of_turn_ms must be >= 0")
        if self.max_turn_ms < self.frame_ms + self.min_speech_ms + self.pre_roll_ms:
            raise ValueError("max_turn_ms must hold at least the pre-roll, the start run and one frame")

    @property
    def frame_samples(self) -> int:
        return self.sample_rate * self.frame_ms // 1000

    def frames(self, ms: int) -> int:
        return math.ceil(ms / self.frame_ms)


@dataclass(frozen=True)
class TurnStarted:
    turn_id: str
    start_ms: float  # audio clock: the first sample of the turn (pre-roll included)
    speech_ms: float  # audio clock: the first frame of the speech run that started it
    t: float | None  # arrival time passed with the frame that decided it
    continues: str | None = None  # the turn cut by the cap that this one carries on


@dataclass(frozen=True)
class TurnAudio:
    turn_id: str
    pcm: np.ndarray  # int16 samples appended to the turn (the pre-roll and start run come in one piece)


@dataclass(frozen=True)
class TurnEnded:
    turn_id: str
    pcm: np.ndarray  # int16, the whole turn at settings.sample_rate
    start_ms: float
    end_ms: float  # audio clock: end of the last frame (for an ended turn, end_of_turn_ms after speech)
    capped: bool  # cut by max_turn_ms (a continuing turn follows)
    t: float | None

    @property
    def duration_ms(self) -> float:
        return self.end_ms - self.start_ms


TurnEvent = TurnStarted | TurnAudio | TurnEnded


class TurnCutter:
    """Push every VAD frame with its speech flag; get TurnStarted / TurnAudio / TurnEnded events."""

    def __init__(self, settings: TurnSettings | None = None) -> None:
        self.settings = s = settings or TurnSettings()
        self._start_frames = max(1, s.frames(s.min_speech_ms))
        self._end_frames = max(1, s.frames(s.end_of_turn_ms))
        self._max_frames = s.max_turn_ms // s.frame_ms
        # frames before a turn: the pre-roll plus the speech run that may start one
        self._recent: collections.deque[np.ndarray] = collections.deque(
            maxlen=s.frames(s.pre_roll_ms) + self._start_frames)
        self._frames_seen = 0
        self._run = 0  # consecutive frames arguing for a change of state
        self._count = 0
        self.turn_id: str | None = None  # the open turn
        self._parts: list[np.ndarray] = []
        self._turn_frames = 0
        self._start_ms = 0.0

    @property
    def in_turn(self) -> bool:
        return self.turn_id is not None

    def _now_ms(self) -> float:
        return self._frames_seen * self.settings.frame_ms

    def push(self, frame: np.ndarray, speech: bool, t: float | None = None) -> list[TurnEvent]:
        """One frame of `frame_samples` int16 samples and the VAD's decision on it."""
        s = self.settings
        if frame.dtype != np.int16 or frame.shape != (s.frame_samples,):
            raise ValueError(f"frame must be {s.frame_samples} int16 samples, got {frame.dtype} {frame.shape}")
        self._frames_seen += 1
        if self.turn_id is None:
            return self._idle(frame, speech, t)
        events: list[TurnEvent] = [self._append(frame)]
        self._run = self._run + 1 if not speech else 0
        if self._run >= self._end_frames:
            events.append(self._end(t, capped=False))
        elif self._turn_frames >= self._max_frames:
            cut = self._end(t, capped=True)
            events += [cut, self._open(self._now_ms(), self._now_ms(), t, continues=cut.turn_id)]
        return events

    def flush(self, t: float | None = None) -> list[TurnEvent]:
        """End the open turn now (the mic closed): [TurnEnded] or []."""
        return [self._end(t, capped=False)] if self.turn_id is not None else []

    def _idle(self, frame: np.ndarray, speech: bool, t: float | None) -> list[TurnEvent]:
        self._recent.append(frame.copy())
        self._run = self._run + 1 if speech else 0
        if self._run < self._start_frames:
            return []
        s = self.settings
        speech_ms = self._now_ms() - self._run * s.frame_ms
        start_ms = self._now_ms() - len(self._recent) * s.frame_ms
        started = self._open(start_ms, speech_ms, t)
        audio = np.concatenate(list(self._recent))
        self._recent.clear()
        return [started, self._append(audio)]

    def _open(self, start_ms: float, speech_ms: float, t: float | None, continues: str | None = None) -> TurnStarted:
        self._count += 1
        self.turn_id = f"{self.settings.id_prefix}{self._count}"
        self._parts, self._turn_frames, self._start_ms, self._run = [], 0, start_ms, 0
        return TurnStarted(self.turn_id, start_ms, speech_ms, t, continues)

    def _append(self, pcm: np.ndarray) -> TurnAudio:
        assert self.turn_id is not None
        pcm = pcm.copy()
        self._parts.append(pcm)
        self._turn_frames += len(pcm) // self.settings.frame_samples
        return TurnAudio(self.turn_id, pcm)

    def _end(self, t: float | None, capped: bool) -> TurnEnded:
        assert self.turn_id is not None
        pcm = np.concatenate(self._parts) if self._parts else np.zeros(0, np.int16)
        ended = TurnEnded(self.turn_id, pcm, self._start_ms, self._now_ms(), capped, t)
        self.turn_id, self._parts, self._turn_frames, self._run = None, [], 0, 0
        return ended
