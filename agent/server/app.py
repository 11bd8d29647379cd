"""The media server: HTTP routes and the WebSocket endpoint on one port (websockets, asyncio).

Routes:
  GET /             the browser page (web_client/index.html; a placeholder until it exists) and its files
  GET /healthz      {"ok": true, "model": ..., "sessions": n, ...}
  GET /metrics      Prometheus text (API key required when one is set)
  GET /v1/session   WebSocket: a new session, or `?session=ID&token=TOKEN` to join one as a producer
                    (API key, when set: `Authorization: Bearer KEY` or `?api_key=KEY`)
  POST /v1/audio/speech, GET /v1/models, GET /v1/audio/voices, GET /v1/voices
                    OpenAI's speech API and the listings (agent.apis.openai), answered by agent.server.http_front's
                    layer beside websockets (request bodies, chunked responses) on this same socket
  GET /v1/text-to-speech/{voice}/stream-input, .../multi-stream-input
                    ElevenLabs' streaming-input WebSockets (agent.apis.elevenlabs)

The server owns one engine (shared by every session: its scheduler batches their streams) and the
session table. Shutdown (SIGINT/SIGTERM via `run`): stop accepting, flush open utterances, give in-flight
ones `shutdown_grace_s` to finish, interrupt the rest (reason "shutdown"), close peers and sockets (1001).
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import functools
import hmac
import http
import json
import logging
import os
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, urlsplit

from websockets.asyncio.server import Server as WsServer
from websockets.asyncio.server import ServerConnection, serve
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from agent.apis.elevenlabs import ElevenLabsSocket, is_elevenlabs_path, refuse_reason
from agent.apis.openai import OpenAIRoutes
from agent.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from agent.metrics import Metrics
from agent.server.http_front import FrontConnection
from agent.session import protocol
from agent.session.connection import Connection
from agent.session.session import Session
from agent.settings import ServerSettings
from agent.signals import wait_for_stop_signal
from agent.voices.catalogue import ModelInfo

if TYPE_CHECKING:
    from tts_engine import Engine

log = logging.getLogger(__name__)

OPEN_TIMEOUT_S = 10.0  # a connection must send its request (and a WebSocket finish its handshake) this soon
CONTENT_TYPES = {".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8",
                 ".css": "text/css; charset=utf-8", ".json": "application/json", ".wav": "audio/wav",
                 ".svg": "image/svg+xml", ".png": "image/png", ".ico": "image/x-icon"}

PLACEHOLDER_PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>voicegate</title></head>
<body><h1>voicegate</h1>
<p>The media server is running. The browser client is not installed here; connect a WebSocket to
<code>/v1/session</code> (see docs/protocol.md), or check <a href="/healthz">/healthz</a>.</p>
</body></html>
"""


def _response(status: int, body: bytes, content_type: str, extra: dict[str, str] | None = None) -> Response:
    code = http.HTTPStatus(status)
    headers = Headers([("Date", email.utils.formatdate(usegmt=True)), ("Content-Length", str(len(body))),
                       ("Content-Type", content_type), ("Cache-Control", "no-store")])
    for name, value in (extra or {}).items():
        headers[name] = value
    return Response(code.value, code.phrase, headers, body)


def _json(status: int, obj: Any) -> Response:
    return _response(status, (json.dumps(obj) + "\n").encode(), "application/json")


class Server:
    def __init__(self, engine: Engine, settings: ServerSettings | None = None, model_name: str = "model",
                 rtc_settings: Any = None, vad_defaults: Any = None) -> None:
        self.engine = engine
        self.settings = settings or ServerSettings()
        self.settings.check_exposure()
        self.info = ModelInfo.from_engine(engine, model_name, self.settings.voices_dir)
        self.rtc_settings, self.vad_defaults = rtc_settings, vad_defaults
        self.metrics = Metrics()
        self.sessions: dict[str, Session] = {}
        self.tokenizer = self._load_tokenizer()
        self._lower_engine_priority()
        self.static_dir = self.settings.static_dir or Path(__file__).resolve().parents[2] / "web_client"
        self.started = time.time()
        self.shutting_down = False
        self._ws: WsServer | None = None
        self._port = self.settings.port
        self.openai = OpenAIRoutes(self)
        self._http_tasks: set[asyncio.Task[None]] = set()  # diverted HTTP requests (agent.server.http_front)
        m = self.metrics
        m.gauge("voicegate_sessions", "Open sessions.", lambda: len(self.sessions))
        m.gauge("voicegate_connections", "Open session WebSockets.",
                lambda: sum(len(s.connections) for s in self.sessions.values()))
        m.gauge("voicegate_utterances_in_flight", "Utterances playing or queued.",
                lambda: sum(len(s.utterances.live()) for s in self.sessions.values()))
        m.gauge("voicegate_engine_streams", "Streams the engine is stepping.",
                lambda: self.engine.scheduler.live_streams)
        m.gauge("voicegate_engine_steps", "Engine steps so far (monotonic).", lambda: self.engine.scheduler.steps)
        m.track_engine_batches(lambda: self.engine.scheduler.batch_sizes)

    def _lower_engine_priority(self) -> None:
        """Give the event loop precedence over the engine thread on a shared CPU (settings.engine_nice)."""
        nice = self.settings.engine_nice
        thread = self.engine.scheduler.thread  # the engine's one thread
        tid = getattr(thread, "native_id", None)
        if not nice or tid is None or not hasattr(os, "setpriority"):
            return
        try:
            current = os.getpriority(os.PRIO_PROCESS, tid)
            if current < nice:  # idempotent: several servers may share one engine (tests)
                os.setpriority(os.PRIO_PROCESS, tid, min(19, nice))
        except OSError as exc:  # a platform without per-thread priorities: nothing lost but latency
            log.info("could not lower the engine thread's priority: %s", exc)

    def _load_tokenizer(self) -> Any:
        try:
            from tts_engine.text.incremental import load_fast_tokenizer

            return load_fast_tokenizer(self.engine.model.path)
        except Exception:  # spoken_text then uses the speaking rate alone
            log.warning("no tokenizer for spoken_text estimates", exc_info=True)
            return None

    # ---- lifecycle --------------------------------------------------------------------------------
    async def start(self) -> None:
        s = self.settings
        front = functools.partial(FrontConnection, routes=self.openai, open_timeout=OPEN_TIMEOUT_S,
                                  track=self._track_http)
        # open_timeout=None: FrontConnection applies it to handshakes itself, and not to streamed responses
        self._ws = await serve(self._handler, s.host, s.port, process_request=self._process_request,
                               create_connection=front, open_timeout=None,  # type: ignore[arg-type]
                               max_size=s.max_frame_bytes, max_queue=s.max_incoming_queue,
                               write_limit=s.write_limit, ping_interval=s.ping_interval,
                               ping_timeout=s.ping_timeout, server_header="voicegate",
                               compression="deflate" if s.compression else None)
        self._port = int(self._ws.sockets[0].getsockname()[1])
        log.info("voicegate serving on http://%s:%d/", s.host, self._port)

    def _track_http(self, task: asyncio.Task[None]) -> None:
        self._http_tasks.add(task)
        task.add_done_callback(self._http_tasks.discard)

    @property
    def port(self) -> int:
        """The bound port (the OS's choice when settings.port is 0)."""
        return self._port

    async def shutdown(self) -> None:
        """Graceful stop: see the module docstring."""
        if self.shutting_down:
            return
        self.shutting_down = True
        if self._ws is not None:
            self._ws.server.close()  # stop accepting; open connections stay until their sessions end
        for task in list(self._http_tasks):  # a streamed HTTP response is cut (its engine stream stops)
            task.cancel()
        sessions = list(self.sessions.values())
        await asyncio.gather(*(s.shutdown(self.settings.shutdown_grace_s) for s in sessions),
                             return_exceptions=True)
        closes = [c.flush_and_close(protocol.CLOSE_GOING_AWAY, "server shutting down")
                  for s in sessions for c in list(s.connections.values())]
        await asyncio.gather(*closes, return_exceptions=True)
        await asyncio.gather(*(self._end_session(s) for s in sessions), return_exceptions=True)
        if self._ws is not None:
            self._ws.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._ws.wait_closed(), 10.0)

    async def run(self, on_started: Callable[[Server], None] | None = None) -> None:
        """Serve until SIGINT/SIGTERM, then shut down gracefully."""
        await self.start()
        if on_started is not None:
            on_started(self)
        try:
            await wait_for_stop_signal()
        finally:
            log.info("shutting down")
            await self.shutdown()

    # ---- HTTP -------------------------------------------------------------------------------------
    def _authorized(self, request: Request, query: dict[str, list[str]]) -> bool:
        return self.authorized(request.headers, query)

    def authorized(self, headers: Headers, query: dict[str, list[str]], given: str | None = None) -> bool:
        """The API key (when one is set) as `Authorization: Bearer`, `xi-api-key`, `?api_key=`,
        `?xi_api_key=`, or `given` (an ElevenLabs init message's `xi_api_key`)."""
        key = self.settings.api_key
        if not key:
            return True
        header = headers.get("Authorization", "")
        if given is None:
            given = (header[7:] if header.startswith("Bearer ") else headers.get("xi-api-key")
                     or (query.get("api_key") or query.get("xi_api_key") or [""])[0])
        return hmac.compare_digest(given.encode(), key.encode())

    def has_key(self, headers: Headers, query: dict[str, list[str]]) -> bool:
        """Whether the request carries any API key at all (ElevenLabs may send it later, in its init)."""
        return bool(headers.get("Authorization") or headers.get("xi-api-key") or query.get("api_key")
                    or query.get("xi_api_key"))

    def _process_request(self, connection: ServerConnection, request: Request) -> Response | None:
        url = urlsplit(request.path)
        query = parse_qs(url.query)
        path = url.path
        if path == "/v1/session":
            if not self._authorized(request, query):
                self.metrics.errors_total.inc(code="unauthorized")
                return _response(401, b"missing or wrong API key (Authorization: Bearer KEY or ?api_key=KEY)\n",
                                 "text/plain; charset=utf-8", {"WWW-Authenticate": "Bearer"})
            if self.settings.socket_send_buffer:
                sock = connection.transport.get_extra_info("socket")
                if sock is not None:
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, self.settings.socket_send_buffer)
            return None  # WebSocket handshake
        if is_elevenlabs_path(path):
            # no key at all: the init message may bring it (ElevenLabs' xi_api_key); a wrong one: refused now
            refusal = refuse_reason(self, path, query)
            if self.has_key(request.headers, query) and not self._authorized(request, query):
                refusal = (401, "wrong API key")
            if refusal is not None:
                self.metrics.api_requests_total.inc(api="elevenlabs", status=str(refusal[0]))
                self.metrics.errors_total.inc(code="unauthorized" if refusal[0] == 401 else "bad_request")
                return _response(refusal[0], (refusal[1] + "\n").encode(), "text/plain; charset=utf-8")
            return None
        if path == "/healthz":
            return _json(200, self.health())
        if path == "/metrics":
            if not self._authorized(request, query):
                return _response(401, b"missing or wrong API key\n", "text/plain; charset=utf-8",
                                 {"WWW-Authenticate": "Bearer"})
            return _response(200, self.metrics.render().encode(), METRICS_CONTENT_TYPE)
        return self._static(path)

    def health(self) -> dict[str, Any]:
        return {"ok": not self.shutting_down, "model": self.info.name, "model_kind": self.info.kind,
                "device": str(self.engine.model.device), "sessions": len(self.sessions),
                "max_sessions": self.settings.max_sessions, "uptime_s": round(time.time() - self.started, 1)}

    def _static(self, path: str) -> Response:
        name = "index.html" if path in ("/", "") else path.lstrip("/")
        if "/" in name or "\\" in name or name.startswith(".") or Path(name).suffix not in CONTENT_TYPES:
            return _response(404, b"not found\n", "text/plain; charset=utf-8")
        file = self.static_dir / name
        if not file.is_file():
            if name == "index.html":
                return _response(200, PLACEHOLDER_PAGE.encode(), CONTENT_TYPES[".html"])
            return _response(404, b"not found\n", "text/plain; charset=utf-8")
        return _response(200, file.read_bytes(), CONTENT_TYPES[file.suffix])

    # ---- WebSocket --------------------------------------------------------------------------------
    def _admit(self, query: dict[str, list[str]]) -> tuple[Session | None, tuple[str, int, str] | None]:
        """(session, None) to attach to, or (None, (error code, close code, message))."""
        if self.shutting_down:
            return None, (protocol.SHUTTING_DOWN, protocol.CLOSE_GOING_AWAY, "server shutting down")
        sid = (query.get("session") or [None])[0]
        if sid is None:
            if len(self.sessions) >= self.settings.max_sessions:
                return None, (protocol.MAX_SESSIONS, protocol.CLOSE_TRY_AGAIN,
                              f"server full: {self.settings.max_sessions} sessions (max_sessions); try later")
            session = Session(self.engine, self.info, self.settings.session, self.metrics, self.tokenizer,
                              self.rtc_settings, self.vad_defaults)
            self.sessions[session.id] = session
            self.metrics.sessions_total.inc()
            return session, None
        session = self.sessions.get(sid)
        if session is None or session.closed:
            return None, (protocol.UNKNOWN_SESSION, protocol.CLOSE_UNKNOWN_SESSION, f"unknown session {sid[:40]!r}")
        token = (query.get("token") or [""])[0]
        if not hmac.compare_digest(token.encode(), session.token.encode()):
            return None, (protocol.BAD_TOKEN, protocol.CLOSE_BAD_TOKEN,
                          f"wrong or missing token for session {sid[:40]}")
        if len(session.connections) >= self.settings.session.max_connections:
            return None, (protocol.TOO_MANY_CONNECTIONS, protocol.CLOSE_TOO_MANY_CONNECTIONS,
                          f"session {sid[:40]} already has {len(session.connections)} connections")
        return session, None

    async def _handler(self, ws: ServerConnection) -> None:
        assert ws.request is not None
        url = urlsplit(ws.request.path)
        query = parse_qs(url.query)
        if is_elevenlabs_path(url.path):
            await ElevenLabsSocket(self, ws, url.path, query).run()
            return
        conn = Connection(ws, self.settings.session.max_outgoing_bytes,
                          on_error=lambda code: self.metrics.errors_total.inc(code=code))
        session: Session | None = None
        try:
            session, refusal = self._admit(query)
            if refusal is not None:
                code, close_code, message = refusal
                log.info("refused a connection: %s", message)
                conn.send_error(code, message)
                await conn.flush_and_close(close_code, message)
                return
            assert session is not None
            session.attach(conn, owner="session" not in query)
            max_bytes = self.settings.max_message_bytes
            async for data in ws:
                await session.handle(conn, data, max_bytes)
                if not conn.open:
                    break
        except ConnectionClosed:
            pass
        finally:
            if session is not None:
                session.detach(conn)
                if not session.connections and not self.shutting_down:
                    await self._end_session(session)
            await conn.aclose()

    async def _end_session(self, session: Session) -> None:
        self.sessions.pop(session.id, None)
        await session.close()

