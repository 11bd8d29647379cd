"""The two places where voicegate reaches into aiortc / aioice internals, each scoped to our peers only.

1. ICE host candidates. aioice never offers 127.0.0.1 (aioice/ice.py `get_host_addresses`), so two peers in a
   loopback-only network namespace never connect, and tests cannot stay on 127.0.0.1. We wrap that module
   function once; the wrapper reads a context variable, so only ICE gathering started inside
   `use_host_addresses()` (RtcPeer.answer, RtcClient.offer) sees a different list. Everything else in the
   process gets aioice's own behaviour.

2. The audio receive jitter buffer. aiortc hard-codes `JitterBuffer(capacity=16, prefetch=4)` for audio
   (rtcrtpreceiver.py): ~80 ms before a mic frame reaches us, and after one lost packet it stays ~14 packets
   (280 ms) behind for the rest of the call, with prefetch 4 or 1 alike (tests/agent/test_rtc.py pins this).
   `install_receive_buffer(pc, ...)` swaps the private `RTCRtpReceiver._RTCRtpReceiver__jitter_buffer` of one
   peer's audio receivers for `LowLatencyAudioBuffer` before any RTP can arrive. If a future aiortc renames the
   attribute, it logs a warning and keeps aiortc's buffer (pinned by a test on the installed version).
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
from collections.abc import Iterator

import aioice.ice
from aiortc import RTCPeerConnection
from aiortc.jitterbuffer import JitterBuffer, JitterFrame
from aiortc.rtp import RtpPacket

logger = logging.getLogger(__name__)


# ---------------------------------------------------------------------------------------------- ICE hosts

_HOST_ADDRESSES: contextvars.ContextVar[tuple[tuple[str, ...] | None, bool] | None] = contextvars.ContextVar(
    "voicegate_ice_host_addresses", default=None)
_aioice_get_host_addresses = aioice.ice.get_host_addresses


def _get_host_addresses(use_ipv4: bool, use_ipv6: bool) -> list[str]:
    choice = _HOST_ADDRESSES.get()
    if choice is None:
        return _aioice_get_host_addresses(use_ipv4, use_ipv6)
    explicit, loopback = choice
    if explicit is not None:
        return list(explicit)
    addresses = _aioice_get_host_addresses(use_ipv4, use_ipv6)
    if loopback and use_ipv4 and "127.0.0.1" not in addresses:
        addresses.append("127.0.0.1")
    return addresses


if not getattr(aioice.ice.get_host_addresses, "_voicegate", False):
    _get_host_addresses._voicegate = True  # type: ignore[attr-defined]
    aioice.ice.get_host_addresses = _get_host_addresses


@contextlib.contextmanager
def use_host_addresses(addresses: list[str] | None = None, include_loopback: bool = True) -> Iterator[None]:
    """ICE gathering started inside this block (setLocalDescription) offers these host addresses."""
    token = _HOST_ADDRESSES.set((None if addresses is None else tuple(addresses), include_loopback))
    try:
        yield
    finally:
        _HOST_ADDRESSES.reset(token)


# ------------------------------------------------------------------------------------ receive jitter buffer

class LowLatencyAudioBuffer(JitterBuffer):
    """Audio jitter buffer for a consumer that does not play out (our VAD): release packets as they come.

    Each audio RTP packet (Opus, G.711) is a complete frame, so the in-order packet is returned at once.
    A missing packet is waited for until `reorder_packets` later packets are stored, then skipped. Ready
    packets beyond `max_backlog` behind the released one are dropped, which bounds the added latency to
    `max_backlog` packets (aiortc's own buffer stays ~14 packets behind after one loss).
    """

    def __init__(self, capacity: int = 16, reorder_packets: int = 2, max_backlog: int = 1) -> None:
        super().__init__(capacity=capacity, prefetch=0)
        if not 1 <= reorder_packets < capacity or not 0 <= max_backlog < capacity:
            raise ValueError("need 1 <= reorder_packets < capacity and 0 <= max_backlog < capacity")
        self.reorder_packets, self.max_backlog = reorder_packets, max_backlog
        self.lost = self.dropped = 0  # packets given up on (holes) and thrown away (backlog, restarts)

    def add(self, packet: RtpPacket) -> tuple[bool, JitterFrame | None]:
        seq = packet.sequence_number
        if self._origin is None:
            self._origin = seq
        delta = (seq - self._origin) & 0xFFFF
        if delta >= 0x8000 and 0x10000 - delta <= 100:  # behind the window: late, duplicate or skipped
            return False, None
        if delta >= self._capacity:  # past the window (a burst loss or a sender restart): start over here
            self._restart(seq)
        slot = seq % self._capacity
        if self._packets[slot] is not None:  # duplicate
            return False, None
        self._packets[slot] = packet
        return False, self._release()

    def _restart(self, seq: int) -> None:
        stored = sum(p is not None for p in self._packets)
        self.dropped += stored
        self._packets = [None] * self._capacity
        self._origin = seq

    def _at(self, offset: int) -> RtpPacket | None:
        return self._packets[(self._origin + offset) % self._capacity]

    def _release(self) -> JitterFrame | None:
        if self._at(0) is None:  # a hole: wait for it, up to reorder_packets later packets
            if sum(p is not None for p in self._packets) < self.reorder_packets:
                return None
            while self._at(0) is None:
                self._origin = (self._origin + 1) & 0xFFFF
                self.lost += 1
        ready = 1
        while ready < self._capacity and self._at(ready) is not None:
            ready += 1
        drop = max(0, ready - 1 - self.max_backlog)
        self.dropped += drop
        self.remove(drop)
        packet = self._at(0)
        assert packet is not None
        self.remove(1)
        return JitterFrame(data=packet._data, timestamp=packet.timestamp)  # type: ignore[attr-defined]


def install_receive_buffer(pc: RTCPeerConnection, reorder_packets: int = 2, max_backlog: int = 1) -> bool:
    """Give this peer's audio receivers a LowLatencyAudioBuffer (call before any RTP arrives): True if done."""
    installed = False
    for transceiver in pc.getTransceivers():
        receiver = transceiver.receiver
        if transceiver.kind != "audio" or not hasattr(receiver, "_RTCRtpReceiver__jitter_buffer"):
            continue
        receiver._RTCRtpReceiver__jitter_buffer = LowLatencyAudioBuffer(  # type: ignore[attr-defined]
            reorder_packets=reorder_packets, max_backlog=max_backlog)
        installed = True
    if not installed:
        logger.warning("aiortc's audio receiver has no _RTCRtpReceiver__jitter_buffer: keeping its own buffer")
    return installed
