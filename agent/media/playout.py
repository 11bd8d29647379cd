"""Where a session's audio goes: a paced virtual listener (headless modes) or the WebRTC track.

A sink takes engine frames (80 ms, 24 kHz) one at a time from the session's playout task. `play()` returns
when the frame has been accepted (this is the backpressure that keeps the engine at most its lead ahead),
or False when the utterance ended meanwhile. Each sink reports audio that left the server through
`on_sent(utterance_id, ms, t)`, which is what `played_ms` counts.

PacedSink (audio "websocket" and "none") models a listener that plays in real time from the moment audio
reaches it: `play_end` is when that listener's buffer runs dry. A frame leaves when the listener holds at
most `lead_ms` of audio, so the client buffers a small, bounded amount and `played_ms` stays within the
lead of what it has actually played. An engine frame that arrives late starts the clock afresh (the
listener had a gap) instead of bursting to catch up.

RtcSink hands frames to agent.media.rtc.OutboundAudio, which paces itself (20 ms at 48 kHz on an absolute clock);
the sink only keeps `queue_ms` of engine audio queued there, so a flush drops little.

AudioOut is a session's destination: one sink at a time, replaced when the audio mode or the WebRTC peer
changes (the old one is closed, so a frame waiting in it returns False and goes to the new one).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import numpy as np

from agent.metrics import Metrics
from agent.settings import ENGINE_FRAME_MS, RTP_FRAME_MS

OnSent = Callable[[str, float, float], None]  # (utterance id, ms, loop time)


class PacedSink:
    """Headless playout: frames leave on the listener's real-time clock, at most `lead_ms` early."""

    def __init__(self, lead_ms: float, on_sent: OnSent, send: Callable[[bytes], None] | None,
                 metrics: Metrics | None = None) -> None:
        self.lead = lead_ms / 1000.0
        self.on_sent, self.send, self.metrics = on_sent, send, metrics
        self.kind = "websocket" if send is not None else "none"
        self.listener_delay_ms = 0.0  # the listener's buffer is modelled exactly (see buffered_ms)
        self._loop = asyncio.get_running_loop()
        self._play_end = 0.0  # loop time when the listener's buffer runs dry
        self._waiter: asyncio.Future[None] | None = None
        self._epoch = 0  # bumped by flush(): a frame waiting across a flush is not sent
        self.closed = False

    async def play(self, utterance: str, pcm: np.ndarray) -> bool:
        epoch = self._epoch
        due = self._play_end - self.lead
        waited = due > self._loop.time()
        if waited:
            self._waiter = self._loop.create_future()
            handle = self._loop.call_at(due, _resolve, self._waiter)
            try:
                await self._waiter
            finally:
                handle.cancel()
                self._waiter = None
        if epoch != self._epoch or self.closed:
            return False
        now = self._loop.time()
        if waited and self.metrics is not None:
            self.metrics.frame_jitter.observe(max(0.0, now - due))
        if self.send is not None:
            self.send(pcm.tobytes())
        self._play_end = max(self._play_end, now) + ENGINE_FRAME_MS / 1000.0
        self.on_sent(utterance, float(ENGINE_FRAME_MS), now)
        return True

    def buffered_ms(self) -> float:
        """Audio sent but not yet played by the (modelled) listener."""
        return max(0.0, self._play_end - self._loop.time()) * 1000.0

    def flush(self) -> float:
        """Stop now: a frame waiting for its slot is not sent; the listener drops what it holds."""
        dropped = self.buffered_ms()
        self._epoch += 1
        self._play_end = self._loop.time()
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)
        return dropped

    async def drain(self, utterance: str) -> None:
        return None

    def close(self) -> None:
        self.closed = True
        self.flush()


def _resolve(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)


class RtcSink:
    """WebRTC playout through agent.media.rtc.OutboundAudio (which paces and resamples)."""

    kind = "webrtc"

    def __init__(self, outbound: Any, queue_ms: float, on_sent: OnSent, listener_delay_ms: float) -> None:
        self.outbound = outbound
        self.queue_ms = queue_ms
        self.on_sent = on_sent
        self.listener_delay_ms = listener_delay_ms
        self._loop = asyncio.get_running_loop()
        self._room = asyncio.Event()
        self._enqueued: dict[str, float] = {}  # utterance -> ms handed to the track
        self._sent: dict[str, float] = {}  # utterance -> ms the track reported sent
        self._drained: dict[str, asyncio.Future[None]] = {}
        self._epoch = 0
        self.closed = False
        outbound.on_sent = self._on_track_sent

    def _on_track_sent(self, utterance: str, ms: float) -> None:
        now = self._loop.time()
        self._room.set()
        if utterance not in self._enqueued:
            return  # flushed meanwhile, or another sink's audio
        self._sent[utterance] = self._sent.get(utterance, 0.0) + ms
        self.on_sent(utterance, ms, now)
        self._check_drained(utterance)

    def _check_drained(self, utterance: str) -> None:
        fut = self._drained.get(utterance)
        if fut is None or fut.done():
            return
        # the track zero-pads the last RTP frame of an utterance, so "all sent" is within one frame
        if self._sent.get(utterance, 0.0) >= self._enqueued.get(utterance, 0.0) - RTP_FRAME_MS + 1e-6 \
                or self.outbound.queued_ms() <= 0.0:
            fut.set_result(None)

    async def play(self, utterance: str, pcm: np.ndarray) -> bool:
        epoch = self._epoch
        while self.outbound.queued_ms() > self.queue_ms and epoch == self._epoch and not self.closed:
            self._room.clear()
            await self._room.wait()
        if epoch != self._epoch or self.closed:
            return False
        self.outbound.enqueue(pcm, utterance)
        self._enqueued[utterance] = self._enqueued.get(utterance, 0.0) + ENGINE_FRAME_MS
        return True

    def buffered_ms(self) -> float:
        return 0.0

    async def drain(self, utterance: str) -> None:
        """Until everything enqueued for `utterance` has left (or the sink was flushed / closed)."""
        if utterance not in self._enqueued:
            return
        fut = self._drained.setdefault(utterance, self._loop.create_future())
        self._check_drained(utterance)
        try:
            await fut
        finally:
            self._forget(utterance)

    def _forget(self, utterance: str) -> None:
        self._enqueued.pop(utterance, None)
        self._sent.pop(utterance, None)
        fut = self._drained.pop(utterance, None)
        if fut is not None and not fut.done():
            fut.set_result(None)

    def flush(self, fade_ms: float = 10.0) -> float:
        dropped = float(self.outbound.flush(fade_ms))
        self._epoch += 1
        self._room.set()
        for utterance in list(self._enqueued):
            self._forget(utterance)
        return dropped

    def close(self) -> None:
        self.closed = True
        self.flush()
        if self.outbound.on_sent == self._on_track_sent:
            self.outbound.on_sent = None


class AudioOut:
    """Where a session's audio goes now: `sink`, replaced as a whole (`replace`), cut on an interruption."""

    def __init__(self, sink: PacedSink | RtcSink) -> None:
        self.sink = sink

    def replace(self, sink: PacedSink | RtcSink) -> None:
        old, self.sink = self.sink, sink
        if old is not sink:
            old.close()

    def cut(self, played_ms: float) -> float:
        """Drop the audio queued for the listener now; returns how much of `played_ms` (sent) was heard."""
        sink = self.sink
        unheard = sink.buffered_ms() + (sink.listener_delay_ms if played_ms else 0.0)
        sink.flush()
        return max(0.0, played_ms - unheard)

    def close(self) -> None:
        self.sink.close()
