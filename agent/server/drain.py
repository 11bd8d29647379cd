"""While the server drains (SIGTERM), new requests to the compatible APIs get 503 with Retry-After.

A proxy (or the client) retries them on another replica. A new session on `/v1/session` gets the same 503
(agent.server.sessions, which tells a new session from a join); producers still join the sessions held
here, and /healthz answers 503 "draining" so that the replica leaves the load balancer. Requests already running
when the drain began are not affected (agent.server.app gives them the drain's grace).
"""

from __future__ import annotations

from collections.abc import Callable

from starlette.responses import JSONResponse, Response
from starlette.types import ASGIApp, Receive, Scope, Send
from starlette.websockets import WebSocket

from agent.apis import openai
from agent.apis.speech import ApiError

RETRY_AFTER_S = 1  # any other replica can take it now
ELEVENLABS_PREFIXES = ("/v1/text-to-speech/", "/v1/voices")
MESSAGE = "this server is draining for a restart; retry (another replica will answer)"


def is_api(path: str) -> bool:
    return path.startswith("/v1/") and path != "/v1/session"


def refusal(path: str) -> Response:
    """A 503 in the shape of the API the path belongs to (ElevenLabs' `detail`, else OpenAI's `error`)."""
    headers = {"Retry-After": str(RETRY_AFTER_S), "Cache-Control": "no-store"}
    if path.startswith(ELEVENLABS_PREFIXES):
        return JSONResponse({"detail": {"status": "shutting_down", "message": MESSAGE}}, 503, headers=headers)
    return openai.error_response(ApiError(503, MESSAGE, code="shutting_down", kind="server_error",
                                          headers=headers))


class DrainGate:
    def __init__(self, app: ASGIApp, draining: Callable[[], bool]) -> None:
        self.app, self.draining = app, draining

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket") or not self.draining() or not is_api(scope["path"]):
            await self.app(scope, receive, send)
        elif scope["type"] == "websocket":  # refused before the upgrade, as an HTTP answer
            await WebSocket(scope, receive, send).send_denial_response(refusal(scope["path"]))
        else:
            await refusal(scope["path"])(scope, receive, send)
