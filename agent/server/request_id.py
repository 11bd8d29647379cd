"""`x-request-id` on every HTTP response, and the same id in the log records of that request.

OpenAI's SDKs (and LiveKit's OpenAI plugin) read the header and warn when it is missing; it is also the one
handle a user has to find a failed request in the server's log. A client's own `x-request-id` (a short token)
is kept, else one is made. A pure ASGI middleware: streamed responses pass through untouched.
"""

from __future__ import annotations

import contextvars
import logging
import re
import uuid
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # (no starlette at run time: the CLI's log formatter lives here too)
    from starlette.types import ASGIApp, Message, Receive, Scope, Send

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
