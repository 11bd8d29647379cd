"""Requests that the HTTP parser lets through but HTTP forbids, refused before any route sees them.

h11 parses a request whose head arrived whole however large it is, accepts control bytes other than NUL and
whitespace in header values, and lets Transfer-Encoding override a Content-Length. Each of these is refused
here with a status and a short text (a WebSocket handshake too, instead of the upgrade), and the connection
closes after the answer:
- a head over `MAX_HEAD_BYTES` -> 431 (an unfinished one is refused by the parser itself, agent.server.transport);
- a control character in a header value (RFC 9110 5.5) -> 400;
- both Transfer-Encoding and Content-Length (RFC 9112 6.3: a smuggling attempt) -> 400.
"""

from __future__ import annotations

import re

from starlette.responses import PlainTextResponse
from starlette.types import ASGIApp, Receive, Scope, Send
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
