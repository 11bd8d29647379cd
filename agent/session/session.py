"""One conversation: its connections, its settings, its voice, its audio destination, and barge-in.

A session has one owner connection and any number of producers (up to max_connections) that joined with
its token. Every session event goes to all of them; errors and direct replies only to the sender. The
utterances themselves (text verbs, queue, playout, accounting) are agent.session.utterances.UtteranceQueue.

Nothing here awaits a send (agent.session.connection queues), so `on_speech` (called by the RTC peer on the event
loop) cancels the engine stream, drops queued audio and reports `utterance.interrupted` in one loop tick.

Voice in (agent.session.voice_in): the RTC peer's mic frames -> user turns -> transcripts / raw turn audio.
With `barge_in.min_words` > 0, speech over the agent interrupts only once a transcript of that turn has
that many words (docs/protocol.md, "Barge-in").

Tasks: the utterance queue's playout task, and the close of a failed RTC peer; `close()` ends them all.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode

from tokenizers import Tokenizer

from agent.media.ice import page_ice_servers
from agent.media.playout import AudioOut, PacedSink, RtcSink
from agent.metrics import Metrics
from agent.session import protocol
from agent.session.connection import Connection
from agent.session.protocol import ProtocolError
from agent.session.utterances import Utterance, UtteranceQueue
from agent.session.voice import SessionVoice
from agent.session.voice_in import Transcription, VoiceIn, count_words
from agent.settings import ENGINE_FRAME_MS, SAMPLE_RATE, SessionSettings
from agent.speech_in.service import RecognizerService
from agent.voices.catalogue import ModelInfo

if TYPE_CHECKING:
    from tts_engine import Engine

log = logging.getLogger(__name__)

__all__ = ["ModelInfo", "Session"]  # ModelInfo lives in agent.voices.catalogue; importing it from here keeps working


class Session:
    def __init__(self, engine: Engine, info: ModelInfo, settings: SessionSettings, metrics: Metrics,
                 tokenizer: Tokenizer | None = None, rtc_settings: Any = None, vad_defaults: Any = None,
                 stt: RecognizerService | None = None, replica: str | None = None,
                 join_base: str = "/v1/session") -> None:
        # `<replica>.sess_<random>`: a proxy routes a session's connections on the part before the first '.'
        self.id = ("" if replica is None else replica + ".") + "sess_" + secrets.token_hex(8)
        self.token = secrets.token_urlsafe(24)
        self.replica = replica
        self.join_url = f"{join_base}?{urlencode({'session': self.id, 'token': self.token})}"
        self.engine, self.info, self.settings, self.metrics = engine, info, settings, metrics
        self.tokenizer = tokenizer
        self.rtc_settings, self.vad_defaults = rtc_settings, vad_defaults
        self.loop = asyncio.get_running_loop()
        self.connections: dict[int, Connection] = {}
        self.voice = SessionVoice(engine, info)
        self.audio = "websocket"
        self.vad: dict[str, Any] = {}
        self.barge_in = settings.barge_in
        self.barge_in_min_words = 0
        self._word_gate: tuple[str, float | None] | None = None  # (turn id, onset_t): barge-in awaits words
        self.echo_guard_ms = settings.echo_guard_ms
        self.listener: Connection | None = None
        self.peer: Any = None  # agent.media.rtc.RtcPeer once a webrtc.offer was answered
        self._guarded_speech = False  # the current speech run started inside the echo guard
        self.closed = False
        self._closing_peers: set[asyncio.Task[None]] = set()
        self.out = AudioOut(self._paced_sink())
        self.utterances = UtteranceQueue(engine, settings, metrics, tokenizer, self.broadcast, self.out, self.voice,
                                         self.id)
        self.voice_in = VoiceIn(stt, settings, metrics, self.broadcast, self._on_words)

    # ---- connections -----------------------------------------------------------------------------
    def attach(self, conn: Connection, owner: bool) -> None:
        conn.role = "owner" if owner else "producer"
        self.connections[conn.id] = conn
        if owner and self.audio == "websocket" and self.listener is None:
            self.listener = conn
            self.out.replace(self._paced_sink())
        created = protocol.event("session.created", session=self.id, token=self.token, sample_rate=SAMPLE_RATE,
                                 frame_ms=ENGINE_FRAME_MS, role=conn.role, replica=self.replica,
                                 join_url=self.join_url, config=self.config(),
                                 **page_ice_servers(self.rtc_settings, self.id),
                                 limits={"max_utterance_chars": self.settings.max_utterance_chars,
                                         "max_queued_utterances": self.settings.max_queued_utterances},
                                 **self.info.describe())
        conn.send_event(created)

    def detach(self, conn: Connection) -> None:
        self.connections.pop(conn.id, None)
        if conn.id in self.voice_in.listeners:
            self.voice_in.detach(conn)
            self._voice_in_changed()
        if self.listener is conn:
            self.listener = None
            if self.audio == "websocket":
                self.out.replace(self._paced_sink())  # keep the timeline; nobody receives the audio

    def config(self) -> dict[str, Any]:
        voice = self.voice.config
        return {"voice": voice.voice, "language": voice.language, "instruct": voice.instruct,
                "seed": voice.seed, "greedy": voice.greedy, "audio": self.audio, "vad": self.vad,
                "barge_in": self.barge_in, "barge_in_min_words": self.barge_in_min_words,
                "echo_guard_ms": self.echo_guard_ms, "transcription": self.voice_in.config.describe()}

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
                self.utterances.append(msg.text, msg.id)
            elif isinstance(msg, protocol.TextFlush):
                self.utterances.flush()
            elif isinstance(msg, protocol.UtteranceCancel):
                self.utterances.cancel(msg)
            elif isinstance(msg, protocol.SessionUpdate):
                self.update(conn, msg)
            elif isinstance(msg, protocol.WebRtcOffer):
                await self.offer(conn, msg)
            elif isinstance(msg, protocol.VoicesList):
                # voices added or removed while serving show up here (reading the files is off the loop)
                self.info.adopt(await asyncio.to_thread(self.info.reload))
                conn.send_event(protocol.reply("voices", msg.id, **self.info.describe()))
        except ProtocolError as exc:
            conn.send_error(exc.code, exc.message, exc.msg_id)
        except Exception as exc:  # a bug must not end the session: report it
            log.exception("session %s: internal error", self.id)
            conn.send_error(protocol.INTERNAL_ERROR, f"{type(exc).__name__}: {exc}", msg_id)

    def update(self, conn: Connection, msg: protocol.SessionUpdate) -> None:
        try:
            voice, caveat = self.voice.check(msg.voice, msg.language, msg.instruct, msg.seed, msg.greedy)
        except ValueError as exc:  # VoiceError (the catalogue's rules) or the engine's refusal
            raise ProtocolError(protocol.INVALID_VOICE, str(exc), msg.id) from None
        vad = self.vad
        if msg.vad is not None:
            vad = {**self.vad, **msg.vad}
            self._check_vad(vad, msg.id)
        transcription = self._check_voice_in(conn, msg)
        # all checked: apply
        self.voice.config = voice
        self.vad = vad
        if msg.barge_in is not None:
            self.barge_in = msg.barge_in
        if msg.barge_in_min_words is not None:
            self.barge_in_min_words = msg.barge_in_min_words
            if msg.barge_in_min_words == 0:
                self._end_word_gate()
        self.voice_in.config = transcription
        self.voice_in.need_words = self.barge_in_min_words > 0
        if msg.input_audio is not None:
            self.voice_in.subscribe(conn, msg.input_audio == "pcm16")
        if msg.echo_guard_ms is not None:
            self.echo_guard_ms = float(msg.echo_guard_ms)
        if msg.audio is not None:
            self._set_audio(msg.audio, conn)
        if msg.vad is not None and self.peer is not None and hasattr(self.peer, "set_vad"):
            self.peer.set_vad(self._vad_settings())
        self._voice_in_changed()
        if caveat is not None:  # the only one: an instruction the model ignores
            conn.send_event(protocol.reply("warning", msg.id, code=protocol.INSTRUCT_IGNORED, message=caveat))
        self.broadcast(protocol.event("session.updated", config=self.config()))

    def _check_voice_in(self, conn: Connection, msg: protocol.SessionUpdate) -> Transcription:
        """transcription / barge_in.min_words / input_audio against what this server and session have."""
        config = self.voice_in.config
        if msg.transcription is not None:
            config = Transcription(**{**config.describe(), **msg.transcription})
        no_stt = self.voice_in.service is None
        if no_stt and msg.transcription is not None and msg.transcription.get("enabled"):
            raise ProtocolError(protocol.STT_UNAVAILABLE, "transcription needs a speech recognizer: this server "
                                                          "runs without one (voicegate serve --stt)", msg.id)
        if no_stt and msg.barge_in_min_words:
            raise ProtocolError(protocol.STT_UNAVAILABLE, "barge_in.min_words needs a speech recognizer: this "
                                                          "server runs without one (voicegate serve --stt)", msg.id)
        if msg.input_audio == "pcm16":
            if self.peer is None:
                raise ProtocolError(protocol.INPUT_AUDIO_UNAVAILABLE, "input_audio: this session has no WebRTC "
                                                                      "mic yet (send webrtc.offer first)", msg.id)
            listens = msg.audio == "websocket" or (msg.audio is None and self.audio == "websocket"
                                                   and self.listener is conn)
            if listens:
                raise ProtocolError(protocol.INPUT_AUDIO_UNAVAILABLE, "input_audio: this connection is the "
                                                                      "audio \"websocket\" listener (its binary "
                                                                      "frames are the speech); ask from another "
                                                                      "connection", msg.id)
        return config

    def _voice_in_changed(self) -> None:
        """Rebuild the turn cutter if its settings changed; hook the mic path to it (or unhook it)."""
        try:
            vad = self._vad_settings()
        except (ImportError, TypeError, ValueError):
            vad = None
        self.voice_in.reconfigure(vad)
        if self.peer is not None:
            self.peer.on_frame = self.voice_in.hook

    def _check_vad(self, vad: dict[str, Any], msg_id: str | None) -> None:
        try:
            self._vad_settings(vad)
        except ImportError:
            pass  # checked when a peer is created
        except (TypeError, ValueError) as exc:
            raise ProtocolError(protocol.INVALID_MESSAGE, f"session.update: vad: {exc}", msg_id) from None

    def _vad_settings(self, vad: dict[str, Any] | None = None) -> Any:
        import dataclasses

        from agent.media.vad import VadSettings

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

    def _set_audio(self, mode: str, conn: Connection) -> None:
        self.audio = mode
        self.listener = None if mode == "none" else conn
        if mode == "websocket":  # its binary frames are the speech now
            self.voice_in.subscribe(conn, False)
        # webrtc before the peer answered: the timeline goes on, unheard, until the track exists
        self.out.replace(self._rtc_sink() if mode == "webrtc" and self.peer is not None else self._paced_sink())

    def _rtc_sink(self) -> RtcSink:
        return RtcSink(self.peer.outbound, self.settings.rtc_queue_ms, self._on_sent,
                       self.settings.webrtc_playout_delay_ms)

    async def offer(self, conn: Connection, msg: protocol.WebRtcOffer) -> None:
        try:
            from agent.media.rtc import RtcPeer, RtcSettings
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
            self.out.replace(self._paced_sink())
            await old.close()
        rtc = self.rtc_settings if self.rtc_settings is not None else RtcSettings()
        peer = RtcPeer(rtc.for_session(self.id), vad, self.on_speech)
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
        peer.on_mic_end = self.voice_in.end_of_mic
        self._voice_in_changed()
        self.audio = "webrtc"
        self.listener = conn
        self.out.replace(self._rtc_sink())
        conn.send_event(protocol.reply("webrtc.answer", msg.id, sdp=answer))

    def _on_peer_state(self, peer: Any, state: str) -> None:
        if peer is not self.peer:
            return  # a replaced peer
        self.broadcast(protocol.event("webrtc.state", state=state))
        if state in ("failed", "closed") and not self.closed:
            # nobody pulls the track any more: keep the timeline going without it
            self.peer = None
            self.out.replace(self._paced_sink())  # audio "webrtc": paced, sent nowhere
            self._closing_peers.add(self.loop.create_task(peer.close(), name=f"peer-close-{self.id}"))
            for task in list(self._closing_peers):
                if task.done():
                    self._closing_peers.discard(task)

    # ---- barge-in --------------------------------------------------------------------------------
    def on_speech(self, kind: str, t: float, onset_t: float | None) -> None:
        """VAD decision from the RTC peer (on the event loop): barge-in happens right here, in this tick.

        `t` is when the deciding mic frame arrived (loop clock); `onset_t`, the estimated speech start.
        """
        turn = {"turn_id": self.voice_in.turn_id()} if self.voice_in.active else {}
        if kind == "speech_started":
            targets: list[Utterance] = []
            if self._playing() and self.barge_in:
                if self._in_echo_guard():
                    self._guarded_speech = True  # this whole speech run is ignored (see docs: echo guard)
                elif self.barge_in_min_words > 0 and self.voice_in.transcribing and turn.get("turn_id"):
                    if self._word_gate is None or self._word_gate[0] != turn["turn_id"]:
                        self._word_gate = (turn["turn_id"], onset_t)  # interrupt once it has the words
                        self.voice_in.fast_partials(True)
                else:
                    targets = self.utterances.live()
            self.broadcast(protocol.event("user.speech_started", interrupted=[u.id for u in targets],
                                          ignored=self._guarded_speech, **turn))
            if targets:
                self._barge_in(targets, t, onset_t)
        elif kind == "speech_stopped":
            self._guarded_speech = False
            self.broadcast(protocol.event("user.speech_stopped", **turn))

    def _on_words(self, turn_id: str, text: str, final: bool) -> None:
        """A transcript (partial or final) of a turn: barge-in once the awaited turn has min_words words."""
        gate = self._word_gate
        if gate is None or gate[0] != turn_id:
            return
        if count_words(text) >= self.barge_in_min_words:
            self._end_word_gate()
            targets = self.utterances.live() if self._playing() and self.barge_in else []
            if targets:
                self.utterances.barge_in(targets)
                if gate[1] is not None:
                    self.metrics.bargein_onset.observe(max(0.0, self.loop.time() - gate[1]))
        elif final:  # too few words: it interrupts nothing
            self._end_word_gate()

    def _end_word_gate(self) -> None:
        if self._word_gate is not None:
            self._word_gate = None
            self.voice_in.fast_partials(False)

    def _playing(self) -> bool:
        return self.utterances.playing() is not None

    def _in_echo_guard(self) -> bool:
        if self.echo_guard_ms <= 0:
            return False
        head = self.utterances.playing()
        if head is None or head.first_audio_t is None:
            return False
        return (self.loop.time() - head.first_audio_t) * 1000.0 < self.echo_guard_ms

    def _barge_in(self, targets: list[Utterance], t: float, onset_t: float | None) -> None:
        """Cancel the engine streams, drop queued audio, report: everything synchronous."""
        self.utterances.barge_in(targets)
        now = self.loop.time()
        self.metrics.bargein.observe(max(0.0, now - t))
        if onset_t is not None:
            self.metrics.bargein_onset.observe(max(0.0, now - onset_t))

    def _on_sent(self, utterance: str, ms: float, t: float) -> None:
        self.utterances.on_sent(utterance, ms, t)

    # ---- ending ----------------------------------------------------------------------------------
    async def shutdown(self, grace_s: float) -> None:
        """Graceful: no new text; the open utterance is flushed; in-flight ones get `grace_s` to finish."""
        await self.utterances.shutdown(grace_s)

    async def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        await self.utterances.close()
        self.out.close()
        if self.peer is not None:
            peer, self.peer = self.peer, None
            await peer.close()
        await asyncio.gather(*self._closing_peers, return_exceptions=True)
        await self.voice_in.close()
