"""Real media servers for the agent tests: `voicegate serve` in-process on 127.0.0.1, tiny CustomVoice model.

Each server runs on its own thread with its own event loop (as `voicegate serve` would), so test code
talks to it over loopback exactly like an outside client; tests keep their own per-test loops.

    server            the shared server (default limits)
    limited_server    max_sessions=1, an API key, small send buffers (slow-consumer and limit tests)
    start_server(**)  a fresh server with custom ServerSettings fields (stopped after the test)
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import websockets

from agent.server.app import Server
from agent.settings import ServerSettings, SessionSettings

API_KEY = "test-key"


class ServerThread:
    """A Server on a background thread (own loop); `url`, `ws_url`, `stop()`."""

    def __init__(self, engine: Any, settings: ServerSettings, name: str = "tiny", rtc_settings: Any = None,
                 on_thread_start: Callable[[], None] | None = None, stt: Any = None) -> None:
        self.engine = engine
        self.stt = stt  # a RecognizerService (voice in), or None
        self._on_thread_start = on_thread_start  # e.g. join a network namespace before any socket exists
        self.rtc_settings = rtc_settings
        self.settings = settings
        self.name = name
        self.loop = asyncio.new_event_loop()
        self.server: Server | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="voicegate-test-server", daemon=True)
        self._thread.start()
        if not self._ready.wait(30):
            raise TimeoutError("server did not start")
        if self._error is not None:
            raise self._error

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        try:
            if self._on_thread_start is not None:
                self._on_thread_start()
            self.server = Server(self.engine, self.settings, model_name=self.name, rtc_settings=self.rtc_settings,
                                 stt=self.stt)
            self.loop.run_until_complete(self.server.start())
        except BaseException as exc:  # surfaced to the fixture
            self._error = exc
            self._ready.set()
            return
        self._ready.set()
        self.loop.run_forever()

    @property
    def port(self) -> int:
        assert self.server is not None
        return self.server.port

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/v1/session"

    def call(self, fn: Callable[[], Any]) -> Any:
        """Run `fn` on the server's loop and return its result (for state checks)."""
        async def run() -> Any:
            return fn()
        return asyncio.run_coroutine_threadsafe(run(), self.loop).result(10)

    def shutdown(self, timeout: float = 30.0) -> None:
        """Graceful shutdown, as on SIGTERM."""
        assert self.server is not None
        asyncio.run_coroutine_threadsafe(self.server.shutdown(), self.loop).result(timeout)

    def stop(self) -> None:
        if self.server is not None and not self.server.shutting_down:
            with contextlib.suppress(Exception):
                self.shutdown()
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)

    def wait_sessions(self, n: int, timeout: float = 10.0) -> None:
        """Until the server holds exactly `n` sessions (closing happens just after the client's close)."""
        deadline = time.monotonic() + timeout
        while self.call(lambda: len(self.server.sessions)) != n:  # type: ignore[union-attr]
            if time.monotonic() > deadline:
                raise TimeoutError(f"server still has {self.call(lambda: len(self.server.sessions))} sessions")
            time.sleep(0.02)


def wait_no_streams(engine: Any, timeout: float = 2.0) -> int:
    """Engine streams still live after waiting up to `timeout` for all to end (a cancel frees its row at the
    engine's next step)."""
    deadline = time.monotonic() + timeout
    while engine.scheduler.live_streams and time.monotonic() < deadline:
        time.sleep(0.01)
    return int(engine.scheduler.live_streams)


def http_get(url: str, headers: dict[str, str] | None = None) -> tuple[int, str, str]:
    """(status, content type, body) — blocking; call through asyncio.to_thread from async tests."""
    request = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=10) as resp:
            return resp.status, resp.headers.get("Content-Type", ""), resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers.get("Content-Type", ""), exc.read().decode()


@dataclass
class Client:
    """A websockets client that sorts what arrives into events and binary audio frames."""

    ws: Any
    events: list[dict[str, Any]] = field(default_factory=list)
    frames: list[bytes] = field(default_factory=list)
    order: list[str] = field(default_factory=list)  # event types and "<audio>", in arrival order

    async def send(self, **msg: Any) -> None:
        await self.ws.send(json.dumps(msg))

    async def next(self, timeout: float = 20.0) -> dict[str, Any]:
        """The next JSON event (binary frames met on the way are collected)."""
        while True:
            data = await asyncio.wait_for(self.ws.recv(), timeout)
            if isinstance(data, bytes):
                self.frames.append(data)
                self.order.append("<audio>")
                continue
            evt = json.loads(data)
            self.events.append(evt)
            self.order.append(evt["type"])
            return evt

    async def expect(self, *types: str, timeout: float = 20.0) -> dict[str, Any]:
        """Skip events until one of `types` arrives (an unexpected `error` fails the test)."""
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            left = deadline - asyncio.get_running_loop().time()
            evt = await self.next(max(0.01, left))
            if evt["type"] in types:
                return evt
            assert evt["type"] != "error" or "error" in types, f"unexpected error event: {evt}"

    async def audio_frames(self, n: int, timeout: float = 20.0) -> None:
        """Read until at least `n` audio frames have arrived."""
        async with asyncio.timeout(timeout):
            while len(self.frames) < n:
                data = await self.ws.recv()
                if isinstance(data, bytes):
                    self.frames.append(data)
                    self.order.append("<audio>")
                else:
                    evt = json.loads(data)
                    self.events.append(evt)
                    self.order.append(evt["type"])

    async def speak(self, text: str, timeout: float = 30.0) -> dict[str, Any]:
        """text.append + text.flush, then the utterance.done (or interrupted) event."""
        await self.send(type="text.append", text=text)
        await self.send(type="text.flush")
        return await self.expect("utterance.done", "utterance.interrupted", timeout=timeout)

    async def quiet_for(self, seconds: float) -> list[Any]:
        """Everything that arrives within `seconds` (expects nothing, returns what came)."""
        got: list[Any] = []
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                while True:
                    got.append(await self.ws.recv())
        return got


@contextlib.asynccontextmanager
async def session_client(url: str, **connect_kwargs: Any):  # type: ignore[no-untyped-def]
    """Connect, read session.created, yield (Client, created event)."""
    async with websockets.connect(url, **connect_kwargs) as ws:
        client = Client(ws)
        created = await client.next()
        assert created["type"] == "session.created", created
        yield client, created


@pytest.fixture(scope="session")
def engine(tiny_checkpoint: Callable[..., Path]) -> Iterator[Any]:
    """One engine for every test server (its own model: the scheduler owns the model's caches)."""
    from tts_engine import Engine, EngineSettings, load_model

    eng = Engine(load_model(tiny_checkpoint("custom_voice"), device="cpu"), EngineSettings(max_streams=8))
    yield eng
    eng.close()


@contextlib.contextmanager
def serve_checkpoint(checkpoint: Path, name: str, *, voices_dir: Path | None = None, max_streams: int = 2,
                     rtc_settings: Any = None, on_thread_start: Callable[[], None] | None = None
                     ) -> Iterator[ServerThread]:
    """A server with an engine of its own on `checkpoint` (e.g. a Base model with saved voices)."""
    from tts_engine import Engine, EngineSettings, load_model

    engine = Engine(load_model(checkpoint, device="cpu"), EngineSettings(max_streams=max_streams))
    srv = ServerThread(engine, ServerSettings(port=0, voices_dir=voices_dir), name=name, rtc_settings=rtc_settings,
                       on_thread_start=on_thread_start)
    try:
        yield srv
    finally:
        srv.stop()
        engine.close()


def loopback_rtc() -> Any:
    """WebRTC on 127.0.0.1 only (no interface addresses, no STUN)."""
    from agent.media.rtc import RtcSettings

    return RtcSettings(host_addresses=["127.0.0.1"])


@pytest.fixture(scope="session")
def server(engine: Any) -> Iterator[ServerThread]:
    srv = ServerThread(engine, ServerSettings(port=0), rtc_settings=loopback_rtc())
    yield srv
    srv.stop()


@pytest.fixture(scope="session")
def limited_server(engine: Any) -> Iterator[ServerThread]:
    settings = ServerSettings(port=0, api_key=API_KEY, max_sessions=1, write_limit=4096,
                              socket_send_buffer=4096,
                              session=SessionSettings(max_outgoing_bytes=8 * 3840))
    srv = ServerThread(engine, settings)
    yield srv
    srv.stop()


@pytest.fixture
def start_server(engine: Any) -> Iterator[Callable[..., ServerThread]]:
    started: list[ServerThread] = []

    def start(**fields: Any) -> ServerThread:
        srv = ServerThread(engine, ServerSettings(port=0, **fields), rtc_settings=loopback_rtc())
        started.append(srv)
        return srv

    yield start
    for srv in started:
        srv.stop()
