"""One conversation: its connections, its utterance queue, its playout, and barge-in.

Text path: text.append -> the open utterance (created by the first fragment after a flush) -> its engine
stream (`push_text`, as soon as the stream is open; buffered before) -> frames -> the sink. Utterances
play strictly in order; the playout task opens the next one's engine stream as soon as the current one's
generation has ended, so the engine works ahead while the tail of the previous one plays.

Events go to every connection of the session (errors and direct replies only to the sender). Nothing in
here awaits a send (agent.connection queues), so `on_speech` (called by the RTC peer on the event loop)
cancels the engine stream, drops queued audio and reports `utterance.interrupted` in one loop tick.

Tasks: one playout task per session; the connection handlers are the server's. `close()` cancels and
awaits the playout task, cancels every engine stream and closes the RTC peer.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import itertools
import logging
import secrets
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from tokenizers import Tokenizer

from . import protocol
from .connection import Connection
from .metrics import Metrics
from .playout import PacedSink, RtcSink
from .protocol import ProtocolError
from .settings import FRAME_MS, SAMPLE_RATE, SessionSettings
from .spoken import estimate_spoken

if TYPE_CHECKING:
    from tts_engine.engine import Engine
    from tts_engine.stream import Stream

log = logging.getLogger(__name__)


@dataclass
class ModelInfo:
    """What the loaded checkpoint offers (sent in session.created and the `voices` reply)."""

    name: str
    kind: str  # custom_voice | base | voice_design
    voices: list[str]
    languages: list[str]
    instruct: bool  # whether style instructions are honoured

    @classmethod
    def from_engine(cls, engine: Engine, name: str) -> ModelInfo:
        model = engine.model
        cfg = model.config
        kind = cfg.tts_model_type
        instruct = kind == "voice_design" or (kind == "custom_voice" and cfg.tts_model_size != "0b6")
        return cls(name=name, kind=kind, voices=list(model.speakers), languages=list(model.languages),
                   instruct=instruct)

    def describe(self) -> dict[str, Any]:
        return {"model": self.name, "model_kind": self.kind, "voices": self.voices, "languages": self.languages,
                "instruct": self.instruct}


@dataclass
class VoiceConfig:
    voice: str | None
    language: str = "auto"
    instruct: str | None = None
    seed: int = 0
    greedy: bool = False


@dataclass(eq=False)
class Utterance:
    id: str
    created: float  # loop time of its first text
    fragments: list[str] = field(default_factory=list)
    chars: int = 0
    flushed: bool = False
    stream: Stream | None = None
    voice: VoiceConfig | None = None
    head_t: float | None = None  # became the utterance playing
    opened_t: float | None = None  # engine stream opened
    first_frame_t: float | None = None  # first engine frame ready
    first_audio_t: float | None = None  # first audio left the server
    frames: int = 0  # engine frames handed to the sink
    played_ms: float = 0.0  # audio that left the server
    consumed: list[int] = field(default_factory=list)  # text tokens read by the model, per frame handed out
    generated: str | None = None  # the engine's end reason once generation is over
    ended: str | None = None  # "done" | "interrupted"

    @property
    def text_fed(self) -> str:
        return "".join(self.fragments)


class Session:
    def __init__(self, engine: Engine, info: ModelInfo, settings: SessionSettings, metrics: Metrics,
                 tokenizer: Tokenizer | None = None, rtc_settings: Any = None, vad_defaults: Any = None) -> None:
        self.id = "sess_" + secrets.token_hex(8)
        self.token = secrets.token_urlsafe(24)
        self.engine, self.info, self.settings, self.metrics = engine, info, settings, metrics
        self.tokenizer = tokenizer
        self.rtc_settings, self.vad_defaults = rtc_settings, vad_defaults
        self.loop = asyncio.get_running_loop()
        self.connections: dict[int, Connection] = {}
        self.voice = VoiceConfig(voice=info.voices[0] if info.kind == "custom_voice" and info.voices else None)
        self.audio = "websocket"
        self.vad: dict[str, Any] = {}
        self.barge_in = settings.barge_in
        self.echo_guard_ms = settings.echo_guard_ms
        self.listener: Connection | None = None
        self.peer: Any = None  # agent.rtc.RtcPeer once a webrtc.offer was answered
        self.queue: collections.deque[Utterance] = collections.deque()
        self.open_utt: Utterance | None = None  # accepting text (the last one, until its flush)
        self.discarding = False  # barge-in hit the open utterance: text.append is dropped until text.flush
        self.in_flight: dict[str, Utterance] = {}
        self._utt_ids = itertools.count(1)
        self.user_speaking = False
        self._guarded_speech = False  # the current speech run started inside the echo guard
        self.accepting = True
        self.closed = False
        self._changed = asyncio.Event()
        self._closing_peers: set[asyncio.Task[None]] = set()
        self.sink: PacedSink | RtcSink = self._paced_sink()
        self._playout = self.loop.create_task(self._playout_loop(), name=f"playout-{self.id}")

    # ---- connections -----------------------------------------------------------------------------
    def attach(self, conn: Connection, owner: bool) -> None:
        conn.role = "owner" if owner else "producer"
        self.connections[conn.id] = conn
        if owner and self.audio == "websocket" and self.listener is None:
            self.listener = conn
            self._set_sink(self._paced_sink())
        created = protocol.event("session.created", session=self.id, token=self.token, sample_rate=SAMPLE_RATE,
                                 frame_ms=FRAME_MS, role=conn.role, config=self.config(),
                                 limits={"max_utterance_chars": self.settings.max_utterance_chars,
                                         "max_queued_utterances": self.settings.max_queued_utterances},
                                 **self.info.describe())
        conn.send_event(created)

    def detach(self, conn: Connection) -> None:
        self.connections.pop(conn.id, None)
        if self.listener is conn:
            self.listener = None
            if self.audio == "websocket":
                self._set_sink(self._paced_sink())  # keep the timeline; nobody receives the audio

    def config(self) -> dict[str, Any]:
        return {"voice": self.voice.voice, "language": self.voice.language, "instruct": self.voice.instruct,
                "seed": self.voice.seed, "greedy": self.voice.greedy, "audio": self.audio, "vad": self.vad,
                "barge_in": self.barge_in, "echo_guard_ms": self.echo_guard_ms}

    def broadcast(self, evt: dict[str, Any]) -> None:
        for conn in list(self.connections.values()):
            conn.send_event(evt)

    # ---- client messages -------------------------------------------------------------------------
    async def handle(self, conn: Connection, data: str | bytes, max_bytes: int) -> None:
        msg_id = None
        try:
            msg = protocol.parse_client_message(data, max_bytes)
            msg_id = msg.id
            if isinstance(msg, protocol.TextAppend):
                self.append(msg.text, msg.id)
            elif isinstance(msg, protocol.TextFlush):
                self.flush()
            elif isinstance(msg, protocol.UtteranceCancel):
                self.cancel(msg)
            elif isinstance(msg, protocol.SessionUpdate):
                self.update(conn, msg)
            elif isinstance(msg, protocol.WebRtcOffer):
                await self.offer(conn, msg)
            elif isinstance(msg, protocol.VoicesList):
                reply = protocol.event("voices", **self.info.describe())
                if msg.id is not None:
                    reply["id"] = msg.id
                conn.send_event(reply)
        except ProtocolError as exc:
            conn.send_error(exc.code, exc.message, exc.msg_id)
        except Exception as exc:  # a bug must not end the session: report it
            log.exception("session %s: internal error", self.id)
            conn.send_error(protocol.INTERNAL_ERROR, f"{type(exc).__name__}: {exc}", msg_id)

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
            waiting = sum(1 for u in self.queue if u.head_t is None)
            if waiting >= self.settings.max_queued_utterances:
                raise ProtocolError(protocol.QUEUE_FULL, f"{waiting} utterances are already waiting (limit "
                                                         f"{self.settings.max_queued_utterances}); wait for "
                                                         f"utterance.done or cancel", msg_id)
            utt = Utterance(id=f"utt_{next(self._utt_ids)}", created=self.loop.time())
            self.open_utt = utt
            self.queue.append(utt)
            self.in_flight[utt.id] = utt
            if len(self.queue) > 1:
                self.broadcast(protocol.event("utterance.queued", utterance=utt.id, ahead=len(self.queue) - 1))
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
        utt = self.open_utt
        if utt is None:
            return
        self.open_utt = None
        utt.flushed = True
        if utt.stream is not None:
            utt.stream.finish()

    def cancel(self, msg: protocol.UtteranceCancel) -> None:
        live = [u for u in self.queue if u.ended is None]
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
            self._interrupt(utt, "cancel")

    def update(self, conn: Connection, msg: protocol.SessionUpdate) -> None:
        voice = VoiceConfig(**vars(self.voice))
        if msg.voice is not None:
            voice.voice = msg.voice
        if msg.language is not None:
            voice.language = msg.language.lower()
        if msg.instruct is not None:
            voice.instruct = msg.instruct or None
        if msg.seed is not None:
            voice.seed = msg.seed
        if msg.greedy is not None:
            voice.greedy = msg.greedy
        if msg.voice is not None or msg.language is not None or msg.instruct is not None:
            self._check_voice(voice, msg.id)
        vad = self.vad
        if msg.vad is not None:
            vad = {**self.vad, **msg.vad}
            self._check_vad(vad, msg.id)
        # all checked: apply
        self.voice = voice
        self.vad = vad
        if msg.barge_in is not None:
            self.barge_in = msg.barge_in
        if msg.echo_guard_ms is not None:
            self.echo_guard_ms = float(msg.echo_guard_ms)
        if msg.audio is not None:
            self._set_audio(msg.audio, conn)
        if msg.vad is not None and self.peer is not None and hasattr(self.peer, "set_vad"):
            self.peer.set_vad(self._vad_settings())
        self.broadcast(protocol.event("session.updated", config=self.config()))

    def _check_voice(self, voice: VoiceConfig, msg_id: str | None) -> None:
        from tts_engine.prompt import validate_voice

        if voice.language not in self.info.languages:
            raise ProtocolError(protocol.INVALID_VOICE, f"unknown language {voice.language!r}; this model "
                                                        f"speaks {', '.join(self.info.languages)}", msg_id)
        if self.info.kind == "custom_voice" and voice.voice not in self.info.voices:
            raise ProtocolError(protocol.INVALID_VOICE, f"unknown voice {voice.voice!r}; choose one of "
                                                        f"{', '.join(self.info.voices)}", msg_id)
        try:
            v = self.engine.model.voice(voice.voice, voice.language, voice.instruct, None)
            validate_voice(self.engine.model.config, v)
        except ValueError as exc:
            raise ProtocolError(protocol.INVALID_VOICE, str(exc), msg_id) from None

    def _check_vad(self, vad: dict[str, Any], msg_id: str | None) -> None:
        try:
            self._vad_settings(vad)
        except ImportError:
            pass  # checked when a peer is created
        except (TypeError, ValueError) as exc:
            raise ProtocolError(protocol.INVALID_MESSAGE, f"session.update: vad: {exc}", msg_id) from None

    def _vad_settings(self, vad: dict[str, Any] | None = None) -> Any:
        import dataclasses

        from .vad import VadSettings

        base = self.vad_defaults if self.vad_defaults is not None else VadSettings()
        overrides = self.vad if vad is None else vad
        known = {f.name for f in dataclasses.fields(VadSettings)}
        unknown = sorted(set(overrides) - known)
        if unknown:
            raise ValueError(f"unknown setting(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
        return dataclasses.replace(base, **overrides)

    # ---- audio destination -----------------------------------------------------------------------
    def _paced_sink(self) -> PacedSink:
        listener = self.listener if self.audio == "websocket" else None
        send = listener.send_audio if listener is not None else None
        return PacedSink(self.settings.audio_lead_ms, self._on_sent, send, self.metrics)

    def _set_sink(self, sink: PacedSink | RtcSink) -> None:
        old = getattr(self, "sink", None)
        self.sink = sink
        if old is not None and old is not sink:
            old.close()

    def _set_audio(self, mode: str, conn: Connection) -> None:
        self.audio = mode
        if mode == "websocket":
            self.listener = conn
            self._set_sink(self._paced_sink())
        elif mode == "none":
            self.listener = None
            self._set_sink(self._paced_sink())
        elif mode == "webrtc":
            self.listener = conn
            if self.peer is not None:
                self._set_sink(self._rtc_sink())
            else:
                self._set_sink(PacedSink(self.settings.audio_lead_ms, self._on_sent, None, self.metrics))

    def _rtc_sink(self) -> RtcSink:
        return RtcSink(self.peer.outbound, self.settings.rtc_queue_ms, self._on_sent,
                       self.settings.webrtc_playout_delay_ms)

    async def offer(self, conn: Connection, msg: protocol.WebRtcOffer) -> None:
        try:
            from .rtc import RtcPeer, RtcSettings
        except ImportError as exc:
            raise ProtocolError(protocol.WEBRTC_UNAVAILABLE, f"WebRTC is not available on this server "
                                                             f"({exc}); install voicegate[server] or use "
                                                             f"audio \"websocket\"", msg.id) from None
        try:
            vad = self._vad_settings()
        except (TypeError, ValueError) as exc:
            raise ProtocolError(protocol.INVALID_MESSAGE, f"vad: {exc}", msg.id) from None
        old, self.peer = self.peer, None
        if old is not None:
            self._set_sink(self._paced_sink())
            await old.close()
        peer = RtcPeer(self.rtc_settings if self.rtc_settings is not None else RtcSettings(), vad,
                       self.on_speech)
        try:
            answer = await peer.answer(msg.sdp)
        except Exception as exc:
            await peer.close()
            raise ProtocolError(protocol.WEBRTC_FAILED, f"could not answer the offer: {exc}", msg.id) from None
        if self.closed:
            await peer.close()
            return
        self.peer = peer
        peer.on_state = lambda state: self._on_peer_state(peer, state)
        self.audio = "webrtc"
        self.listener = conn
        self._set_sink(self._rtc_sink())
        reply = protocol.event("webrtc.answer", sdp=answer)
        if msg.id is not None:
            reply["id"] = msg.id
        conn.send_event(reply)

    def _on_peer_state(self, peer: Any, state: str) -> None:
        if peer is not self.peer:
            return  # a replaced peer
        self.broadcast(protocol.event("webrtc.state", state=state))
        if state in ("failed", "closed") and not self.closed:
            # nobody pulls the track any more: keep the timeline going without it
            self.peer = None
            self._set_sink(PacedSink(self.settings.audio_lead_ms, self._on_sent, None, self.metrics))
            self._closing_peers.add(self.loop.create_task(peer.close(), name=f"peer-close-{self.id}"))
            for task in list(self._closing_peers):
                if task.done():
                    self._closing_peers.discard(task)

    # ---- barge-in --------------------------------------------------------------------------------
    def on_speech(self, kind: str, t: float, onset_t: float | None = None) -> None:
        """VAD decision from the RTC peer (on the event loop): barge-in happens right here, in this tick.

        `t` is when the deciding mic frame arrived (loop clock); `onset_t`, the estimated speech start.
        """
        if onset_t is None and self.peer is not None:
            onset_t = getattr(getattr(self.peer, "vad", None), "onset_t", None)
        if kind == "speech_started":
            self.user_speaking = True
            targets: list[Utterance] = []
            if self._playing() and self.barge_in:
                if self._in_echo_guard():
                    self._guarded_speech = True  # this whole speech run is ignored (see docs: echo guard)
                else:
                    targets = [u for u in self.queue if u.ended is None]
            self.broadcast(protocol.event("user.speech_started", interrupted=[u.id for u in targets],
                                          ignored=self._guarded_speech))
            if targets:
                self._barge_in(targets, t, onset_t)
        elif kind == "speech_stopped":
            self.user_speaking = False
            self._guarded_speech = False
            self.broadcast(protocol.event("user.speech_stopped"))

    def _playing(self) -> bool:
        return any(u.ended is None and u.head_t is not None for u in self.queue)

    def _in_echo_guard(self) -> bool:
        if self.echo_guard_ms <= 0:
            return False
        head = next((u for u in self.queue if u.ended is None and u.head_t is not None), None)
        if head is None or head.first_audio_t is None:
            return False
        return (self.loop.time() - head.first_audio_t) * 1000.0 < self.echo_guard_ms

    def _barge_in(self, targets: list[Utterance], t: float, onset_t: float | None) -> None:
        """Cancel the engine streams, drop queued audio, report: everything synchronous."""
        for utt in targets:
            was_open = utt is self.open_utt
            if was_open:
                self.open_utt = None
                self.discarding = True  # the rest of the interrupted reply must not be spoken later
            self._interrupt(utt, "barge_in", awaiting_flush=was_open)
        now = self.loop.time()
        self.metrics.bargein.observe(max(0.0, now - t))
        if onset_t is not None:
            self.metrics.bargein_onset.observe(max(0.0, now - onset_t))

    # ---- utterance lifecycle -----------------------------------------------------------------------
    def _interrupt(self, utt: Utterance, reason: str, awaiting_flush: bool = False) -> None:
        if utt.ended is not None:
            return
        playing = utt.head_t is not None
        if utt.stream is not None:
            utt.stream.cancel()
        heard_ms = utt.played_ms
        if playing:
            heard_ms -= self.sink.buffered_ms() + (self.sink.listener_delay_ms if utt.played_ms else 0.0)
            self.sink.flush()
        self._end(utt, "interrupted")
        heard_ms = max(0.0, heard_ms)
        text = utt.text_fed
        tokens_read = None
        if utt.consumed:
            frame = min(int(heard_ms // FRAME_MS), len(utt.consumed) - 1)
            tokens_read = utt.consumed[frame]
        spoken = estimate_spoken(text, heard_ms, tokens_read, self.tokenizer, self.settings.chars_per_second,
                                 self.settings.cjk_char_weight)
        self.metrics.utterances_total.inc(ended_by=reason)
        self.broadcast(protocol.event("utterance.interrupted", utterance=utt.id, reason=reason,
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
        self.broadcast(protocol.event("utterance.done", utterance=utt.id, played_ms=round(utt.played_ms, 1),
                                      ended_by=ended_by, frames=utt.frames, text_fed=utt.text_fed))

    def _on_sent(self, utterance: str, ms: float, t: float) -> None:
        utt = self.in_flight.get(utterance)
        if utt is None or utt.ended is not None:
            return
        utt.played_ms += ms
        self.metrics.audio_seconds_total.inc(ms / 1000.0)
        if utt.first_audio_t is None:
            utt.first_audio_t = t
            start = max(utt.created, utt.head_t or utt.created)
            model_ms = ((utt.first_frame_t or t) - max(start, utt.opened_t or start)) * 1000.0
            latency = t - start
            self.metrics.first_audio.observe(latency)
            if utt.first_frame_t is not None:
                self.metrics.first_audio_overhead.observe(max(0.0, t - utt.first_frame_t))
            self.broadcast(protocol.event("audio.first", utterance=utt.id, latency_ms=round(latency * 1000, 1),
                                          model_ms=round(max(0.0, model_ms), 1)))

    def _open_stream(self, utt: Utterance) -> bool:
        """Start synthesis of `utt` with the session's current voice; False (reported) if it cannot."""
        utt.voice = VoiceConfig(**vars(self.voice))
        v = utt.voice
        try:
            stream = self.engine.open_stream(v.voice, v.language, v.instruct, greedy=v.greedy, seed=v.seed)
        except ValueError as exc:
            self._report_error(protocol.INVALID_VOICE, f"utterance {utt.id}: {exc}")
            self._interrupt(utt, "error")
            return False
        utt.stream = stream
        utt.opened_t = self.loop.time()
        for fragment in utt.fragments:
            stream.push_text(fragment)
        if utt.flushed:
            stream.finish()
        return True

    def _report_error(self, code: str, message: str) -> None:
        self.metrics.errors_total.inc(code=code)
        self.broadcast(protocol.error_event(code, message))

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
                log.exception("session %s: playout failed", self.id)
                self._report_error(protocol.INTERNAL_ERROR, f"playout: {type(exc).__name__}: {exc}")
                self._interrupt(head, "error")

    async def _play(self, utt: Utterance) -> None:
        utt.head_t = self.loop.time()
        if utt.stream is None and not self._open_stream(utt):
            return
        self.broadcast(protocol.event("utterance.started", utterance=utt.id))
        stream = utt.stream
        assert stream is not None
        async for frame in stream:
            if utt.ended is not None:
                break
            if utt.first_frame_t is None:
                utt.first_frame_t = self.loop.time()
            sink = self.sink
            utt.consumed.append(frame.text_tokens_consumed)
            utt.frames += 1
            if not await sink.play(utt.id, frame.pcm):
                if utt.ended is not None:
                    break
                # the sink was replaced (audio mode changed) while this frame waited: it goes to the new one
                if not await self.sink.play(utt.id, frame.pcm):
                    break
        if utt.ended is not None:
            return
        end = stream.end
        if end is not None and end.reason == "error":
            self._report_error(protocol.ENGINE_ERROR, f"utterance {utt.id}: {end.error}")
            self._interrupt(utt, "error")
            return
        utt.generated = end.reason if end is not None else "eos"
        self._prefetch()
        await self.sink.drain(utt.id)
        self._done(utt)

    def _prefetch(self) -> None:
        """Open the next utterance's engine stream while the current one's tail plays."""
        nxt = next((u for u in self.queue if u.ended is None and u.head_t is None), None)
        if nxt is not None and nxt.stream is None:
            self._open_stream(nxt)

    # ---- shutdown --------------------------------------------------------------------------------
    async def shutdown(self, grace_s: float) -> None:
        """Graceful: no new text; the open utterance is flushed; in-flight ones get `grace_s` to finish."""
        self.accepting = False
        self.flush()
        deadline = self.loop.time() + grace_s
        while any(u.ended is None for u in self.queue) and self.loop.time() < deadline:
            self._changed.clear()
            try:
                await asyncio.wait_for(self._changed.wait(), max(0.0, deadline - self.loop.time()))
            except TimeoutError:
                break
        for utt in [u for u in self.queue if u.ended is None]:
            self._interrupt(utt, "shutdown")

    async def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self.accepting = False
        for utt in list(self.queue):
            if utt.ended is None:
                if utt.stream is not None:
                    utt.stream.cancel()
                utt.ended = "interrupted"
                self.metrics.utterances_total.inc(ended_by="closed")
        self.queue.clear()
        self.in_flight.clear()
        self._playout.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await self._playout
        self.sink.close()
        if self.peer is not None:
            peer, self.peer = self.peer, None
            await peer.close()
        await asyncio.gather(*self._closing_peers, return_exceptions=True)
