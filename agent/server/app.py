"""The media server: every route (agent.server.routes) on one port, served by uvicorn (agent.server.transport).

The server owns one engine (shared by every session and API request: its scheduler batches their streams), the
session table (agent.server.sessions) and the context the compatible APIs get (agent.apis.context).

Drain (the first SIGINT/SIGTERM via `run`; a second one cuts it short): /healthz answers 503 "draining" (a
readiness probe takes the replica out of its Service) while the port keeps serving; new sessions are
refused with 503 + Retry-After before the upgrade, like new API requests (agent.server.drain: a proxy retries
them on another replica); producers may still join the sessions held here. Each session is closed for a restart (`session.closing`, then 1012) as soon as
nothing plays in it, at the latest after `drain_grace_s` (what still plays is then interrupted); HTTP answers
and API sockets that were open get the same grace. Then the shutdown.

Shutdown (after the drain, or `shutdown()` directly): stop accepting, cut streamed HTTP answers and API
sockets (their engine streams stop; sockets close 1001), flush open utterances, give in-flight ones
`shutdown_grace_s` to finish, interrupt the rest (reason "shutdown"), close session sockets (1001), then the
idle connections.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import uvicorn
from starlette.types import ASGIApp, Receive, Scope, Send

from agent.apis.context import ApiContext
from agent.apis.keys import ApiKey
from agent.metrics import Metrics
from agent.server.routes import Site, build_app
from agent.server.sessions import Sessions
from agent.server.transport import uvicorn_config
from agent.session.session import Session
from agent.settings import ServerSettings
from agent.signals import serve_until_signal
from agent.speech_in.service import RecognizerService
from agent.voices.catalogue import ModelInfo

if TYPE_CHECKING:
    from tts_engine import Engine

log = logging.getLogger(__name__)


class Server:
    def __init__(self, engine: Engine, settings: ServerSettings | None = None, model_name: str = "model",
                 rtc_settings: Any = None, vad_defaults: Any = None, stt: RecognizerService | None = None) -> None:
        self.engine = engine
        self.stt = stt  # one recognizer service for every session; closed at shutdown
        self.settings = settings or ServerSettings()
        self.settings.check_exposure()
        self.info = ModelInfo.from_engine(engine, model_name, self.settings.voices_dir, self.settings.voice_aliases)
        self.metrics = Metrics()
        self.started = time.time()
        key = ApiKey(self.settings.api_key)
        tokenizer = self._load_tokenizer()
        self._lower_engine_priority()
        self.api = ApiContext(engine, self.info, self.settings.api, key, self.metrics, tokenizer, self.started)
        self._sessions = Sessions(engine, self.info, self.settings, key, self.metrics, tokenizer, rtc_settings,
                                  vad_defaults, stt)
        static_dir = self.settings.static_dir or Path(__file__).resolve().parent.parent.parent / "web_client"
        site = Site(static_dir, self.api, self.health)
        self._flows: set[asyncio.Task[Any]] = set()  # HTTP requests and API sockets, cut at shutdown
        self._cut: set[asyncio.Task[Any]] = set()
        self.app = build_app(self.settings, site, self._sessions, self.api)
        self._uvicorn = uvicorn.Server(uvicorn_config(self._track_flows(self.app), self.settings))
        self._socket: socket.socket | None = None
        self._clock: asyncio.Task[None] | None = None
        self.shutting_down = False
        self._register_gauges()

    def _register_gauges(self) -> None:
        m, sessions = self.metrics, self._sessions.table
        m.gauge("voicegate_sessions", "Open sessions.", lambda: len(sessions))
        m.gauge("voicegate_connections", "Open session WebSockets.",
                lambda: sum(len(s.connections) for s in sessions.values()))
        m.gauge("voicegate_utterances_in_flight", "Utterances playing or queued.",
                lambda: sum(len(s.utterances.live()) for s in sessions.values()))
        m.gauge("voicegate_engine_streams", "Streams the engine is stepping.",
                lambda: self.engine.scheduler.live_streams)
        capacity = self.settings.capacity_streams or self.engine.settings.max_streams
        m.gauge("voicegate_engine_capacity_streams",
                "Streams this replica serves in real time (--capacity-streams, set from bench figures; default "
                "the engine's max streams): scale on voicegate_engine_streams against it.", lambda: capacity)
        m.gauge("voicegate_engine_steps", "Engine steps so far (monotonic).", lambda: self.engine.scheduler.steps)
        m.gauge("voicegate_engine_graph_recordings_after_ready",
                "CUDA graphs recorded after warm-up, in live traffic (a first-frame spike each; should stay 0).",
                lambda: self.engine.scheduler.frame_step.recordings_after_ready)
        m.track_engine_batches(lambda: self.engine.scheduler.batch_sizes)
        stt = self.stt
        if stt is not None:
            m.gauge("voicegate_stt_queue_depth", "Recognition requests waiting (all sessions; the running one "
                                                 "not counted).", lambda: stt.pending)
            m.gauge("voicegate_stt_decode_seconds", "Seconds the recognizer spent decoding so far (monotonic).",
                    lambda: stt.stats.decode_s)

    @property
    def sessions(self) -> dict[str, Session]:
        return self._sessions.table

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
        """The engine's own fast tokenizer (loaded once, by the engine), for spoken_text and usage counts."""
        return self.engine.tokenizer

    def _track_flows(self, app: ASGIApp) -> ASGIApp:
        """The app, with each HTTP request and API socket's task kept in `_flows` (the session sockets end
        through their sessions)."""
        flows, cut = self._flows, self._cut

        async def tracked(scope: Scope, receive: Receive, send: Send) -> None:
            task = asyncio.current_task()
            if task is None or scope.get("path") == "/v1/session":
                await app(scope, receive, send)
                return
            flows.add(task)
            try:
                await app(scope, receive, send)
            except asyncio.CancelledError:
                if task not in cut:
                    raise
                task.uncancel()  # our own cut at shutdown: the flow ends here and uvicorn closes its connection
            finally:
                flows.discard(task)

        return tracked

    def health(self) -> dict[str, Any]:
        status = "stopping" if self.shutting_down else "draining" if self.draining else "serving"
        return {"ok": status == "serving", "status": status, "replica": self._sessions.replica,
                "model": self.info.name, "model_kind": self.info.kind,
                "device": str(self.engine.model.device), "sessions": len(self.sessions),
                "max_sessions": self.settings.max_sessions, "uptime_s": round(time.time() - self.started, 1),
                "stt": self._describe_stt()}

    def _describe_stt(self) -> dict[str, Any] | None:
        recognizer = self.stt.recognizer if self.stt is not None else None
        if recognizer is None:
            return None
        model = getattr(getattr(recognizer, "settings", None), "model", None)
        # a model directory shows as its last part: healthz is public, the server's paths are not
        return {"backend": recognizer.name, "model": Path(model).name if model else None}

    # ---- lifecycle --------------------------------------------------------------------------------
    async def start(self) -> None:
        s = self.settings
        # our own listening socket: port 0 gives the OS's choice, known before the first request
        family = socket.AF_INET6 if ":" in s.host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((s.host, s.port))
        self._socket = sock
        config = self._uvicorn.config
        config.load()
        self._uvicorn.lifespan = config.lifespan_class(config)  # as uvicorn's serve() does (lifespan "off")
        await self._uvicorn.startup(sockets=[sock])
        self._clock = asyncio.get_running_loop().create_task(self._tick(), name="http-date")
        log.info("voicegate serving on http://%s:%d/", s.host, self.port)

    async def _tick(self) -> None:
        """The Date and Server headers of every response, refreshed once a second."""
        while True:
            await self._uvicorn.on_tick(0)
            await asyncio.sleep(1.0)

    @property
    def port(self) -> int:
        """The bound port (the OS's choice when settings.port is 0)."""
        if self._socket is None:
            return self.settings.port
        return int(self._socket.getsockname()[1])

    @property
    def draining(self) -> bool:
        return self._sessions.draining

    async def drain(self) -> None:
        """Finish what is in flight, refusing new work: see the module docstring. `shutdown()` follows."""
        if self.draining or self.shutting_down:
            return
        grace = self.settings.drain_grace_s
        log.info("draining: up to %.0f s for the utterances in flight", grace)
        flows = list(self._flows)  # open now: they may finish within the grace (new ones get 503)
        self._sessions.draining = True
        waits = [self._sessions.drain(grace)]
        if flows:
            waits.append(asyncio.wait(flows, timeout=grace))
        await asyncio.gather(*waits)
        log.info("drained")

    async def shutdown(self, grace_s: float | None = None) -> None:
        """Graceful stop (in-flight utterances get `grace_s`, default settings.shutdown_grace_s): see the
        module docstring."""
        if self.shutting_down:
            return
        log.info("shutting down")
        self.shutting_down = True
        for server in getattr(self._uvicorn, "servers", []):
            server.close()  # stop accepting; open connections stay until their sessions end
        flows = list(self._flows)
        self._cut.update(flows)
        for task in flows:  # a streamed answer is cut (its engine stream stops); an API socket closes 1001
            task.cancel()
        await asyncio.gather(*flows, return_exceptions=True)
        await self._sessions.shutdown(self.settings.shutdown_grace_s if grace_s is None else grace_s)
        if self.stt is not None:
            await self.stt.close()
        if self._uvicorn.started:
            with contextlib.suppress(Exception):
                await self._uvicorn.shutdown(sockets=[self._socket] if self._socket else None)
        if self._clock is not None:
            self._clock.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._clock

    async def run(self, on_started: Callable[[Server], None] | None = None) -> bool:
        """Serve until SIGINT/SIGTERM, drain, shut down. False when a second signal cut the drain short."""
        await self.start()
        if on_started is not None:
            on_started(self)
        # after a drain nothing plays any more; after a cut one nothing may
        return await serve_until_signal(lambda: self.shutdown(grace_s=0.0), drain=self.drain)
