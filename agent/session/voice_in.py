"""A session's voice in: the listener's mic frames -> user turns -> transcripts and raw turn audio.

The RTC peer hands every VAD frame and its speech flag to `on_frame` (only while `hook` is not None: with
transcription off and nobody asking for raw audio, the mic path does no extra work). Turns are cut by one
`TurnCutter` (agent.speech_in.turns), inside a `UserTranscriber` when turns are recognized, bare when only
raw audio is wanted. Its settings follow the session's VAD (frame, start run), so a turn opens on the same
frame as the VAD's `user.speech_started` and that event can carry the turn's id.

Out:
- `user.transcript.delta` / `user.transcript` / `error` (stt_*) to every connection (`broadcast`), with
  `latency_ms` on finals: from the turn-end decision (arrival of the frame that ended it) to the send;
- `user.audio.started` / binary PCM (16 kHz s16le mono) / `user.audio.done` to each connection that asked
  (`input_audio: "pcm16"`); a connection that asks mid-turn starts with the next turn;
- `on_words(turn_id, text, final)` to the session, for barge-in after `min_words`.

A change of settings (language, end of turn, partials, the VAD's frame) retires the running cutter: its open
turn ends now (its final still comes), and a new one starts with fresh turn ids (`turn_<n>_<k>`).
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from agent.metrics import Metrics
from agent.session import protocol
from agent.session.connection import Connection
from agent.settings import SessionSettings
from agent.speech_in.recognizer import STT_BUSY, STT_FAILED
from agent.speech_in.service import RecognizerService
from agent.speech_in.transcriber import TranscriberSettings, UserTranscriber
from agent.speech_in.turns import TurnAudio, TurnCutter, TurnEnded, TurnEvent, TurnSettings, TurnStarted

log = logging.getLogger(__name__)

SAMPLE_RATE = 16000  # recognizers and raw turn audio: the VAD's default rate
OnWords = Callable[[str, str, bool], None]  # (turn_id, text, final)
_ANNOTATION = re.compile(r"[\[(][^\])]*[\])]")  # Whisper's "[BLANK_AUDIO]", "(coughs)": not words
_WORD = re.compile(r"\w+(?:'\w+)*")


def count_words(text: str) -> int:
    return len(_WORD.findall(_ANNOTATION.sub(" ", text)))


@dataclass(frozen=True)
class Transcription:
    """The session's `transcription` setting."""

    enabled: bool
    language: str | None = None  # ISO 639-1; None: detect
    end_of_turn_ms: int = 500
    partials: bool = True

    def describe(self) -> dict[str, Any]:
        return {"enabled": self.enabled, "language": self.language, "end_of_turn_ms": self.end_of_turn_ms,
                "partials": self.partials}


class VoiceIn:
    def __init__(self, service: RecognizerService | None, settings: SessionSettings, metrics: Metrics,
                 broadcast: Callable[[dict[str, Any]], None], on_words: OnWords) -> None:
        self.service = service if service is not None and service.recognizer is not None else None
        self.settings, self.metrics = settings, metrics
        self.broadcast, self.on_words = broadcast, on_words
        self.config = Transcription(enabled=self.service is not None)
        self.need_words = False  # barge-in counts words: recognize turns even with transcription off
        self.listeners: dict[int, Connection] = {}  # input_audio "pcm16"
        self._streaming: list[Connection] = []  # who gets the open turn's audio
        self._cutter: TurnCutter | None = None
        self._transcriber: UserTranscriber | None = None
        self._retired: UserTranscriber | None = None  # the last replaced one, finishing its final
        self._key: tuple[Any, ...] | None = None
        self._gen = 0
        self._ended_t: dict[str, float] = {}  # turn id -> when its end was decided (time.monotonic)
        self.last_turn_id: str | None = None
        self._fast = False
        self._closing: set[asyncio.Task[None]] = set()

    # ---- state -----------------------------------------------------------------------------------
    @property
    def transcribing(self) -> bool:
        return self._transcriber is not None

    @property
    def active(self) -> bool:
        return self._cutter is not None

    @property
    def hook(self) -> Callable[[np.ndarray, bool, float], None] | None:
        """What the RTC peer calls per frame (None: voice in is off)."""
        return self.on_frame if self._cutter is not None else None

    def turn_id(self) -> str | None:
        """The open turn, else the last one (for user.speech_* events)."""
        if self._cutter is not None and self._cutter.turn_id is not None:
            return self._cutter.turn_id
        return self.last_turn_id

    def reconfigure(self, vad: Any) -> None:
        """Apply config / need_words / listeners / the VAD settings (`vad`: agent.media.vad.VadSettings)."""
        recognize = self.service is not None and (self.config.enabled or self.need_words)
        wanted = recognize or bool(self.listeners)
        if vad is None or vad.sample_rate != SAMPLE_RATE:
            wanted = False  # turns are cut at 16 kHz (a VAD at another rate feeds no voice in)
        key = None
        if wanted:
            key = (recognize, self.config, vad.frame_ms, vad.min_speech_ms)
        if key == self._key:
            return
        self._retire()
        self._key = key
        if key is None:
            return
        self._gen += 1
        s = self.settings
        turns = TurnSettings(sample_rate=SAMPLE_RATE, frame_ms=vad.frame_ms, min_speech_ms=vad.min_speech_ms,
                             end_of_turn_ms=self.config.end_of_turn_ms, max_turn_ms=s.stt_max_turn_ms,
                             id_prefix=f"turn_{self._gen}_")
        if recognize:
            assert self.service is not None
            every = s.stt_partial_every_ms if self.config.partials else 0
            self._transcriber = UserTranscriber(self.service, self._on_recognized, TranscriberSettings(
                turns=turns, language=self.config.language, partial_every_ms=every))
            self._cutter = self._transcriber.cutter
            self._set_partials()
        else:
            self._cutter = TurnCutter(turns)

    def fast_partials(self, on: bool) -> None:
        """Partials every stt_overlap_partial_every_ms (the user talks over the agent), or back to normal."""
        self._fast = on
        self._set_partials()

    def _set_partials(self) -> None:
        if self._transcriber is None:
            return
        s = self.settings
        normal = s.stt_partial_every_ms if self.config.partials else 0
        self._transcriber.partial_every_ms = s.stt_overlap_partial_every_ms if self._fast else normal

    def subscribe(self, conn: Connection, on: bool) -> None:
        if on:
            self.listeners[conn.id] = conn
        else:
            self.listeners.pop(conn.id, None)

    def detach(self, conn: Connection) -> None:
        self.listeners.pop(conn.id, None)
        self._streaming = [c for c in self._streaming if c is not conn]

    # ---- the mic ---------------------------------------------------------------------------------
    def on_frame(self, frame: np.ndarray, speech: bool, t: float) -> None:
        """One VAD frame (on the event loop, from the RTC peer's mic task)."""
        cutter = self._cutter
        if cutter is None or len(frame) != cutter.settings.frame_samples:
            return
        try:
            if self._transcriber is not None:
                events = self._transcriber.push(frame, speech, t)
            else:
                events = cutter.push(frame, speech, t)
            self._on_turn_events(events)
        except Exception:  # voice in must not end the mic path (barge-in) for the session
            log.exception("voice in: frame dropped")

    def end_of_mic(self) -> None:
        """The mic track ended: the open turn ends now."""
        t = time.monotonic()
        if self._transcriber is not None:
            self._on_turn_events(self._transcriber.end(t))
        elif self._cutter is not None:
            self._on_turn_events(self._cutter.flush(t))

    def _on_turn_events(self, events: list[TurnEvent]) -> None:
        for event in events:
            if isinstance(event, TurnStarted):
                self.last_turn_id = event.turn_id
                self._streaming = [c for c in self.listeners.values() if c.open]
                for conn in self._streaming:
                    conn.send_event(protocol.event("user.audio.started", turn_id=event.turn_id,
                                                   sample_rate=SAMPLE_RATE, format="pcm16"))
            elif isinstance(event, TurnAudio):
                if self._streaming:
                    data = event.pcm.astype("<i2", copy=False).tobytes()
                    for conn in self._streaming:
                        conn.send_audio(data)
            elif isinstance(event, TurnEnded):
                if self._transcriber is not None:
                    self._ended_t[event.turn_id] = event.t if event.t is not None else time.monotonic()
                    while len(self._ended_t) > 64:  # turns whose result never came (a closed transcriber)
                        self._ended_t.pop(next(iter(self._ended_t)))
                for conn in self._streaming:
                    conn.send_event(protocol.event("user.audio.done", turn_id=event.turn_id,
                                                   samples=len(event.pcm)))
                self._streaming = []

    # ---- recognition results ---------------------------------------------------------------------
    def _on_recognized(self, evt: dict[str, Any]) -> None:
        kind, turn_id = evt["type"], evt.get("turn_id", "")
        if kind == "user.transcript.delta":
            if self.config.enabled and self.config.partials:
                self.broadcast(evt)
            self.on_words(turn_id, evt["text"], False)
        elif kind == "user.transcript":
            ended = self._ended_t.pop(turn_id, None)
            latency_s = max(0.0, time.monotonic() - ended) if ended is not None else None
            outcome = "transcribed" if evt["text"].strip() else "empty"
            self.metrics.stt_turns_total.inc(outcome=outcome)
            if latency_s is not None:
                self.metrics.stt_latency.observe(latency_s)
            if self.config.enabled:
                out = {**evt, "latency_ms": None if latency_s is None else round(latency_s * 1000.0, 1)}
                self.broadcast(out)
            self.on_words(turn_id, evt["text"], True)
        elif kind == "error":
            self._ended_t.pop(turn_id, None)
            code = evt.get("code", STT_FAILED)
            self.metrics.stt_turns_total.inc(outcome="busy" if code == STT_BUSY else "failed")
            self.metrics.errors_total.inc(code=code)
            if self.config.enabled:
                self.broadcast(protocol.event("error", code=code, message=evt.get("message", ""), turn_id=turn_id))
            self.on_words(turn_id, "", True)

    # ---- ending ----------------------------------------------------------------------------------
    def _retire(self) -> None:
        """The running cutter ends its open turn now; a transcriber finishes that turn's final."""
        old, self._transcriber = self._transcriber, None
        if old is not None:
            self._on_turn_events(old.end(time.monotonic()))
            previous, self._retired = self._retired, old
            if previous is not None:
                self._close_later(previous)
        elif self._cutter is not None:
            self._on_turn_events(self._cutter.flush(time.monotonic()))
        self._cutter = None

    def _close_later(self, transcriber: UserTranscriber) -> None:
        task = asyncio.get_running_loop().create_task(transcriber.close(), name="voice-in-retire")
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    async def close(self) -> None:
        for transcriber in (self._transcriber, self._retired):
            if transcriber is not None:
                await transcriber.close()
        self._transcriber = self._retired = None
        self._cutter = None
        self._key = None
        await asyncio.gather(*self._closing, return_exceptions=True)


