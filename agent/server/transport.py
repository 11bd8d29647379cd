"""uvicorn, configured for the serve port: h11 for HTTP/1.1, `websockets` (sans-I/O) for WebSockets.

h11 rather than httptools: it is strict where a hostile client probes (Content-Length digits and duplicates,
request-target characters, a bound on the request head: `MAX_HEAD_BYTES`), it is pure Python (no build on any
machine), and its cost per request is tiny next to one 80 ms frame of audio. Its bytes after the upgrade go
to websockets' own protocol object, which parses the handshake again and every frame after it.

Three settings that uvicorn does not expose are applied per connection, by small subclasses of its protocols:
- the request head must arrive within `HEAD_TIMEOUT_S` of the connection (or of the previous response);
- `write_limit` (the transport's high-water mark: sends wait above it) and `socket_send_buffer` (SO_SNDBUF);
- `max_incoming_queue`: WebSocket messages read ahead before reading pauses (TCP backpressure).
A head over `MAX_HEAD_BYTES` that h11 refuses (unfinished, or bad) is answered 431 where uvicorn says 400 to
every parse error (a good one that large is refused by agent.server.middleware); log records go to our logger names.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from http import HTTPStatus
from typing import Any

import h11
from uvicorn import Config
from uvicorn.protocols.http.h11_impl import H11Protocol
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol

from agent.settings import ServerSettings

MAX_HEAD_BYTES = 16 * 1024  # request line + headers; more -> 431
HEAD_TIMEOUT_S = 10.0  # a connection must send its request head this soon (slow-loris guard)
KEEP_ALIVE_S = 5.0  # an idle keep-alive connection is closed after this


def _tune(transport: asyncio.BaseTransport, settings: ServerSettings) -> None:
    assert isinstance(transport, asyncio.WriteTransport)
    transport.set_write_buffer_limits(high=settings.write_limit)
    sock = transport.get_extra_info("socket")
    if settings.socket_send_buffer and sock is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, settings.socket_send_buffer)


class _HttpProtocol(H11Protocol):
    settings: ServerSettings

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.logger = logging.getLogger("agent.server.http")
        self.access_log = False  # one line per request is too chatty (uvicorn's own switch follows its logger)
        self._head_deadline: asyncio.TimerHandle | None = None
        self._head_bytes = 0  # received since the last request began (431 when too many for one head)

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        _tune(transport, self.settings)
        self._arm_head_deadline()

    def data_received(self, data: bytes) -> None:
        if self.cycle is None or self.cycle.response_complete:  # between requests: this is a head
            self._head_bytes += len(data)
        super().data_received(data)
        if self.cycle is not None and not self.cycle.response_complete:
            self._head_bytes = 0

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._arm_head_deadline()  # the next request on this keep-alive connection gets as long

    def connection_lost(self, exc: Exception | None) -> None:
        if self._head_deadline is not None:
            self._head_deadline.cancel()
        super().connection_lost(exc)

    def _arm_head_deadline(self) -> None:
        if self._head_deadline is not None:
            self._head_deadline.cancel()
        self._head_deadline = self.loop.call_later(HEAD_TIMEOUT_S, self._head_timeout, self.cycle)

    def _head_timeout(self, cycle: Any) -> None:
        # no new request since the deadline was armed, and the socket is still ours (not a WebSocket now)
        if self.cycle is cycle and self.transport.get_protocol() is self and not self.transport.is_closing():
            self.transport.close()

    def send_400_response(self, msg: str) -> None:
        """The answer to a request h11 could not parse; then the connection closes."""
        status, body = 400, b"malformed HTTP request\n"
        if self._head_bytes > MAX_HEAD_BYTES:  # h11 gave up on a long head, or found it bad
            status, body = 431, b"request head too large\n"
        headers = [(b"content-type", b"text/plain; charset=utf-8"), (b"connection", b"close")]
        for event in (h11.Response(status_code=status, headers=headers, reason=HTTPStatus(status).phrase),
                      h11.Data(data=body), h11.EndOfMessage()):
            self.transport.write(self.conn.send(event) or b"")
        self.transport.close()


class ClientFaults(logging.Filter):
    """uvicorn logs a client's invalid UTF-8 text frame as an exception with a traceback; it is the client's
    fault, answered by closing 1007: one INFO line instead."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.getMessage().startswith("Invalid UTF-8 sequence received from client"):
            record.levelno, record.levelname = logging.INFO, "INFO"
            record.exc_info, record.exc_text = None, None
            record.msg, record.args = "a client sent a text frame that is not UTF-8: closed 1007", ()
        return True


WEBSOCKET_LOG = logging.getLogger("agent.server.websocket")
WEBSOCKET_LOG.addFilter(ClientFaults())


class _WebSocketProtocol(WebSocketsSansIOProtocol):
    settings: ServerSettings

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.logger = WEBSOCKET_LOG

    def send_receive_event_to_app(self) -> None:
        # uvicorn pauses reading after every message (`receive` resumes it once the queue is drained): here it
        # pauses only when `max_incoming_queue` messages wait, which also spares two syscalls per message
        paused, self.read_paused = self.read_paused, True
        super().send_receive_event_to_app()
        self.read_paused = paused
        if not paused and self.queue.qsize() >= self.settings.max_incoming_queue:
            self.read_paused = True
            self.transport.pause_reading()


def uvicorn_config(app: Any, settings: ServerSettings) -> Config:
    """uvicorn's settings from ours: limits, keepalive pings, no access log, no logging setup of its own."""
    http = type("HttpProtocol", (_HttpProtocol,), {"settings": settings})
    ws = type("WebSocketProtocol", (_WebSocketProtocol,), {"settings": settings})
    return Config(app, host=settings.host, port=settings.port, http=http, ws=ws, lifespan="off",
                  log_config=None, access_log=False, server_header=False, headers=[("Server", "voicegate")],
                  ws_max_size=settings.max_frame_bytes, ws_ping_interval=settings.ping_interval,
                  ws_ping_timeout=settings.ping_timeout, ws_per_message_deflate=settings.compression,
                  h11_max_incomplete_event_size=MAX_HEAD_BYTES, timeout_keep_alive=int(KEEP_ALIVE_S),
                  timeout_graceful_shutdown=10)
