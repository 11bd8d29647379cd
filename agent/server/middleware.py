"""The serve port's two HTTP middlewares, in front of every route.

`RequestIdMiddleware`: `x-request-id` on every HTTP response, and the same id in the log records of that
request (`RequestIdFormatter`). OpenAI's SDKs (and LiveKit's OpenAI plugin) read the header and warn when it is
missing; it is also the one handle a user has to find a failed request in the server's log. A client's own
`x-request-id` (a short token) is kept, else one is made. Pure ASGI: streamed responses pass through untouched.

`HeaderGuard`: requests that the HTTP parser lets through but HTTP forbids, refused before any route sees them.

h11 parses a request whose head arrived whole however large it is, accepts control bytes other than NUL and
whitespace in header values, and lets Transfer-Encoding override a Content-Length. Each of these is refused
here with a status and a short text (a WebSocket handshake too, instead of the upgrade), and the connection
closes after the answer:
- a head over `MAX_HEAD_BYTES` -> 431 (an unfinished one is refused by the parser itself, agent.server.transport);
- a control character in a header value (RFC 9110 5.5) -> 400;
- both Transfer-Encoding and Content-Length (RFC 9112 6.3: a smuggling attempt) -> 400.
"""

from __future__ import annotations

import contextvars
import logging
import re
import uuid

from starlette.responses import PlainTextResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from starlette.websockets import WebSocket

from agent.server.transport import MAX_HEAD_BYTES

_CONTROL = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")  # CTLs but HTAB


def refusal(scope: Scope) -> tuple[int, str] | None:
    """(status, reason) for a request this guard refuses, else None."""
    headers: list[tuple[bytes, bytes]] = scope["headers"]
    size = len(scope.get("raw_path") or b"") + len(scope["query_string"]) + sum(len(n) + len(v) + 4 for n, v in headers)
    if size > MAX_HEAD_BYTES:
        return 431, "request head too large"
    if any(_CONTROL.search(value) for _, value in headers):
        return 400, "a control character in a header value"
    names = {name for name, _ in headers}
    if b"transfer-encoding" in names and b"content-length" in names:
        return 400, "both Transfer-Encoding and Content-Length"
    return None


class HeaderGuard:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        refused = refusal(scope) if scope["type"] in ("http", "websocket") else None
        if refused is None:
            await self.app(scope, receive, send)
            return
        status, reason = refused
        answer = PlainTextResponse(reason + "\n", status, headers={"Connection": "close"})
        if scope["type"] == "websocket":  # instead of the upgrade (websockets checked the rest of the handshake)
            await WebSocket(scope, receive, send).send_denial_response(answer)
        else:
            await answer(scope, receive, send)


HEADER = b"x-request-id"
_SANE = re.compile(rb"[A-Za-z0-9._:-]{1,64}")
current: contextvars.ContextVar[str | None] = contextvars.ContextVar("request_id", default=None)


class RequestIdMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        given = next((v for k, v in scope["headers"] if k == HEADER), None)
        rid = given.decode() if given is not None and _SANE.fullmatch(given) else f"req_{uuid.uuid4().hex[:24]}"
        token = current.set(rid)

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = [(k, v) for k, v in message.get("headers", []) if k.lower() != HEADER]
                message = {**message, "headers": [*headers, (HEADER, rid.encode())]}
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            current.reset(token)


class RequestIdFormatter(logging.Formatter):
    """Appends `request_id=...` to records logged while a request is being answered."""

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        rid = current.get()
        return f"{line} request_id={rid}" if rid else line
