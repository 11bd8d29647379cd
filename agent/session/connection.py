"""One WebSocket connection's outgoing side: a bounded queue and one writer task.

Sessions never await a send: `send_event` / `send_audio` enqueue and return, so a barge-in can report in
the same loop tick as its VAD decision, and one slow reader never stalls a session's other connections.
When a reader falls `max_outgoing_bytes` behind, the connection is closed with 1008 "slow consumer"
(audio is real-time: a listener that far behind will not catch up).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import itertools
import logging
from collections.abc import Callable
from typing import Any, Protocol

from agent.session import protocol

log = logging.getLogger(__name__)
_ids = itertools.count(1)


class SocketClosed(Exception):
    """A send on a WebSocket that is closed or closing."""


class Socket(Protocol):
    """The WebSocket a connection writes to (the server adapts its own)."""

    async def send(self, data: str | bytes) -> None:
        """Send one message, waiting while the socket's write buffer is full (SocketClosed once it closed)."""

    async def close(self, code: int, reason: str) -> None:
        """Start the closing handshake (a no-op once closed)."""


class Connection:
    def __init__(self, ws: Socket, max_outgoing_bytes: int,
                 on_error: Callable[[str], None] | None = None) -> None:
        self.ws = ws
        self.id = next(_ids)
        self.max_outgoing_bytes = max_outgoing_bytes
        self.on_error = on_error  # called with an error code (metrics)
        self.role = "owner"
        self._queue: collections.deque[str | bytes] = collections.deque()
        self._queued_bytes = 0
        self._wake = asyncio.Event()
        self._closing = False
        self._close_task: asyncio.Task[None] | None = None
        self._writer = asyncio.get_running_loop().create_task(self._write_loop(), name=f"ws-writer-{self.id}")

    @property
    def open(self) -> bool:
        return not self._closing

    def send_event(self, evt: dict[str, Any]) -> None:
        self._put(protocol.encode(evt))

    def send_error(self, code: str, message: str, msg_id: str | None = None) -> None:
        if self.on_error is not None:
            self.on_error(code)
        self.send_event(protocol.error_event(code, message, msg_id))

    def send_audio(self, pcm: bytes) -> None:
        self._put(pcm)

    def _put(self, item: str | bytes) -> None:
        if self._closing:
            return
        size = len(item)
        if self._queued_bytes + size > self.max_outgoing_bytes:
            self._slow()
            return
        self._queue.append(item)
        self._queued_bytes += size
        self._wake.set()

    def _slow(self) -> None:
        log.info("connection %d: slow consumer (%d bytes queued); closing", self.id, self._queued_bytes)
        if self.on_error is not None:
            self.on_error(protocol.SLOW_CONSUMER)
        self.close_soon(protocol.CLOSE_POLICY, f"slow consumer: more than {self.max_outgoing_bytes} bytes "
                                              f"waiting to be read")

    async def _write_loop(self) -> None:
        try:
            while True:
                while not self._queue:
                    self._wake.clear()
                    await self._wake.wait()
                item = self._queue.popleft()
                self._queued_bytes -= len(item)
                await self.ws.send(item)
        except SocketClosed:
            self._closing = True

    def close_soon(self, code: int, reason: str) -> None:
        """Stop sending queued data and close with `code`/`reason` (from sync code)."""
        if self._closing:
            return
        self._closing = True
        self._queue.clear()
        self._queued_bytes = 0
        self._writer.cancel()
        self._close_task = asyncio.get_running_loop().create_task(self._close(code, reason),
                                                                  name=f"ws-close-{self.id}")

    async def _close(self, code: int, reason: str) -> None:
        try:
            await self.ws.close(code, reason[:120])
        except Exception:  # pragma: no cover - the peer is gone already
            log.debug("close of connection %d failed", self.id, exc_info=True)

    async def flush_and_close(self, code: int, reason: str, timeout: float = 2.0) -> None:
        """Send what is queued (events first to arrive stay in order), then close."""
        if not self._closing:
            deadline = asyncio.get_running_loop().time() + timeout
            while self._queue and not self._writer.done() and asyncio.get_running_loop().time() < deadline:
                await asyncio.sleep(0.01)
            self._closing = True
            self._writer.cancel()
        await self._close(code, reason)

    async def aclose(self) -> None:
        """Stop the writer (the WebSocket itself is closed by its handler)."""
        self._closing = True
        self._writer.cancel()
        for task in (self._writer, self._close_task):
            if task is None:
                continue
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
