"""A session's utterances: the text verbs, the ordered queue, the playout task, and their accounting.

Text path: text.append -> the open utterance (created by the first fragment after a flush) -> its engine
stream (`push_text` as soon as the stream is open; buffered before) -> frames -> the session's audio out.
Utterances play strictly in order. The playout task opens the next one's engine stream as soon as the
current one's generation has ended, so the engine works ahead while the tail of the previous one plays;
its frames go to the sink only once the previous utterance is done, so a flush never drops the next one.

Every method here is synchronous except the playout task: an interruption (cancel, barge-in, error,
shutdown) cancels the engine stream, cuts the audio out and emits `utterance.interrupted` in the caller's
loop tick. The queue gets the session's audio out (agent.media.playout.AudioOut), its voice (agent.session.voice:
what a stream opens with) and `emit` (the session broadcasts the events).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import itertools
import logging
import math
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from tokenizers import Tokenizer

from agent.media.frames import StreamFailed, frames
from agent.media.playout import AudioOut
from agent.metrics import Metrics
from agent.session import protocol
from agent.session.protocol import ProtocolError
from agent.session.spoken import estimate_spoken
from agent.session.voice import SessionVoice
from agent.settings import ENGINE_FRAME_MS, SessionSettings

if TYPE_CHECKING:
    from tts_engine import Engine, Frame, Stream

log = logging.getLogger(__name__)

Emit = Callable[[dict[str, Any]], None]


@dataclass(eq=False)
class Utterance:
    id: str
    created: float  # loop time of its first text
    fragments: list[str] = field(default_factory=list)
    chars: int = 0
    flushed: bool = False
    stream: Stream | None = None
    head_t: float | None = None  # became the utterance playing
    opened_t: float | None = None  # engine stream opened
    first_frame_t: float | None = None  # first engine frame taken from the stream
    first_audio_t: float | None = None  # first audio left the server
    frames: int = 0  # engine frames handed to the sink
    played_ms: float = 0.0  # audio that left the server
    consumed: list[int] = field(default_factory=list)  # text tokens read by the model, per frame handed out
    generated: str | None = None  # the engine's end reason once generation is over
    ended: str | None = None  # "done" | "interrupted"

    @property
    def text_fed(self) -> str:
        return "".join(self.fragments)


class UtteranceQueue:
    def __init__(self, engine: Engine, settings: SessionSettings, metrics: Metrics, tokenizer: Tokenizer | None,
                 emit: Emit, audio: AudioOut, voice: SessionVoice, name: str) -> None:
        self.engine, self.settings, self.metrics, self.tokenizer = engine, settings, metrics, tokenizer
        self.emit, self.audio, self.voice, self.name = emit, audio, voice, name
        self.loop = asyncio.get_running_loop()
        self.queue: collections.deque[Utterance] = collections.deque()  # head: the one playing
        self.open_utt: Utterance | None = None  # accepting text (the last one, until its flush)
        self.discarding = False  # barge-in hit the open utterance: text.append is dropped until text.flush
        self.in_flight: dict[str, Utterance] = {}
        self.accepting = True
        self._ids = itertools.count(1)
        self._changed = asyncio.Event()
        self._task = self.loop.create_task(self._playout_loop(), name=f"playout-{name}")

    # ---- state -----------------------------------------------------------------------------------
    def live(self) -> list[Utterance]:
        """Playing and queued utterances, in order."""
        return [u for u in self.queue if u.ended is None]

    def playing(self) -> Utterance | None:
        head = self.queue[0] if self.queue else None
        return head if head is not None and head.ended is None and head.head_t is not None else None

    # ---- producer verbs --------------------------------------------------------------------------
    def append(self, text: str, msg_id: str | None = None) -> None:
        if not self.accepting:
            raise ProtocolError(protocol.SHUTTING_DOWN, "the server is shutting down; no new text", msg_id)
        if self.discarding or not text:
            return  # barge-in interrupted this reply: the rest of it is not spoken (see awaiting_flush)
        utt = self.open_utt
        limit = self.settings.max_utterance_chars
        if utt is None:
            if len(text) > limit:
                raise ProtocolError(protocol.TEXT_LIMIT, f"{len(text)} characters is over the limit of {limit} "
                                                         f"per utterance; send text.flush between sentences",
                                    msg_id)
            waiting = sum(1 for u in self.queue if u.ended is None and u.head_t is None)
            if waiting >= self.settings.max_queued_utterances:
                raise ProtocolError(protocol.QUEUE_FULL, f"{waiting} utterances are already waiting (limit "
                                                         f"{self.settings.max_queued_utterances}); wait for "
                                                         f"utterance.done or cancel", msg_id)
            utt = Utterance(id=f"utt_{next(self._ids)}", created=self.loop.time())
            self.open_utt = utt
            self.queue.append(utt)
            self.in_flight[utt.id] = utt
            ahead = len(self.live()) - 1
            if ahead:
                self.emit(protocol.event("utterance.queued", utterance=utt.id, ahead=ahead))
            self._changed.set()
        elif utt.chars + len(text) > limit:
            raise ProtocolError(protocol.TEXT_LIMIT, f"utterance {utt.id} would hold {utt.chars + len(text)} "
                                                     f"characters, over the limit of {limit}; this fragment was "
                                                     f"not accepted (text.flush, then continue)", msg_id)
        utt.fragments.append(text)
        utt.chars += len(text)
        if utt.stream is not None:
            utt.stream.push_text(text)

    def flush(self) -> None:
        self.discarding = False
        utt, self.open_utt = self.open_utt, None
        if utt is None:
            return
        utt.flushed = True
        if utt.stream is not None:
            utt.stream.finish()

    def cancel(self, msg: protocol.UtteranceCancel) -> None:
        live = self.live()
        if msg.all:
            targets = live
        elif msg.utterance is not None:
            targets = [u for u in live if u.id == msg.utterance]
            if not targets:
                raise ProtocolError(protocol.UNKNOWN_UTTERANCE, f"no utterance {msg.utterance!r} is playing or "
                                                                f"queued", msg.id)
        else:
            targets = live[:1]
            if not targets:
                raise ProtocolError(protocol.UNKNOWN_UTTERANCE, "nothing is playing or queued", msg.id)
        for utt in targets:  # a cancel ends the utterance: the next text.append starts a new one
            self.interrupt(utt, "cancel")

    def barge_in(self, targets: list[Utterance]) -> None:
        """The listener spoke: stop everything; the rest of an open reply is dropped until its flush."""
        for utt in targets:
            was_open = utt is self.open_utt
            if was_open:
                self.open_utt = None
                self.discarding = True
            self.interrupt(utt, "barge_in", awaiting_flush=was_open)

    # ---- lifecycle -------------------------------------------------------------------------------
    def interrupt(self, utt: Utterance, reason: str, awaiting_flush: bool = False) -> None:
        if utt.ended is not None:
            return
        if utt.stream is not None:
            utt.stream.cancel()
        heard_ms = utt.played_ms
        if utt.head_t is not None:  # it is the one playing: drop its queued audio
            heard_ms = self.audio.cut(utt.played_ms)
        self._end(utt, "interrupted")
        text = utt.text_fed
        tokens_read = None
        if utt.consumed:
            tokens_read = utt.consumed[min(int(heard_ms // ENGINE_FRAME_MS), len(utt.consumed) - 1)]
        spoken = estimate_spoken(text, heard_ms, tokens_read, self.tokenizer, self.settings.chars_per_second,
                                 self.settings.cjk_char_weight)
        self.metrics.utterances_total.inc(ended_by=reason)
        self.emit(protocol.event("utterance.interrupted", utterance=utt.id, reason=reason,
                                 played_ms=round(utt.played_ms, 1), text_fed=text, spoken_text=spoken,
                                 unspoken_text=text[len(spoken):], awaiting_flush=awaiting_flush))

    def _end(self, utt: Utterance, how: str) -> None:
        utt.ended = how
        self.in_flight.pop(utt.id, None)
        if utt is self.open_utt:  # cancelled or failed while open: the next text starts a new utterance
            self.open_utt = None
        self._changed.set()

    def _done(self, utt: Utterance) -> None:
        if utt.ended is not None:
            return
        self._end(utt, "done")
        ended_by = utt.generated or "eos"
        self.metrics.utterances_total.inc(ended_by=ended_by)
        self.emit(protocol.event("utterance.done", utterance=utt.id, played_ms=round(utt.played_ms, 1),
                                 ended_by=ended_by, frames=utt.frames, text_fed=utt.text_fed))

    def on_sent(self, utterance: str, ms: float, t: float) -> None:
        """A sink reports audio of `utterance` that left the server at loop time `t`."""
        utt = self.in_flight.get(utterance)
        if utt is None or utt.ended is not None:
            return
        utt.played_ms += ms
        self.metrics.audio_seconds_total.inc(ms / 1000.0)
        if utt.first_audio_t is None:
            utt.first_audio_t = t
            start = max(utt.created, utt.head_t or utt.created)
            model_ms = ((utt.first_frame_t or t) - max(start, utt.opened_t or start)) * 1000.0
            self.metrics.first_audio.observe(t - start)
            if utt.first_frame_t is not None:
                self.metrics.first_audio_overhead.observe(max(0.0, t - utt.first_frame_t))
            self.emit(protocol.event("audio.first", utterance=utt.id, latency_ms=round((t - start) * 1000, 1),
                                     model_ms=round(max(0.0, model_ms), 1)))

    def _report_error(self, code: str, message: str) -> None:
        self.metrics.errors_total.inc(code=code)
        self.emit(protocol.error_event(code, message))

    def _open_stream(self, utt: Utterance) -> bool:
        """Start synthesis of `utt` with the session's current voice; False (reported) if it cannot."""
        try:
            stream = self.engine.open_stream(**self.voice.stream_args())
        except ValueError as exc:
            self._report_error(protocol.INVALID_VOICE, f"utterance {utt.id}: {exc}")
            self.interrupt(utt, "error")
            return False
        utt.stream = stream
        utt.opened_t = self.loop.time()
        for fragment in utt.fragments:
            stream.push_text(fragment)
        if utt.flushed:
            stream.finish()
        return True

    # ---- playout task ----------------------------------------------------------------------------
    async def _playout_loop(self) -> None:
        while True:
            while self.queue and self.queue[0].ended is not None:
                self.queue.popleft()
            if not self.queue:
                self._changed.clear()
                await self._changed.wait()
                continue
            head = self.queue[0]
            try:
                await self._play(head)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.exception("%s: playout failed", self.name)
                self._report_error(protocol.INTERNAL_ERROR, f"playout: {type(exc).__name__}: {exc}")
                self.interrupt(head, "error")

    async def _play(self, utt: Utterance) -> None:
        utt.head_t = self.loop.time()
        if utt.stream is None and not self._open_stream(utt):
            return
        self.emit(protocol.event("utterance.started", utterance=utt.id))
        stream = utt.stream
        assert stream is not None
        try:
            async with contextlib.aclosing(self._start_buffered(stream)) as frames:
                async for frame in frames:
                    if utt.ended is not None:
                        break
                    if utt.first_frame_t is None:
                        utt.first_frame_t = self.loop.time()
                    utt.consumed.append(frame.text_tokens_consumed)
                    utt.frames += 1
                    if not await self.audio.sink.play(utt.id, frame.pcm):
                        if utt.ended is not None:
                            break
                        # the sink was replaced (audio mode changed) while this frame waited: it goes to the new one
                        if not await self.audio.sink.play(utt.id, frame.pcm):
                            break
        except StreamFailed as failed:
            self._report_error(protocol.ENGINE_ERROR, f"utterance {utt.id}: {failed.end.error}")
            self.interrupt(utt, "error")
            return
        if utt.ended is not None:
            return
        end = stream.end
        utt.generated = end.reason if end is not None else "eos"
        self._prefetch()
        await self.audio.sink.drain(utt.id)
        self._done(utt)

    async def _start_buffered(self, stream: Stream) -> AsyncIterator[Frame]:
        """The stream's frames, the first `start_buffer_ms` of them held until all are ready (or it ends)."""
        need = math.ceil(self.settings.start_buffer_ms / ENGINE_FRAME_MS)
        held: list[Frame] | None = [] if need > 0 else None
        async for frame in frames(stream):
            if held is None:
                yield frame
                continue
            held.append(frame)
            if len(held) >= need:
                for f in held:
                    yield f
                held = None
        for f in held or []:
            yield f

    def _prefetch(self) -> None:
        """Open the next utterance's engine stream while the current one's tail plays."""
        nxt = next((u for u in self.queue if u.ended is None and u.head_t is None), None)
        if nxt is not None and nxt.stream is None:
            self._open_stream(nxt)

    # ---- ending ----------------------------------------------------------------------------------
    async def wait_idle(self, timeout_s: float) -> bool:
        """Until nothing plays or waits (True), or `timeout_s` passes (False). Text may still arrive."""
        deadline = self.loop.time() + timeout_s
        while self.live() and self.loop.time() < deadline:
            self._changed.clear()
            try:
                await asyncio.wait_for(self._changed.wait(), max(0.0, deadline - self.loop.time()))
            except TimeoutError:
                break
        return not self.live()

    async def shutdown(self, grace_s: float) -> None:
        """No new text; the open utterance is flushed; in-flight ones get `grace_s` to finish."""
        self.accepting = False
        self.flush()
        await self.wait_idle(grace_s)
        for utt in self.live():
            self.interrupt(utt, "shutdown")

    async def close(self) -> None:
        """Stop at once, silently (the session is going away)."""
        self.accepting = False
        for utt in self.live():
            if utt.stream is not None:
                utt.stream.cancel()
            utt.ended = "interrupted"
            self.metrics.utterances_total.inc(ended_by="closed")
        self.queue.clear()
        self.in_flight.clear()
        self._changed.set()  # wakes wait_idle
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await self._task
