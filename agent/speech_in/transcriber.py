"""One session's voice in: mic frames and VAD flags -> user turns -> the shared recognizer -> events.

`push(frame, speech, t)` is synchronous (called on the event loop for every VAD frame) and returns the
TurnCutter's events, so the session can act on turn boundaries itself (e.g. send the raw PCM). Recognition
runs through one task per transcriber, which takes jobs from a bounded queue in order, so a turn's partials
always come before its final. At most one partial per transcriber waits or runs at a time, and one is only
started on a speech frame (in a pause the turn may be about to end, and its final would wait behind it);
when the queue is full a partial is skipped and a final is reported as `stt_busy`.

Events passed to `on_event` (dicts, ready for the session protocol):
  {"type": "user.transcript.delta", "turn_id", "text"}   the whole hypothesis so far (it replaces the previous
                                                          one: Whisper re-decodes the growing turn)
  {"type": "user.transcript", "turn_id", "text", "language", "start_ms", "end_ms", "capped",
   "words": [{"text", "start_ms", "end_ms"}]}            the turn's final transcript
  {"type": "error", "code": "stt_unavailable" | "stt_failed" | "stt_busy", "turn_id", "message"}
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from agent.speech_in.recognizer import STT_BUSY, SttError, Transcript
from agent.speech_in.service import RecognizerService
from agent.speech_in.turns import TurnAudio, TurnCutter, TurnEnded, TurnEvent, TurnSettings, TurnStarted

logger = logging.getLogger(__name__)

OnEvent = Callable[[dict[str, Any]], None]


@dataclass(frozen=True)
class TranscriberSettings:
    turns: TurnSettings = field(default_factory=TurnSettings)
    language: str | None = None  # None: the recognizer detects it (English-only models always say "en")
    partial_every_ms: int = 1000  # a partial after each this much new turn audio; 0: no partials
    max_jobs: int = 4  # this session's queue of recognition jobs


@dataclass(frozen=True)
class _Partial:
    turn_id: str
    pcm: np.ndarray


class UserTranscriber:
    def __init__(self, service: RecognizerService, on_event: OnEvent,
                 settings: TranscriberSettings | None = None) -> None:
        self.service = service
        self.on_event = on_event
        self.settings = s = settings or TranscriberSettings()
        self.cutter = TurnCutter(s.turns)
        # partials' spacing from now on; the session shortens it while the user talks over the agent, where
        # a partial's word count decides a barge-in (0: no partials)
        self.partial_every_ms = s.partial_every_ms
        self._jobs: asyncio.Queue[_Partial | TurnEnded] = asyncio.Queue(maxsize=s.max_jobs)
        self._task: asyncio.Task[None] | None = None
        self._parts: list[np.ndarray] = []  # the open turn's audio, for partials
        self._since_partial = 0  # samples since the last partial was queued
        self._partial_queued = False

    def push(self, frame: np.ndarray, speech: bool, t: float | None = None) -> list[TurnEvent]:
        """One VAD frame and its speech flag (on the event loop)."""
        events = self.cutter.push(frame, speech, t)
        for event in events:
            self._on_turn_event(event, speech)
        return events

    def end(self, t: float | None = None) -> list[TurnEvent]:
        """The mic closed: the open turn ends now and is transcribed."""
        events = self.cutter.flush(t)
        for event in events:
            self._on_turn_event(event, False)
        return events

    async def close(self) -> None:
        """Stop recognizing (jobs not yet done are dropped)."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.wait([self._task])
            self._task = None

    def _on_turn_event(self, event: TurnEvent, speech: bool) -> None:
        rate = self.settings.turns.sample_rate
        if isinstance(event, TurnStarted):
            self._parts, self._since_partial = [], 0
        elif isinstance(event, TurnAudio):
            self._parts.append(event.pcm)
            self._since_partial += len(event.pcm)
            every = self.partial_every_ms * rate // 1000
            # not in a pause: the turn may be about to end, and its final would wait behind this decode
            due = speech and every and self._since_partial >= every and not self._partial_queued
            if due and self._put(_Partial(event.turn_id, np.concatenate(self._parts))):
                self._since_partial, self._partial_queued = 0, True
        elif isinstance(event, TurnEnded):
            self._parts = []
            if not self._put(event):
                self._emit({"type": "error", "code": STT_BUSY, "turn_id": event.turn_id,
                            "message": "too many turns waiting for the recognizer"})

    def _emit(self, event: dict[str, Any]) -> None:
        try:
            self.on_event(event)
        except Exception:  # a failing consumer must not end recognition for the session
            logger.exception("on_event callback failed")

    def _put(self, job: _Partial | TurnEnded) -> bool:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name="user-transcriber")
        try:
            self._jobs.put_nowait(job)
        except asyncio.QueueFull:
            return False
        return True

    async def _run(self) -> None:
        language = self.settings.language
        while True:
            job = await self._jobs.get()
            if isinstance(job, _Partial):
                self._partial_queued = False
                if job.turn_id != self.cutter.turn_id:  # the turn ended meanwhile: its final is queued
                    continue
                with contextlib.suppress(SttError):  # a partial that fails or finds no room is just skipped
                    partial = await self.service.partial(job.pcm, language)
                    if partial is not None:  # even if the turn has ended: its final comes next
                        self._emit({"type": "user.transcript.delta", "turn_id": job.turn_id,
                                    "text": partial.text})
                continue
            try:
                final = await self.service.transcribe(job.pcm, language)
            except SttError as exc:
                self._emit({"type": "error", "code": exc.code, "turn_id": job.turn_id, "message": exc.message})
                continue
            self._emit(final_event(job, final))


def final_event(turn: TurnEnded, transcript: Transcript) -> dict[str, Any]:
    return {"type": "user.transcript", "turn_id": turn.turn_id, "text": transcript.text,
            "language": transcript.language, "start_ms": turn.start_ms, "end_ms": turn.end_ms,
            "capped": turn.capped,
            "words": [{"text": w.text, "start_ms": turn.start_ms + w.start_ms, "end_ms": turn.start_ms + w.end_ms}
                      for w in transcript.words]}
