"""A minimal aiortc listener for tests, benchmarks and demos: offers a mic track, records what it receives.

    client = RtcClient()                       # loopback-only ICE, low-latency receive buffer
    answer = await peer.answer(await client.offer())   # or over the WebSocket: webrtc.offer / webrtc.answer
    await client.accept(answer)
    client.speak(pcm48k)                       # the mic plays this (paced, silence before and after)
    client.received                            # [(arrival t, peak |sample|, pts)] per 20 ms frame

The mic is an `OutboundAudio` at 48 kHz (the same paced track the server sends with), so `speak()` audio
leaves the mic's recv() on the 20 ms grid and `mic_onsets` holds the exact time its first frame did.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass

import numpy as np
from aiortc import MediaStreamTrack, RTCConfiguration, RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError

from agent.media.aiortc_patches import use_host_addresses
from agent.media.rtc import OutboundAudio, RtcSettings, apply_receive_buffer


@dataclass(frozen=True)
class Received:
    t: float  # time.monotonic() when the decoded frame came out of the remote track
    peak: int  # max |sample| (0 = digital silence)
    pts: int | None
    samples: int


class RtcClient:
    def __init__(self, mic: bool = True, host_addresses: list[str] | None = None,
                 receive_buffer: str = "low_latency", keep_pcm: bool = False) -> None:
        self.settings = RtcSettings(host_addresses=host_addresses or ["127.0.0.1"], receive_buffer=receive_buffer)
        self.pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        self.mic: OutboundAudio | None = OutboundAudio(input_rate=48000) if mic else None
        self.mic_onsets: dict[str, float] = {}  # speak() tag -> when its first frame left the mic's recv()
        self.mic_onset_pts: dict[str, int] = {}  # speak() tag -> pts of that frame (= the server's frame.pts)
        self.received: list[Received] = []
        self.pcm: list[np.ndarray] = []  # decoded mono frames, if keep_pcm
        self.keep_pcm = keep_pcm
        self.track_arrived = asyncio.Event()
        self._task: asyncio.Task | None = None
        if self.mic is not None:
            self.mic.on_sent = self._on_mic_sent
            self.pc.addTrack(self.mic)
        else:
            self.pc.addTransceiver("audio", direction="recvonly")
        self.pc.on("track", self._on_track)

    async def offer(self) -> str:
        """Our complete offer SDP (every candidate gathered)."""
        offer = await self.pc.createOffer()
        with use_host_addresses(self.settings.host_addresses, False):
            await self.pc.setLocalDescription(offer)
        apply_receive_buffer(self.pc, self.settings)
        return self.pc.localDescription.sdp

    async def accept(self, answer_sdp: str) -> None:
        await self.pc.setRemoteDescription(RTCSessionDescription(sdp=answer_sdp, type="answer"))

    async def connected(self, timeout: float = 10.0) -> None:
        """Wait until the first remote frame has been received."""
        deadline = time.monotonic() + timeout
        while not self.received:
            if time.monotonic() > deadline:
                raise TimeoutError(f"no audio received (connection {self.pc.connectionState})")
            await asyncio.sleep(0.01)

    def speak(self, pcm48k: np.ndarray, tag: str = "speech") -> None:
        """Queue 48 kHz int16 mono audio on the mic track."""
        assert self.mic is not None, "RtcClient(mic=False) has no mic"
        for start in range(0, len(pcm48k), 960):
            self.mic.enqueue(pcm48k[start:start + 960], tag)

    def frames_after(self, t: float) -> list[Received]:
        return [r for r in self.received if r.t >= t]

    def last_loud_t(self, threshold: int = 64) -> float | None:
        for r in reversed(self.received):
            if r.peak > threshold:
                return r.t
        return None

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self.mic is not None:
            self.mic.stop()
        await self.pc.close()

    def _on_mic_sent(self, tag: str, ms: float) -> None:
        if tag not in self.mic_onsets and self.mic is not None:
            self.mic_onsets[tag] = time.monotonic()
            self.mic_onset_pts[tag] = (self.mic.stats.frames - 1) * 960  # on_sent runs inside that recv()

    def _on_track(self, track: MediaStreamTrack) -> None:
        if track.kind == "audio" and self._task is None:
            self.track_arrived.set()
            self._task = asyncio.get_running_loop().create_task(self._read(track), name="rtc-client-read")

    async def _read(self, track: MediaStreamTrack) -> None:
        while True:
            try:
                frame = await track.recv()
            except MediaStreamError:
                return
            t = time.monotonic()
            x = frame.to_ndarray().reshape(-1)
            if frame.layout.name == "stereo":
                x = x[0::2]
            self.received.append(Received(t, int(np.abs(x.astype(np.int32)).max(initial=0)), frame.pts,
                                          frame.samples))
            if self.keep_pcm:
                self.pcm.append(x.astype(np.int16))
