"""The session table and the `/v1/session` WebSocket endpoint (docs/protocol.md).

A connection without `?session=` creates a session and owns it; `?session=ID&token=TOKEN` joins one as a
producer. The API key (when set) is checked before the upgrade (401 with a text body), and so is a new session
while the server drains (503 + Retry-After, which a proxy retries on another replica); every other refusal
happens after it, as an `error` event and a close code the client can act on. One task per connection: the
reader below; its writes go through the connection's own writer task (agent.session.connection).
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs

from starlette.responses import PlainTextResponse
from starlette.websockets import WebSocket, WebSocketDisconnect, WebSocketDisconnected

from agent.apis.keys import ApiKey
from agent.metrics import Metrics
from agent.server import drain
from agent.server.replica import join_base, resolve_replica_id
from agent.session import protocol
from agent.session.connection import Connection, SocketClosed
from agent.session.session import Session
from agent.settings import ServerSettings
from agent.speech_in.service import RecognizerService
from agent.voices.catalogue import ModelInfo

if TYPE_CHECKING:
    from tts_engine.engine import Engine

log = logging.getLogger(__name__)

Refusal = tuple[str, int, str]  # (error code, close code, message)


class PeerSocket:
    """An ASGI WebSocket as the `Socket` a session connection writes to."""

    def __init__(self, ws: WebSocket) -> None:
        self.ws = ws

    async def send(self, data: str | bytes) -> None:
        try:
            if isinstance(data, bytes):
                await self.ws.send_bytes(data)
            else:
                await self.ws.send_text(data)
        except (WebSocketDisconnect, WebSocketDisconnected):
            raise SocketClosed from None

    async def close(self, code: int, reason: str) -> None:
        with contextlib.suppress(WebSocketDisconnect, WebSocketDisconnected):  # closed already
            await self.ws.close(code, reason)


class Sessions:
    def __init__(self, engine: Engine, info: ModelInfo, settings: ServerSettings, key: ApiKey, metrics: Metrics,
                 tokenizer: Any, rtc_settings: Any, vad_defaults: Any, stt: RecognizerService | None = None) -> None:
        self.engine, self.info, self.settings, self.key = engine, info, settings, key
        self.stt = stt  # the server's one recognizer service, shared by every session (None: --stt none)
        self.metrics, self.tokenizer = metrics, tokenizer
        self.rtc_settings, self.vad_defaults = rtc_settings, vad_defaults
        self.table: dict[str, Session] = {}
        self.closing = False  # shutdown: no new connections
        self.draining = False  # SIGTERM: no new sessions; joins go on (agent.server.app, "Drain")
        self.replica = resolve_replica_id(settings.replica_id)
        self.join_base = join_base(settings.public_url)

    async def endpoint(self, ws: WebSocket) -> None:
        query = parse_qs(ws.scope["query_string"].decode("latin-1"))
        if not self.key.authorized(ws.headers, query):
            self.metrics.errors_total.inc(code="unauthorized")
            await ws.send_denial_response(PlainTextResponse(
                "missing or wrong API key (Authorization: Bearer KEY or ?api_key=KEY)\n", 401,
                headers={"WWW-Authenticate": "Bearer"}))
            return
        if self.draining and "session" not in query:
            # Refused before the upgrade, like the APIs (agent.server.drain): a proxy retries a 503 on another
            # replica, so a new session opened through it lands elsewhere without the client noticing.
            self.metrics.errors_total.inc(code=protocol.SHUTTING_DOWN)
            await ws.send_denial_response(drain.refusal(ws.scope["path"]))
            return
        await ws.accept()
        await self._serve(ws, query)

    async def _serve(self, ws: WebSocket, query: dict[str, list[str]]) -> None:
        conn = Connection(PeerSocket(ws), self.settings.session.max_outgoing_bytes,
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
            while conn.open:
                message = await ws.receive()
                if message["type"] == "websocket.disconnect":
                    break
                text = message.get("text")
                await session.handle(conn, text if text is not None else message.get("bytes") or b"", max_bytes)
        finally:
            if session is not None:
                session.detach(conn)
                if not session.connections and not self.closing:
                    await self.end(session)
            await conn.aclose()

    def _admit(self, query: dict[str, list[str]]) -> tuple[Session | None, Refusal | None]:
        """(session, None) to attach to, or (None, refusal)."""
        if self.closing:
            return None, (protocol.SHUTTING_DOWN, protocol.CLOSE_GOING_AWAY, "server shutting down")
        sid = (query.get("session") or [None])[0]
        if sid is None:
            if self.draining:  # the drain began between the handshake and here
                return None, (protocol.SHUTTING_DOWN, protocol.CLOSE_TRY_AGAIN,
                              "server draining: open the session again (another replica takes it)")
            if len(self.table) >= self.settings.max_sessions:
                return None, (protocol.MAX_SESSIONS, protocol.CLOSE_TRY_AGAIN,
                              f"server full: {self.settings.max_sessions} sessions (max_sessions); try later")
            session = Session(self.engine, self.info, self.settings.session, self.metrics, self.tokenizer,
                              self.rtc_settings, self.vad_defaults, self.stt, replica=self.replica,
                              join_base=self.join_base)
            self.table[session.id] = session
            self.metrics.sessions_total.inc()
            return session, None
        session = self.table.get(sid)
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

    async def end(self, session: Session) -> None:
        self.table.pop(session.id, None)
        await session.close()

    async def drain(self, grace_s: float) -> None:
        """No new sessions; each session is closed for a restart once nothing plays in it, or when `grace_s`
        is up (what still plays is then interrupted, reason "shutdown")."""
        self.draining = True
        deadline = asyncio.get_running_loop().time() + grace_s
        await asyncio.gather(*(self._drain(s, deadline) for s in list(self.table.values())),
                             return_exceptions=True)

    async def _drain(self, session: Session, deadline: float) -> None:
        await session.utterances.wait_idle(deadline - asyncio.get_running_loop().time())
        if session.closed:
            return
        await session.shutdown(0.0)  # no new text from here on; anything still playing is interrupted
        self.table.pop(session.id, None)  # a producer joining during the close below gets unknown_session
        closing = protocol.event("session.closing", reason="server_restart", reconnect=True)
        conns = list(session.connections.values())
        for conn in conns:
            conn.send_event(closing)
        await asyncio.gather(*(c.flush_and_close(protocol.CLOSE_SERVICE_RESTART, "server restarting: reconnect")
                               for c in conns), return_exceptions=True)
        await self.end(session)

    async def shutdown(self, grace_s: float) -> None:
        """Flush open utterances, give in-flight ones `grace_s`, interrupt the rest, close every socket (1001)."""
        self.closing = True
        sessions = list(self.table.values())
        await asyncio.gather(*(s.shutdown(grace_s) for s in sessions), return_exceptions=True)
        closes = [c.flush_and_close(protocol.CLOSE_GOING_AWAY, "server shutting down")
                  for s in sessions for c in list(s.connections.values())]
        await asyncio.gather(*closes, return_exceptions=True)
        await asyncio.gather(*(self.end(s) for s in sessions), return_exceptions=True)
