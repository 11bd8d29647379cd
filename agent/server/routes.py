"""Every route of the serve port, as one Starlette application.

    GET  /                the browser page (web_client/index.html; a placeholder until it exists) and its files
    GET  /healthz         {"ok": true, "status": "serving", "model": ..., "sessions": n, ...}; 503 while draining
    GET  /livez           {"ok": true, "status": ...}: 200 while the process serves, draining included (liveness)
    GET  /metrics         Prometheus text (API key required when one is set)
    WS   /v1/session      the session protocol (agent.server.sessions)
    POST /v1/audio/speech, GET /v1/models, /v1/audio/voices, /v1/voices     agent.apis.openai
    WS   /v1/text-to-speech/{voice}/stream-input, .../multi-stream-input   agent.apis.elevenlabs

GET routes answer HEAD too. Unknown routes: 404 (OpenAI-shaped JSON for a method other than GET/HEAD, as an API
client expects); a known route with another method: 405 (OpenAI-shaped under /v1/). A WebSocket handshake
on an unknown path gets a 404 instead of the upgrade. CORS headers only for `settings.cors_origins`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, PlainTextResponse, Response
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket

from agent.apis import elevenlabs, elevenlabs_rest, openai
from agent.apis.context import ApiContext
from agent.apis.speech import ApiError
from agent.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from agent.server.drain import DrainGate
from agent.server.middleware import HeaderGuard, RequestIdMiddleware
from agent.server.sessions import Sessions
from agent.settings import ServerSettings

CONTENT_TYPES = {".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8",
                 ".css": "text/css; charset=utf-8", ".json": "application/json", ".wav": "audio/wav",
                 ".svg": "image/svg+xml", ".png": "image/png", ".ico": "image/x-icon"}
NO_STORE = {"Cache-Control": "no-store"}

PLACEHOLDER_PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>voicegate</title></head>
<body><h1>voicegate</h1>
<p>The media server is running. The browser client is not installed here; connect a WebSocket to
<code>/v1/session</code> (see docs/protocol.md), or check <a href="/healthz">/healthz</a>.</p>
</body></html>
"""


class Site:
    """The page and its files, the health check and the metrics."""

    def __init__(self, static_dir: Path, ctx: ApiContext, health: Callable[[], dict[str, Any]]) -> None:
        self.static_dir, self.ctx, self.health = static_dir, ctx, health

    async def healthz(self, request: Request) -> Response:
        health = self.health()  # not ok (draining, stopping): 503, so that a readiness probe fails
        return JSONResponse(health, 200 if health["ok"] else 503, headers=NO_STORE)

    async def livez(self, request: Request) -> Response:
        """Alive, even while draining: a liveness probe on /healthz would restart a draining replica."""
        return JSONResponse({"ok": True, "status": self.health()["status"]}, headers=NO_STORE)

    async def metrics(self, request: Request) -> Response:
        query = parse_qs(request.scope["query_string"].decode("latin-1"))
        if not self.ctx.key.authorized(request.headers, query):
            return PlainTextResponse("missing or wrong API key\n", 401, headers={"WWW-Authenticate": "Bearer"})
        return Response(self.ctx.metrics.render(), headers=NO_STORE, media_type=METRICS_CONTENT_TYPE)

    async def page(self, request: Request) -> Response:
        return await self._file("index.html")

    async def static(self, request: Request) -> Response:
        return await self._file(request.path_params["name"])

    async def _file(self, name: str) -> Response:
        if "\\" in name or name.startswith(".") or Path(name).suffix not in CONTENT_TYPES:
            raise HTTPException(404)
        file = self.static_dir / name
        if not await asyncio.to_thread(file.is_file):
            if name == "index.html":
                return Response(PLACEHOLDER_PAGE, headers=NO_STORE, media_type=CONTENT_TYPES[".html"])
            raise HTTPException(404)
        return FileResponse(file, headers=NO_STORE, media_type=CONTENT_TYPES[file.suffix])


async def _not_found(request: Request, exc: Exception) -> Response:
    if request.method not in ("GET", "HEAD"):
        return openai.error_response(ApiError(404, f"no route {request.method} {request.scope['path'][:100]}",
                                              code="not_found"))
    return PlainTextResponse("not found\n", 404)


async def _method_not_allowed(request: Request, exc: Exception) -> Response:
    allow = getattr(exc, "headers", None) or {}
    if request.scope["path"].startswith("/v1/"):
        methods = allow.get("Allow", "")
        return openai.error_response(ApiError(405, f"{request.scope['path'][:100]} takes {methods}",
                                              code="method_not_allowed", headers=allow))
    return PlainTextResponse("method not allowed\n", 405, headers=allow)


async def _websocket_not_found(ws: WebSocket) -> None:
    await ws.send_denial_response(PlainTextResponse("not found\n", 404))


def build_app(settings: ServerSettings, site: Site, sessions: Sessions, ctx: ApiContext) -> Starlette:
    routes = [Route("/healthz", site.healthz, methods=["GET"]),
              Route("/livez", site.livez, methods=["GET"]),
              Route("/metrics", site.metrics, methods=["GET"]),
              WebSocketRoute("/v1/session", sessions.endpoint),
              *openai.routes(ctx), *elevenlabs.routes(ctx), *elevenlabs_rest.routes(ctx),
              Route("/", site.page, methods=["GET"]),
              Route("/{name}", site.static, methods=["GET"]),
              WebSocketRoute("/{path:path}", _websocket_not_found)]
    middleware = [Middleware(RequestIdMiddleware), Middleware(HeaderGuard)]
    if settings.cors_origins:  # before the drain gate: its 503 is readable cross-origin
        middleware.append(Middleware(CORSMiddleware, allow_origins=list(settings.cors_origins),
                                     allow_methods=["GET", "HEAD", "POST"],
                                     allow_headers=["Authorization", "Content-Type", "xi-api-key"],
                                     expose_headers=["X-Voicegate-Voice", "X-Voicegate-Warning", "x-request-id"],
                                     max_age=600))
    middleware.append(Middleware(DrainGate, draining=lambda: sessions.draining))
    return Starlette(routes=routes, middleware=middleware,
                     exception_handlers={404: _not_found, 405: _method_not_allowed})
