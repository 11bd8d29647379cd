"""WebRTC media for one listener: the outbound speech track, the inbound mic -> VAD path, ICE on loopback.

Every choice here was measured with aiortc 1.16 and Chromium 156 (tests/web, bench/bargein.py).

Outbound (`OutboundAudio`): engine frames (80 ms, 24 kHz) go through ONE persistent resampler to 48 kHz into a
tagged FIFO and leave `recv()` as 20 ms / 960-sample s16 mono frames with pts = running sample count, paced on
an absolute monotonic clock that starts at the first `recv()` (late frames catch up; the schedule never
drifts), and silence whenever nothing is queued (80 ms frames and pauses both break Chrome's playback).

Inbound (`RtcPeer`): the remote mic track is read by one task: frames -> mono s16 at the VAD rate ->
`VoiceActivityDetector` -> `on_speech(event, t, onset_t)` on the loop.

Receive latency. aiortc's audio jitter buffer holds ~80 ms (prefetch 4) and stays ~280 ms behind after a
single lost packet. With `RtcSettings.receive_buffer = "low_latency"` (the default) this peer's audio receiver
gets `LowLatencyAudioBuffer` instead (agent/media/aiortc_patches.py): each Opus packet is released as soon as it is
next in sequence; a hole is given up on once `reorder_packets` later packets have arrived; ready packets beyond
`max_backlog` are dropped. Extra latency: 0 in order, at most `max_backlog` packets (20 ms) after loss or
reordering. Measured (bench/bargein.py): mic frame -> VAD ~5-10 ms instead of ~85-90 ms.

ICE. `iceServers` comes from `RtcSettings.ice_servers` (default [] = no STUN; aiortc's own default would be
Google's STUN server); with `turn_secret`, `for_session(name)` gives TURN entries that session's credentials
(agent/media/ice.py; the page gets the same ones in session.created). aioice never offers 127.0.0.1; `RtcSettings.include_loopback` (default True) adds it
and `host_addresses` replaces the interface list (tests use ["127.0.0.1"] for loopback-only), for this peer's
gathering only (agent/media/aiortc_patches.py `use_host_addresses`).

Interface:
- `on_speech(event, t, onset_t)`: `onset_t` is the VAD's estimate of when the speech run began (same clock)
  with "speech_started", None with "speech_stopped".
- `RtcPeer.on_frame(frame, speech, t)` (None: off, no extra work): every VAD frame with its speech flag, before
  the events those frames decided; `RtcPeer.on_mic_end()`: the mic track ended (or the peer closed).
- `RtcPeer.set_vad(settings)`, `RtcPeer.on_state` (connection state changes), `RtcPeer.vad` (the detector),
  `RtcPeer.mic_stats` (frames, recent (pts, arrival) and (event, t, t_handled)), `RtcPeer.receive_buffer`
  (the one in use).
- `OutboundAudio(input_rate=24000, fade_ms, resync_after_ms)`: any input rate (the test/bench mic is an
  OutboundAudio at 48000); `OutboundAudio.stats` (frames, underruns, recv() lateness, last audio / flush).
- bench/rtc_client.py: `RtcClient`, the aiortc listener used by tests and benches.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace

import av
import numpy as np
from aiortc import (
    MediaStreamTrack,
    RTCConfiguration,
    RTCIceServer,
    RTCPeerConnection,
    RTCSessionDescription,
)
from aiortc.mediastreams import MediaStreamError

from agent.media.aiortc_patches import LowLatencyAudioBuffer, install_receive_buffer, use_host_addresses
from agent.media.audio import WEBRTC_RATE, Resampler, audio_frame, fade_out
from agent.media.ice import DEFAULT_TURN_TTL_S, session_ice_servers
from agent.media.vad import SPEECH_STARTED, MicConverter, OnFrame, VadSettings, VoiceActivityDetector
from agent.settings import RTP_FRAME_MS

logger = logging.getLogger(__name__)

RTP_FRAME_SAMPLES = WEBRTC_RATE * RTP_FRAME_MS // 1000  # 960


@dataclass(frozen=True)
class RtcSettings:
    # [{"urls": "stun:host:port" | [...], "username": ..., "credential": ...}] ("url" also accepted); [] = none
    ice_servers: list[dict] = field(default_factory=list)
    host_addresses: list[str] | None = None  # ICE host candidate addresses; None = every interface address
    include_loopback: bool = True  # add 127.0.0.1 to the interface addresses (aioice leaves it out)
    receive_buffer: str = "low_latency"  # "low_latency" (LowLatencyAudioBuffer) | "aiortc" (prefetch 4)
    reorder_packets: int = 2  # low_latency: later packets that arrive before a missing one is given up
    max_backlog: int = 1  # low_latency: ready packets held behind the one released (older ones dropped)
    fade_ms: float = 10.0  # default fade of OutboundAudio.flush()
    resync_after_ms: float = 500.0  # outbound: a recv() later than this re-anchors the clock (no burst)
    # TURN entries of ice_servers without credentials get per-session ones from this shared secret
    # (coturn's static-auth-secret; agent/media/ice.py); never logged (repr=False)
    turn_secret: str | None = field(default=None, repr=False)
    turn_ttl_s: int = DEFAULT_TURN_TTL_S
    relay_only: bool = False  # the page's iceTransportPolicy "relay" (media must go through TURN)

    def __post_init__(self) -> None:
        if self.receive_buffer not in ("low_latency", "aiortc"):
            raise ValueError(f"receive_buffer must be 'low_latency' or 'aiortc', got {self.receive_buffer!r}")
        for server in self.ice_servers:
            if not isinstance(server, dict) or not (server.get("urls") or server.get("url")):
                raise ValueError(f"ice server needs 'urls' (or 'url'): {server!r}")

    def for_session(self, name: str) -> RtcSettings:
        """These settings with the TURN credentials minted for session `name` (the server's own peer)."""
        if not self.turn_secret:
            return self
        return replace(self, ice_servers=session_ice_servers(self.ice_servers, self.turn_secret, self.turn_ttl_s,
                                                             name), turn_secret=None)

    def rtc_ice_servers(self) -> list[RTCIceServer]:
        return [RTCIceServer(urls=s.get("urls") or s["url"], username=s.get("username"),
                             credential=s.get("credential")) for s in self.ice_servers]


def apply_receive_buffer(pc: RTCPeerConnection, settings: RtcSettings) -> str:
    """Install the receive buffer the settings ask for; returns the one in use."""
    if settings.receive_buffer == "low_latency" and install_receive_buffer(pc, settings.reorder_packets,
                                                                           settings.max_backlog):
        return "low_latency"
    return "aiortc"


__all__ = ["RTP_FRAME_MS", "RTP_FRAME_SAMPLES", "LowLatencyAudioBuffer", "MicStats", "OnSpeech", "OutboundAudio",
           "OutboundStats", "RtcPeer", "RtcSettings", "apply_receive_buffer", "use_host_addresses"]


# ------------------------------------------------------------------------------------------ outbound track

@dataclass
class OutboundStats:
    frames: int = 0  # frames returned by recv()
    audio_frames: int = 0  # of which carried queued audio (the rest: silence)
    underruns: int = 0  # frames that had some audio but not 20 ms of it (zero-padded)
    resyncs: int = 0  # clock re-anchored after a stall longer than resync_after_ms
    last_audio_pts: int | None = None  # the latest frame that carried queued audio: its pts ...
    last_audio_t: float = float("nan")  # ... and when it left recv()
    flushes: int = 0
    last_flush_ms: float = 0.0  # the ms the last flush() found queued (dropped + faded)
    # recv() return time minus its scheduled time (ms), the last 3000 frames (bench/bargein.py reports them)
    lateness_ms: collections.deque = field(default_factory=lambda: collections.deque(maxlen=3000))


class OutboundAudio(MediaStreamTrack):
    """The speech track sent to the listener: 20 ms s16 mono 48 kHz frames, paced, silence when idle.

    enqueue()/flush()/queued_ms() are called on the event loop (the session's task); recv() is called by
    aiortc's sender task. Memory is bounded by what the caller enqueues (the session bounds the engine's lead).
    """

    kind = "audio"

    def __init__(self, input_rate: int = 24000, fade_ms: float = 10.0, resync_after_ms: float = 500.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__()
        self.fade_ms = fade_ms
        self.resync_after_ms = resync_after_ms
        self.on_sent: Callable[[str, float], None] | None = None
        self.stats = OutboundStats()
        self._clock = clock
        self._resampler = Resampler(input_rate, WEBRTC_RATE)
        self._resampler_utterance: str | None = None  # whose samples the resampler still holds
        self._fifo: collections.deque[tuple[str, np.ndarray]] = collections.deque()  # 48 kHz, tagged
        self._queued = 0  # samples in _fifo
        self._t0: float | None = None  # clock at the first recv()
        self._n = 0  # frames returned so far (pts = _n * 960)

    # -- producer side
    def enqueue(self, pcm24k: np.ndarray, utterance: str) -> None:
        """Queue one engine frame (int16 mono at input_rate, normally 1920 samples = 80 ms) for `utterance`."""
        if not isinstance(pcm24k, np.ndarray) or pcm24k.dtype != np.int16 or pcm24k.ndim != 1:
            raise TypeError("pcm24k must be a 1-D int16 numpy array")
        if self.readyState != "live" or len(pcm24k) == 0:
            return
        if self._resampler_utterance is not None and self._resampler_utterance != utterance:
            self._push(self._resampler_utterance, self._resampler.drain())  # the previous utterance's tail
        self._resampler_utterance = utterance
        self._push(utterance, self._resampler.push(pcm24k))

    def flush(self, fade_ms: float | None = None) -> float:
        """Drop everything queued now; the next `fade_ms` of it are kept with a linear fade to zero (no click).

        Returns the milliseconds dropped (not counting the fade). Audio already returned by recv() is gone.
        """
        fade_ms = self.fade_ms if fade_ms is None else fade_ms
        before = self._queued
        self.stats.flushes += 1
        self.stats.last_flush_ms = before * 1000.0 / WEBRTC_RATE
        self._resampler.reset()
        self._resampler_utterance = None
        fade_n = min(self._queued, max(0, round(fade_ms * WEBRTC_RATE / 1000)))
        head = self._take(fade_n)
        self._fifo.clear()
        self._queued = 0
        if head:
            faded = fade_out(np.concatenate([pcm for _, pcm in head]))
            start = 0
            for utterance, pcm in head:
                self._push(utterance, faded[start:start + len(pcm)])
                start += len(pcm)
        return (before - fade_n) * 1000.0 / WEBRTC_RATE

    def queued_ms(self) -> float:
        return self._queued * 1000.0 / WEBRTC_RATE

    # -- aiortc side
    async def recv(self) -> av.AudioFrame:
        if self.readyState != "live":
            raise MediaStreamError
        now = self._clock()
        if self._t0 is None:
            self._t0 = now
        target = self._t0 + self._n * RTP_FRAME_MS / 1000.0
        if target > now:
            await asyncio.sleep(target - now)
            if self.readyState != "live":
                raise MediaStreamError
        elif (now - target) * 1000.0 > self.resync_after_ms:
            self._t0 += now - target  # a stall: skip ahead instead of sending a long burst
            target = now
            self.stats.resyncs += 1
        self.stats.lateness_ms.append(max(0.0, (self._clock() - target) * 1000.0))
        pcm, parts = self._next_frame()
        frame = audio_frame(pcm, WEBRTC_RATE, self._n * RTP_FRAME_SAMPLES)
        self._n += 1
        self.stats.frames += 1
        if parts:
            self.stats.audio_frames += 1
            self.stats.last_audio_pts, self.stats.last_audio_t = frame.pts, self._clock()
            if self.on_sent is not None:
                for utterance, samples in parts:
                    try:
                        self.on_sent(utterance, samples * 1000.0 / WEBRTC_RATE)
                    except Exception:
                        logger.exception("on_sent callback failed")
        return frame

    # -- internals
    def _push(self, utterance: str, pcm: np.ndarray) -> None:
        if len(pcm):
            self._fifo.append((utterance, pcm))
            self._queued += len(pcm)

    def _take(self, n: int) -> list[tuple[str, np.ndarray]]:
        """Pop up to n samples off the FIFO, as tagged pieces."""
        out: list[tuple[str, np.ndarray]] = []
        while n > 0 and self._fifo:
            utterance, pcm = self._fifo[0]
            if len(pcm) <= n:
                self._fifo.popleft()
                piece = pcm
            else:
                piece, self._fifo[0] = pcm[:n], (utterance, pcm[n:])
            out.append((utterance, piece))
            self._queued -= len(piece)
            n -= len(piece)
        return out

    def _next_frame(self) -> tuple[np.ndarray, list[tuple[str, int]]]:
        """960 samples and, per utterance in them, how many samples were its audio."""
        if self._queued < RTP_FRAME_SAMPLES and self._resampler_utterance is not None:
            # The queue runs dry (the end of an utterance, or the engine fell behind): push out what the
            # resampler still holds (32 samples) so that the utterance ends complete.
            self._push(self._resampler_utterance, self._resampler.drain())
            self._resampler_utterance = None
        pieces = self._take(RTP_FRAME_SAMPLES)
        if not pieces:
            return np.zeros(RTP_FRAME_SAMPLES, np.int16), []
        pcm = pieces[0][1] if len(pieces) == 1 else np.concatenate([p for _, p in pieces])
        if len(pcm) < RTP_FRAME_SAMPLES:
            self.stats.underruns += 1
            pcm = np.concatenate([pcm, np.zeros(RTP_FRAME_SAMPLES - len(pcm), np.int16)])
        parts: dict[str, int] = {}
        for utterance, piece in pieces:
            parts[utterance] = parts.get(utterance, 0) + len(piece)
        return pcm, list(parts.items())


# --------------------------------------------------------------------------------------------------- peer

OnSpeech = Callable[[str, float, float | None], None]  # (event, t, onset_t): see the module docstring


@dataclass
class MicStats:
    frames: int = 0  # mic frames read
    # recent mic frames (pts, arrival time) and VAD events (event, t_event, t after on_speech returned)
    arrivals: collections.deque = field(default_factory=lambda: collections.deque(maxlen=256))
    events: collections.deque = field(default_factory=lambda: collections.deque(maxlen=64))


class RtcPeer:
    """One listener's RTCPeerConnection: our OutboundAudio out, their mic in (-> VAD -> on_speech)."""

    def __init__(self, settings: RtcSettings, vad: VadSettings,
                 on_speech: OnSpeech) -> None:
        self.settings = settings
        self.vad = VoiceActivityDetector(vad)
        self.on_speech = on_speech
        self.on_state: Callable[[str], None] | None = None  # connection state changes, on the loop
        self.on_frame: OnFrame | None = None  # each VAD frame and its speech flag (voice in); None: off
        self.on_mic_end: Callable[[], None] | None = None  # the mic track ended or the peer closed
        self.outbound = OutboundAudio(fade_ms=settings.fade_ms, resync_after_ms=settings.resync_after_ms)
        self.mic_stats = MicStats()
        self.receive_buffer = settings.receive_buffer  # what is actually in use, after answer()
        self._pc: RTCPeerConnection | None = None
        self._tasks: set[asyncio.Task] = set()
        self._closed = False

    @property
    def connection_state(self) -> str:
        if self._closed:
            return "closed"
        return "new" if self._pc is None else self._pc.connectionState

    async def answer(self, offer_sdp: str) -> str:
        """Take the listener's offer, return our complete answer SDP (all candidates in it, no trickle)."""
        if self._closed:
            raise RuntimeError("peer is closed")
        if self._pc is not None:
            raise RuntimeError("answer() was already called (renegotiation is not supported)")
        pc = RTCPeerConnection(RTCConfiguration(iceServers=self.settings.rtc_ice_servers()))
        self._pc = pc
        pc.on("track", self._on_track)
        pc.on("connectionstatechange", self._on_connection_state)
        try:
            await pc.setRemoteDescription(RTCSessionDescription(sdp=offer_sdp, type="offer"))
        except Exception as exc:
            raise ValueError(f"bad SDP offer: {exc}") from exc
        if not any(t.kind == "audio" for t in pc.getTransceivers()):
            raise ValueError("the offer has no audio section")
        pc.addTrack(self.outbound)
        self.receive_buffer = apply_receive_buffer(pc, self.settings)
        answer = await pc.createAnswer()
        with use_host_addresses(self.settings.host_addresses, self.settings.include_loopback):
            await pc.setLocalDescription(answer)  # gathers every candidate before returning
        return pc.localDescription.sdp

    def set_vad(self, settings: VadSettings) -> None:
        """New VAD settings from now on (a fresh detector that keeps the speaking / quiet state)."""
        if settings == self.vad.settings:
            return
        old, self.vad = self.vad, VoiceActivityDetector(settings)
        self.vad.speaking, self.vad.onset_t = old.speaking, old.onset_t

    async def close(self) -> None:
        """Stop the mic task, the track and the connection; idempotent."""
        if self._closed:
            return
        self._closed = True
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()
        self.outbound.stop()
        if self._pc is not None:
            await self._pc.close()

    def _on_track(self, track: MediaStreamTrack) -> None:
        if track.kind != "audio" or self._closed:
            return
        if any(not t.done() for t in self._tasks):
            logger.info("ignoring a second remote audio track")
            return
        task = asyncio.get_running_loop().create_task(self._read_mic(track), name="rtc-mic")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _on_connection_state(self) -> None:
        state = self.connection_state
        logger.debug("peer connection %s", state)
        if self.on_state is not None:
            try:
                self.on_state(state)
            except Exception:
                logger.exception("on_state callback failed")

    async def _read_mic(self, track: MediaStreamTrack) -> None:
        try:
            await self._read_frames(track)
        finally:
            if self.on_mic_end is not None:
                try:
                    self.on_mic_end()
                except Exception:
                    logger.exception("on_mic_end callback failed")

    async def _read_frames(self, track: MediaStreamTrack) -> None:
        converter = MicConverter(self.vad.settings.sample_rate, align=self.vad.settings.frame_samples)
        while True:
            try:
                frame = await track.recv()
            except MediaStreamError:
                return
            t = time.monotonic()
            vad = self.vad.settings
            if (converter.rate, converter.align) != (vad.sample_rate, vad.frame_samples):  # set_vad()
                converter = MicConverter(vad.sample_rate, align=vad.frame_samples)
            try:
                events = self.vad.process(converter.convert(frame), t, self.on_frame)
            except Exception:  # a frame we cannot convert (or a failing on_frame) must not end barge-in
                logger.exception("mic frame dropped")
                continue
            stats = self.mic_stats
            stats.frames += 1
            stats.arrivals.append((frame.pts, t))
            for event, t_event in events:
                try:
                    self.on_speech(event, t_event, self.vad.onset_t if event == SPEECH_STARTED else None)
                except Exception:
                    logger.exception("on_speech callback failed")
                stats.events.append((event, t_event, time.monotonic()))
