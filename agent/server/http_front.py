"""Requests with a body and streamed responses, on the WebSocket server's own port and socket.

websockets' HTTP handling (`process_request`) answers a GET with a whole response in hand: it refuses
request bodies and cannot stream. `POST /v1/audio/speech` needs both (a JSON body in; audio out with chunked
transfer, as the engine makes it). So each accepted connection is a `FrontConnection`: websockets' own
connection class, handed to `serve(create_connection=...)`, that looks at the request line first.

- GET (WebSocket upgrades, /healthz, /metrics, the page): replayed into websockets untouched.
- Any other method, and the GETs the routes claim (the API listings, which keep-alive HTTP clients call):
  diverted before websockets parses it. The request (head and Content-Length body) goes to
  the `HttpRoutes` handler in a task of its own, which answers through an `HttpExchange` (a whole response, or
  a head then chunks, with websockets' flow control). The connection closes after the response (no
  keep-alive). If the client goes away, its task is cancelled at once: an engine stream it holds stops.

One listening socket and websockets' lifecycle for both kinds: shutdown closes the listener, and the handler
task websockets keeps per connection waits for a diverted exchange as it would for a handshake.
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import http
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, urlsplit

from websockets.asyncio.server import ServerConnection
from websockets.datastructures import Headers

log = logging.getLogger(__name__)

MAX_HEAD_BYTES = 16 * 1024  # request line + headers; more -> 431
MAX_BODY_BYTES = 1024 * 1024  # Content-Length over this -> 413
CLOSE_WAIT_S = 10.0  # a finished response gets this long to reach a slow reader before the socket is aborted


@dataclass
class HttpRequest:
    method: str
    path: str  # without the query
    query: dict[str, list[str]]
    headers: Headers
    body: bytes = b""


class HttpError(Exception):
    """A request refused before it reached a route (the head or the body is bad)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status, self.message = status, message


def parse_head(head: bytes) -> HttpRequest:
    """The request line and headers (without the final blank line)."""
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ")
    if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
        raise HttpError(400, "malformed request line")
    headers = Headers()
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if not sep or not name or name != name.strip():
            raise HttpError(400, "malformed header line")
        headers[name] = value.strip()
    url = urlsplit(parts[1])
    return HttpRequest(parts[0], url.path, parse_qs(url.query), headers)


@dataclass(eq=False)
class HttpExchange:
    """The response side of one diverted request: `respond` (whole), or `start` + `write`* + `end` (chunked)."""

    conn: FrontConnection
    started: bool = False
    status: int = 0
    _chunked: bool = field(default=False, repr=False)

    @property
    def closed(self) -> bool:
        return self.conn.transport.is_closing()

    def _head(self, status: int, headers: dict[str, str]) -> bytes:
        self.started, self.status = True, status
        phrase = http.HTTPStatus(status).phrase
        lines = [f"HTTP/1.1 {status} {phrase}", f"Date: {email.utils.formatdate(usegmt=True)}",
                 "Server: voicegate", "Connection: close", "Cache-Control: no-store"]
        lines += [f"{k}: {v}" for k, v in headers.items()]
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")

    async def respond(self, status: int, body: bytes, content_type: str,
                      headers: dict[str, str] | None = None) -> None:
        head = self._head(status, {"Content-Type": content_type, "Content-Length": str(len(body)),
                                   **(headers or {})})
        await self._send(head + body)

    async def start(self, status: int, content_type: str, headers: dict[str, str] | None = None) -> None:
        """Send the head of a chunked response; the body follows with `write` and `end`."""
        self._chunked = True
        await self._send(self._head(status, {"Content-Type": content_type, "Transfer-Encoding": "chunked",
                                             **(headers or {})}))

    async def write(self, data: bytes) -> None:
        if data:
            await self._send(b"%x\r\n%s\r\n" % (len(data), data))

    async def end(self) -> None:
        if self._chunked:
            self._chunked = False
            await self._send(b"0\r\n\r\n")

    async def _send(self, data: bytes) -> None:
        if self.closed:
            raise ConnectionResetError("the client went away")
        self.conn.transport.write(data)
        await self.conn.drain()  # websockets' flow control: waits while the kernel buffer is full


class HttpRoutes:
    """What a diverted request is handed to (see agent.apis.openai)."""

    def claims(self, method: str, path: str) -> bool:
        """Whether this request is ours (the rest goes to websockets): every method but GET by default."""
        return method != "GET"

    async def serve(self, request: HttpRequest, exchange: HttpExchange) -> None:  # pragma: no cover - interface
        raise NotImplementedError

    async def refuse(self, exchange: HttpExchange, error: HttpError) -> None:
        await exchange.respond(error.status, (error.message + "\n").encode(), "text/plain; charset=utf-8")


class FrontConnection(ServerConnection):
    """websockets' server connection, with non-GET requests diverted to `routes` (module docstring)."""

    def __init__(self, *args: Any, routes: HttpRoutes, open_timeout: float | None = 10.0,
                 track: Callable[[asyncio.Task[None]], None] | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.routes = routes
        self.open_timeout = open_timeout
        self.track = track  # the server keeps the diverted tasks, to cancel them on shutdown
        self._buffer = bytearray()
        self._mode: str | None = None  # None: reading the request line; "ws" | "http"
        self._routed: asyncio.Future[None] = self.loop.create_future()
        self._request: HttpRequest | None = None
        self._body_needed = 0
        self._body_ready = asyncio.Event()
        self._error: HttpError | None = None
        self._task: asyncio.Task[None] | None = None

    # ---- asyncio protocol callbacks ----------------------------------------------------------------
    def data_received(self, data: bytes) -> None:
        if self._mode == "ws":
            super().data_received(data)
            return
        if self._mode == "http":
            if self._request is not None and len(self._buffer) < self._body_needed:
                self._buffer += data  # the body; anything after it (pipelining, junk) is dropped
                self._check_body()
            return
        self._buffer += data
        end = self._buffer.find(b"\r\n\r\n")
        line_end = self._buffer.find(b"\r\n")
        if line_end < 0 and len(self._buffer) <= MAX_HEAD_BYTES:
            return
        line = bytes(self._buffer[:max(0, line_end)]).decode("latin-1").split(" ")
        if not self.routes.claims(line[0], urlsplit(line[1]).path if len(line) > 1 else ""):
            # websockets' own: replay what came so far
            self._mode = "ws"
            replay, self._buffer = bytes(self._buffer), bytearray()
            self._routed.set_result(None)
            super().data_received(replay)
            return
        if end < 0 and len(self._buffer) <= MAX_HEAD_BYTES:
            return
        self._mode = "http"
        self._routed.set_result(None)
        if end < 0 or end > MAX_HEAD_BYTES:
            self._error = HttpError(431, "request head too large")
            self._body_ready.set()
            return
        head, self._buffer = bytes(self._buffer[:end]), self._buffer[end + 4:]
        try:
            self._request = parse_head(head)
            self._body_needed = self._content_length(self._request.headers)
        except HttpError as exc:
            self._error = exc
        self._check_body()

    def _check_body(self) -> None:
        if self._error is not None or len(self._buffer) >= self._body_needed:
            self._body_ready.set()

    @staticmethod
    def _content_length(headers: Headers) -> int:
        if "Transfer-Encoding" in headers:
            raise HttpError(411, "send the body with a Content-Length (chunked request bodies are not supported)")
        raw = headers.get("Content-Length", "0")
        if not raw.isdigit():
            raise HttpError(400, "bad Content-Length")
        length = int(raw)
        if length > MAX_BODY_BYTES:
            raise HttpError(413, f"request body over {MAX_BODY_BYTES} bytes")
        return length

    def eof_received(self) -> None:
        if self._mode == "http":
            return None  # a half-close ends the exchange through connection_lost
        super().eof_received()
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        if self._task is not None and not self._task.done():
            self._task.cancel()  # the client went away: stop its engine stream now
        self._body_ready.set()
        super().connection_lost(exc)

    # ---- the handler task websockets runs per connection ---------------------------------------------
    async def handshake(self, *args: Any, **kwargs: Any) -> None:
        # serve() runs with open_timeout=None so that a diverted exchange may stream for minutes; the
        # WebSocket handshake and the reading of a request keep this timeout.
        async with asyncio.timeout(self.open_timeout) as deadline:
            await asyncio.wait([self._routed, self.connection_lost_waiter], return_when=asyncio.FIRST_COMPLETED)
            if self._mode == "ws":
                await super().handshake(*args, **kwargs)
                return
            if self._mode is None:
                return  # closed before a request line
            await self._body_ready.wait()
            deadline.reschedule(None)
        await self._exchange()

    async def _exchange(self) -> None:
        exchange = HttpExchange(self)
        if self.transport.is_closing():
            return
        if self._error is not None or self._request is None:
            work: Awaitable[None] = self.routes.refuse(exchange, self._error or HttpError(400, "bad request"))
        else:
            self._request.body = bytes(self._buffer[:self._body_needed])
            work = self.routes.serve(self._request, exchange)
        self._task = asyncio.ensure_future(work)
        if self.track is not None:
            self.track(self._task)
        await asyncio.wait([self._task])
        if not self._task.cancelled() and self._task.exception() is not None:
            log.error("HTTP %s %s failed", getattr(self._request, "method", "?"), getattr(self._request, "path", "?"),
                      exc_info=self._task.exception())
        # close after the response: the transport flushes, then connection_lost; a reader that never
        # reads is aborted (websockets aborts the transport once this returns)
        self.transport.close()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(self.connection_lost_waiter), CLOSE_WAIT_S)
