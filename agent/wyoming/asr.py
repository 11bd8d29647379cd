"""Speech-to-text on a Wyoming connection: `transcribe`, `audio-start`, `audio-chunk`*, `audio-stop`.

One request at a time per connection (audio-start .. audio-stop). Its audio is converted to 16 kHz s16 mono as
it arrives (agent.wyoming.audio_in) and held, up to `MAX_AUDIO_S`; `audio-stop` sends it to the server's one
RecognizerService for the final transcript.

Streaming (Wyoming >= 1.7) is for requests opened by `transcribe`, as Home Assistant opens them: such a
request gets `transcript-start` at its audio-start, a `transcript-chunk` while audio arrives whenever a
partial decode agrees with itself (below), then `transcript` {text, language} and `transcript-stop`. The
protocol has no field by which a client asks for streaming, and `transcript` comes in both flows, so audio
with no `transcribe` before it is taken as a legacy client's: it gets `transcript` alone and no partial
decodes run for it.

Partials: after every `PARTIAL_EVERY_S` of new audio, the whole request so far goes to `service.partial` in a
task of its own (at most one per request in flight; the read loop never waits on it), but only while the user
speaks: the VAD must have heard speech in the last `PARTIAL_SPEECH_S` of audio. In the silence that ends a
command (the client's VAD waits for it) the audio-stop is near, and a decode cannot be interrupted, so a
partial started then would make the final wait behind it. Whisper decodes the
audio anew each time, so a hypothesis can revise its earlier words, while Wyoming's chunks are appended by
clients. A chunk therefore carries only new words that follow, unchanged, the words already sent, and never
a hypothesis' last word (the audio may end inside it). The chunks joined are a first draft; `transcript` is
the final text. `audio-stop` cancels a partial still in flight, so the final never waits behind it.

Errors are `error` {text, code} events; the connection goes on. A request that failed still ends: its
audio-stop is answered with an empty `transcript` (and `transcript-stop` when it was started), as a client
that waits for the transcript (Home Assistant does) would otherwise hang.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import numpy as np
from wyoming.asr import Transcript, TranscriptChunk, TranscriptStart, TranscriptStop
from wyoming.event import Event

from agent.media.vad import VoiceActivityDetector
from agent.speech_in.recognizer import SAMPLE_RATE, STT_UNAVAILABLE, SttError
from agent.speech_in.service import RecognizerService
from agent.voices.errors import UNSUPPORTED_LANGUAGE
from agent.wyoming.audio_in import AudioIn, BadAudio, format_of
from agent.wyoming.events import transcribe_language

log = logging.getLogger(__name__)

MAX_AUDIO_S = 30.0  # one request's audio (Whisper's window); past it the request fails with audio_too_long
PARTIAL_EVERY_S = 1.0  # new audio between two partial decodes of a streaming request
PARTIAL_SPEECH_S = 0.2  # a partial starts only if the VAD heard speech this recently (longer than a word gap)

# Error codes of this module (the recognizer's own: stt_unavailable, stt_failed, stt_busy)
BAD_AUDIO_FORMAT = "bad_audio_format"
NO_AUDIO_START = "no_audio_start"
AUDIO_OPEN = "audio_open"
AUDIO_TOO_LONG = "audio_too_long"

EVENTS = frozenset({"transcribe", "audio-start", "audio-chunk", "audio-stop"})

Write = Callable[[Event], Awaitable[None]]
SendError = Callable[[str, str], Awaitable[None]]


def recognizer_languages(service: RecognizerService | None) -> tuple[str, ...]:
    """The language codes the recognizer declares (empty: it declares none, and requests are not checked)."""
    recognizer = service.recognizer if service is not None else None
    return tuple(getattr(recognizer, "languages", ()))


def language_code(requested: str, known: tuple[str, ...]) -> str:
    """"en", "en-US", "en_us" -> "en" (Whisper's codes); ValueError when the model does not have it."""
    code = requested.strip().lower().replace("_", "-").split("-")[0]
    if known and code not in known:
        listed = ", ".join(known[:12]) + (", ..." if len(known) > 12 else "")
        raise ValueError(f"language {requested!r:.40} is not one of the recognizer's ({listed})")
    return code


def _norm(word: str) -> str:
    return re.sub(r"[^\w']+", "", word.lower())


def agreed_words(sent: list[str], hypothesis: str) -> list[str]:
    """The words of `hypothesis` to send after `sent`: all but its last, and only if it still begins with
    `sent` (case and punctuation aside); [] otherwise."""
    words = hypothesis.split()[:-1]
    if len(words) <= len(sent) or [_norm(w) for w in words[:len(sent)]] != [_norm(w) for w in sent]:
        return []
    return words[len(sent):]


@dataclass
class _Pending:
    """A `transcribe` waiting for its audio-start."""

    language: str | None
    refused: bool = False  # its error was sent: the request that follows fails quietly


@dataclass(eq=False)
class Request:
    id: int
    language: str | None
    streaming: bool
    audio: AudioIn | None = None  # None: refused or failed (its error was sent); chunks are dropped
    parts: list[np.ndarray] = field(default_factory=list)
    input_bytes: int = 0
    samples: int = 0
    since_partial: int = 0
    partial: asyncio.Task[None] | None = None
    started: bool = False  # transcript-start was sent
    sent_words: list[str] = field(default_factory=list)
    partials: int = 0
    began: float = field(default_factory=time.monotonic)
    vad: VoiceActivityDetector = field(default_factory=VoiceActivityDetector)  # streaming requests only
    vad_rest: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int16))  # part of a frame
    last_speech: int = -1  # samples up to the end of the latest speech frame; -1: none yet

    def hear(self, pcm: np.ndarray) -> None:
        """Run the VAD over the new audio (whole 20 ms frames; a part frame waits for the next chunk)."""
        frame = self.vad.settings.frame_samples
        audio = np.concatenate([self.vad_rest, pcm])
        whole = len(audio) - len(audio) % frame
        start = self.samples - len(audio)  # the sample index of audio[0]
        for i in range(0, whole, frame):
            if self.vad.is_speech(audio[i:i + frame].tobytes()):
                self.last_speech = start + i + frame
        self.vad_rest = audio[whole:]

    def speaking(self) -> bool:
        return self.last_speech >= 0 and self.samples - self.last_speech <= PARTIAL_SPEECH_S * SAMPLE_RATE


class SpeechToText:
    """The speech-to-text side of one connection (`service` None: the server has no recognizer)."""

    ids = itertools.count(1)

    def __init__(self, service: RecognizerService | None, write: Write, send_error: SendError, conn: int) -> None:
        self.service = service
        self.write = write
        self.send_error = send_error
        self.conn = conn
        self.languages = recognizer_languages(service)
        self.pending: _Pending | None = None
        self.request: Request | None = None

    @property
    def available(self) -> bool:
        return self.service is not None and self.service.available

    async def handle(self, event: Event) -> None:
        kind = event.type
        if kind == "transcribe":
            await self._transcribe(event.data)
        elif kind == "audio-start":
            await self._start(event.data)
        elif kind == "audio-chunk":
            await self._chunk(event.data, event.payload or b"")
        elif kind == "audio-stop":
            await self._stop()

    async def close(self) -> None:
        """The connection ended: a partial in flight is cancelled."""
        if self.request is not None:
            await self._cancel_partial(self.request)
            self.request = None

    # ---- events --------------------------------------------------------------------------------
    async def _transcribe(self, data: dict) -> None:
        if self.request is not None:
            await self.send_error(AUDIO_OPEN, "transcribe while audio is open: send audio-stop first")
            return
        self.pending = _Pending(None, refused=True)  # until the event is read whole
        requested = transcribe_language(data)  # BadEvent: the handler answers bad_event
        if requested is not None and self.available:
            try:
                self.pending.language = language_code(requested, self.languages)
            except ValueError as exc:
                await self.send_error(UNSUPPORTED_LANGUAGE, str(exc))
                return
        self.pending.refused = False

    async def _start(self, data: dict) -> None:
        if self.request is not None:
            await self.send_error(AUDIO_OPEN, "audio-start while audio is open: send audio-stop first")
            return
        pending, self.pending = self.pending, None
        req = self.request = Request(next(self.ids), pending.language if pending else None, pending is not None)
        if pending is not None and pending.refused:
            return
        if not self.available:
            await self.send_error(STT_UNAVAILABLE, "no speech recognizer is configured (voicegate wyoming --stt)")
            return
        try:
            req.audio = AudioIn(format_of(data, "audio-start"))
        except BadAudio as exc:
            await self.send_error(BAD_AUDIO_FORMAT, str(exc))
            return
        if req.streaming:
            req.started = True
            await self.write(TranscriptStart(language=req.language).event())

    async def _chunk(self, data: dict, payload: bytes) -> None:
        req = self.request
        if req is None:  # one error for the whole stray run: its other chunks and its audio-stop are dropped
            self.request = Request(next(self.ids), None, streaming=False)
            await self.send_error(NO_AUDIO_START, "audio-chunk without audio-start")
            return
        if req.audio is None or not payload:
            return
        audio = req.audio
        try:
            fmt = format_of(data, "audio-chunk", audio.format)
            if fmt != audio.format:
                raise BadAudio(f"audio-chunk: {fmt.rate} Hz, {fmt.width} bytes, {fmt.channels} channels, but "
                               f"audio-start said {audio.format.rate} Hz, {audio.format.width} bytes, "
                               f"{audio.format.channels} channels")
            req.input_bytes += len(payload)
            if fmt.seconds(req.input_bytes) > MAX_AUDIO_S:
                await self._fail(req, AUDIO_TOO_LONG, f"the request's audio is over {MAX_AUDIO_S:g} s")
                return
            pcm = audio.convert(payload)
        except BadAudio as exc:
            await self._fail(req, BAD_AUDIO_FORMAT, str(exc))
            return
        req.parts.append(pcm)
        req.samples += len(pcm)
        req.since_partial += len(pcm)
        if not req.streaming:
            return
        req.hear(pcm)
        idle = req.partial is None or req.partial.done()
        if idle and req.since_partial >= PARTIAL_EVERY_S * SAMPLE_RATE and req.speaking():
            req.since_partial = 0
            req.partial = asyncio.create_task(self._partial(req, np.concatenate(req.parts)),
                                              name=f"wyoming-stt-partial-{req.id}")

    async def _stop(self) -> None:
        req, self.request = self.request, None
        if req is None:
            await self.send_error(NO_AUDIO_START, "audio-stop without audio-start")
            await self.write(Transcript(text="").event())
            return
        await self._cancel_partial(req)
        if req.audio is None:
            await self._end(req, "", None)
            return
        pcm = np.concatenate([*req.parts, req.audio.drain()])
        req.parts = []
        if not len(pcm):  # audio-start, audio-stop and nothing between: nothing was said
            await self._end(req, "", req.language)
            return
        assert self.service is not None
        decoding = time.monotonic()
        try:
            final = await self.service.transcribe(pcm, req.language)
        except SttError as exc:
            await self.send_error(exc.code, exc.message)
            await self._end(req, "", None)
            return
        await self._end(req, final.text, final.language)
        log.info("wyoming conn=%d stt=%d done streaming=%s audio_ms=%d partials=%d chunk_words=%d "
                 "final_words=%d final_ms=%.1f", self.conn, req.id, req.streaming, len(pcm) * 1000 // SAMPLE_RATE,
                 req.partials, len(req.sent_words), len(final.text.split()),
                 (time.monotonic() - decoding) * 1000)

    # ---- helpers -------------------------------------------------------------------------------
    async def _end(self, req: Request, text: str, language: str | None) -> None:
        await self.write(Transcript(text=text, language=language).event())
        if req.started:
            await self.write(TranscriptStop().event())

    async def _fail(self, req: Request, code: str, text: str) -> None:
        req.audio, req.parts = None, []
        await self._cancel_partial(req)
        await self.send_error(code, text)

    @staticmethod
    async def _cancel_partial(req: Request) -> None:
        task, req.partial = req.partial, None
        if task is not None and not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _partial(self, req: Request, pcm: np.ndarray) -> None:
        assert self.service is not None
        try:
            hypothesis = await self.service.partial(pcm, req.language)
        except SttError as exc:  # a partial that fails is skipped; the final reports its own error
            log.info("wyoming conn=%d stt=%d partial skipped: %s", self.conn, req.id, exc)
            return
        except Exception:  # a bug: logged whole, never lost in a task nobody awaits
            log.exception("wyoming conn=%d stt=%d partial failed", self.conn, req.id)
            return
        if hypothesis is None or req is not self.request or req.audio is None:
            return  # no room in the recognizer's queue, or the request ended meanwhile
        req.partials += 1
        words = agreed_words(req.sent_words, hypothesis.text)
        if not words:
            return
        text = (" " if req.sent_words else "") + " ".join(words)
        req.sent_words += words
        try:
            await self.write(TranscriptChunk(text=text).event())
        except ConnectionError as exc:  # the read loop sees the client gone and ends the connection
            log.info("wyoming conn=%d stt=%d partial not sent: %s", self.conn, req.id, exc)
