"""`voicegate wyoming`: Home Assistant's Wyoming protocol (TCP) in front of the streaming engine.

Per connection (one `WyomingHandler`):
  describe                          -> info (one TTS program; the catalogue's voices; streaming supported)
  synthesize-start {voice}          opens an engine stream at once (its voice prefix prefills meanwhile)
  synthesize-chunk {text}*          each chunk goes straight into stream.push_text: split anywhere is fine
  synthesize {text}  (in a stream)  HA's compatibility copy of the whole text: ignored
  synthesize-stop                   stream.finish(); the tail plays out, then synthesize-stopped
  synthesize {text}  (no stream)    one-shot: audio-start, audio-chunk*, audio-stop
Audio goes out as audio-start, one audio-chunk per 80 ms engine frame (24 kHz, s16le, mono), audio-stop,
from the first word on, while chunks are still arriving. Each request is a "flow" with one task that
writes its audio; the reader never waits on audio, so a client that disconnects is seen at once and its
streams are cancelled (the engine row is freed before the next step). Requests on one connection play in
order; every connection shares the one engine, whose scheduler batches all their streams.

Bad requests get a Wyoming `error` event {text, code} and the connection stays usable. A stream whose start
was refused still answers its synthesize-stop with synthesize-stopped, so a client waiting for the end
(as HA does) is not left hanging.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import logging
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from wyoming.audio import AudioChunk, AudioStart, AudioStop
from wyoming.error import Error
from wyoming.event import Event
from wyoming.info import Describe, Info
from wyoming.ping import Ping, Pong
from wyoming.server import AsyncEventHandler, AsyncServer, AsyncTcpServer
from wyoming.tts import (
    Synthesize,
    SynthesizeChunk,
    SynthesizeStart,
    SynthesizeStop,
    SynthesizeStopped,
    SynthesizeVoice,
)

from agent.media.frames import frames
from agent.settings import ENGINE_FRAME_MS, SAMPLE_RATE
from agent.signals import wait_for_stop_signal
from agent.text_input import clean_text
from agent.voices.catalogue import ModelInfo, ResolvedVoice
from agent.voices.errors import VoiceError
from agent.wyoming.info import resolve, tts_program

if TYPE_CHECKING:
    from tts_engine import Engine, Stream

log = logging.getLogger(__name__)

DEFAULT_URI = "tcp://127.0.0.1:10200"  # 10200: the Wyoming TTS port convention


@dataclass
class WyomingSettings:
    uri: str = DEFAULT_URI  # tcp://HOST:PORT (port 0: any free port) or unix://PATH
    voice: str | None = None  # default voice when a request names none (None: the catalogue's first)
    language: str = "auto"  # default language name when a request names none
    instruct: str | None = None  # style instruction for every stream (1.7B CustomVoice, VoiceDesign)
    seed: int = 0  # per-stream sampling seed: the same text and voice give the same audio
    greedy: bool = False
    zeroconf_name: str | None = None  # announce over mDNS for HA discovery (tcp:// only)
    voices_dir: Path | None = None  # saved voices next to the presets (None: presets only)


@dataclass(eq=False)
class Flow:
    """One request's audio: its engine stream (None when refused) and the task that writes its audio."""

    id: int
    stream: Stream | None
    streaming: bool  # synthesize-start flow: ends with synthesize-stopped after synthesize-stop
    stopped: asyncio.Event = field(default_factory=asyncio.Event)  # synthesize-stop arrived (or one-shot)
    task: asyncio.Task[None] | None = None
    started: float = field(default_factory=time.monotonic)
    first_text: float | None = None
    first_audio: float | None = None
    frames: int = 0


class WyomingHandler(AsyncEventHandler):
    """One Wyoming connection."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, service: WyomingService) -> None:
        super().__init__(reader, writer)
        self.service = service
        self.conn = next(service.conn_ids)
        self.open_flow: Flow | None = None  # between synthesize-start and synthesize-stop
        self.flows: list[Flow] = []  # flows whose audio is not finished, in order
        log.info("wyoming conn=%d connected", self.conn)

    # ---- events --------------------------------------------------------------------------------
    async def handle_event(self, event: Event) -> bool:
        try:
            await self._dispatch(event)
        except (KeyError, TypeError) as exc:  # a field missing or of the wrong type: say so, keep the connection
            await self._error("bad_event", f"malformed {event.type} event: {exc!r}")
        return True

    async def _dispatch(self, event: Event) -> None:
        if Describe.is_type(event.type):
            await self.service.refresh()
            await self.write_event(self.service.info_event())
        elif SynthesizeStart.is_type(event.type):
            await self._start(SynthesizeStart.from_event(event))
        elif SynthesizeChunk.is_type(event.type):
            await self._chunk(SynthesizeChunk.from_event(event).text)
        elif SynthesizeStop.is_type(event.type):
            await self._stop()
        elif Synthesize.is_type(event.type):
            if self.open_flow is None:  # inside a stream it is HA's compatibility copy: ignored
                await self._one_shot(Synthesize.from_event(event))
        elif Ping.is_type(event.type):
            await self.write_event(Pong(text=Ping.from_event(event).text).event())
        else:
            log.debug("wyoming conn=%d ignored event %s", self.conn, event.type)

    async def _start(self, start: SynthesizeStart) -> None:
        if self.open_flow is not None:
            await self._error("stream_open", "synthesize-start while a stream is open: send synthesize-stop first")
            return
        stream = await self._open(start.voice)
        self.open_flow = self._launch(stream, streaming=True)

    async def _chunk(self, text: str) -> None:
        flow = self.open_flow
        if flow is None:
            await self._error("no_stream", "synthesize-chunk outside a stream: send synthesize-start first")
            return
        if flow.stream is None or flow.stream.end is not None:
            return  # refused or failed stream: its error was sent; synthesize-stop still answers
        if flow.first_text is None:
            flow.first_text = time.monotonic()
        try:
            flow.stream.push_text(clean_text(text))
        except ValueError as exc:  # over the engine's per-utterance text limit
            flow.stream.cancel()
            await self._error("text_too_long", str(exc))
        except RuntimeError:  # the stream ended meanwhile (runaway cap): nothing more to say
            log.info("wyoming conn=%d flow=%d chunk after the stream ended", self.conn, flow.id)

    async def _stop(self) -> None:
        flow = self.open_flow
        if flow is None:
            await self._error("no_stream", "synthesize-stop outside a stream")
            return
        self.open_flow = None
        if flow.stream is not None:
            flow.stream.finish()
        flow.stopped.set()

    async def _one_shot(self, request: Synthesize) -> None:
        if not isinstance(request.text, str):  # checked before a stream exists (bad_event, nothing leaks)
            raise TypeError(f"text must be a string, not {type(request.text).__name__}")
        stream = await self._open(request.voice)
        if stream is None:
            return
        try:
            stream.push_text(clean_text(request.text))
        except ValueError as exc:
            stream.cancel()
            await self._error("text_too_long", str(exc))
            return
        stream.finish()
        flow = self._launch(stream, streaming=False)
        flow.first_text = flow.started
        flow.stopped.set()

    async def _open(self, requested: SynthesizeVoice | None) -> Stream | None:
        """A new engine stream for a Wyoming `voice` (None, after an error event, when it cannot be had)."""
        try:
            voice = self.service.resolve(requested)
            return self.service.open_stream(voice)
        except VoiceError as exc:
            await self._error(exc.code, str(exc))
        except ValueError as exc:  # the engine refused the voice
            await self._error("invalid_voice", str(exc))
        return None

    def _launch(self, stream: Stream | None, streaming: bool) -> Flow:
        flow = Flow(next(self.service.flow_ids), stream, streaming)
        previous = self.flows[-1].task if self.flows else None
        flow.task = asyncio.create_task(self._play(flow, previous), name=f"wyoming-flow-{flow.id}")
        self.flows.append(flow)
        return flow

    async def _error(self, code: str, text: str) -> None:
        log.info("wyoming conn=%d error code=%s %s", self.conn, code, text)
        await self.write_event(Error(text=text, code=code).event())

    # ---- audio (one task per flow) ---------------------------------------------------------------
    async def _play(self, flow: Flow, previous: asyncio.Task[None] | None) -> None:
        try:
            if previous is not None:  # requests on one connection are answered in order
                await asyncio.wait([previous])
            if flow.stream is not None:
                await self._send_audio(flow, flow.stream)
            if flow.streaming:
                await flow.stopped.wait()
                await self.write_event(SynthesizeStopped().event())
            self._log_done(flow)
        except ConnectionError as exc:  # the client went away while we wrote: disconnect() cleans up
            log.info("wyoming conn=%d flow=%d write failed: %s", self.conn, flow.id, exc)
        except Exception:  # a bug: never lose it silently in a task nobody awaits
            log.exception("wyoming conn=%d flow=%d failed", self.conn, flow.id)
        finally:
            if flow.stream is not None:
                flow.stream.cancel()  # no-op once it ended; frees the engine row otherwise
            if flow in self.flows:
                self.flows.remove(flow)

    async def _send_audio(self, flow: Flow, stream: Stream) -> None:
        fmt = {"rate": SAMPLE_RATE, "width": 2, "channels": 1}
        await self.write_event(AudioStart(timestamp=0, **fmt).event())
        async for frame in frames(stream):
            if flow.first_audio is None:
                flow.first_audio = time.monotonic()
            pcm = frame.pcm.astype("<i2", copy=False).tobytes()
            await self.write_event(AudioChunk(audio=pcm, timestamp=frame.index * ENGINE_FRAME_MS, **fmt).event())
            flow.frames += 1
        end = stream.end
        if end is not None and end.reason == "error":
            await self._error("engine_error", f"synthesis failed: {end.error}")
        await self.write_event(AudioStop(timestamp=flow.frames * ENGINE_FRAME_MS).event())

    def _log_done(self, flow: Flow) -> None:
        end = flow.stream.end if flow.stream is not None else None
        first = (None if flow.first_audio is None or flow.first_text is None
                 else round((flow.first_audio - flow.first_text) * 1000, 1))
        log.info("wyoming conn=%d flow=%d done streaming=%s frames=%d end=%s first_audio_ms=%s", self.conn,
                 flow.id, flow.streaming, flow.frames, end.reason if end else "refused", first)

    async def disconnect(self) -> None:
        """The client is gone: cancel every stream now (engine rows freed before the next step)."""
        tasks = [f.task for f in self.flows if f.task is not None]
        for flow in list(self.flows):
            if flow.stream is not None:
                flow.stream.cancel()
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks)
        log.info("wyoming conn=%d disconnected", self.conn)


class WyomingService:
    """The Wyoming server around one engine: voices from the shared catalogue (ModelInfo)."""

    def __init__(self, engine: Engine, settings: WyomingSettings | None = None, model_name: str = "model") -> None:
        self.engine = engine
        self.settings = settings or WyomingSettings()
        self.info = ModelInfo.from_engine(engine, model_name, self.settings.voices_dir)
        self.conn_ids = itertools.count(1)
        self.flow_ids = itertools.count(1)
        if not self.settings.uri.startswith(("tcp://", "unix://")):
            raise ValueError(f"--uri must be tcp://HOST:PORT or unix://PATH, not {self.settings.uri!r}")
        self.server: AsyncServer = AsyncServer.from_uri(self.settings.uri)
        self._zeroconf: Any = None
        # Defaults are checked now, so a typo fails at startup rather than on Home Assistant's first request.
        default = resolve(self.info, SynthesizeVoice(name=self.settings.voice, language=self.settings.language),
                          None, "auto", self.settings.instruct)
        if default.warning:
            log.warning("--instruct: %s", default.warning)
        if self.settings.voice is not None:
            self.settings.voice = default.name
        if self.settings.language != "auto":
            self.settings.language = default.language

    def info_event(self) -> Event:
        return Info(tts=[tts_program(self.info)]).event()

    def resolve(self, requested: SynthesizeVoice | None) -> ResolvedVoice:
        s = self.settings
        return resolve(self.info, requested, s.voice, s.language, s.instruct)

    def open_stream(self, voice: ResolvedVoice) -> Stream:
        return self.engine.open_stream(**voice.stream_args, greedy=self.settings.greedy, seed=self.settings.seed)

    async def refresh(self) -> None:
        """Voices added or removed while serving (`voicegate voices add|remove`) show up in the next info."""
        self.info.adopt(await asyncio.to_thread(self.info.reload))

    def handler(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> WyomingHandler:
        return WyomingHandler(reader, writer, self)

    async def start(self) -> None:
        await self.server.start(self.handler)
        log.info("wyoming serving %s on %s (%d voices)", self.info.name, self.uri, len(self.info.voices))
        if self.settings.zeroconf_name:
            await self._register_zeroconf(self.settings.zeroconf_name)

    @property
    def port(self) -> int | None:
        """The bound TCP port (the OS's choice for port 0); None for unix://."""
        if not isinstance(self.server, AsyncTcpServer):
            return None
        listening = getattr(self.server, "_server", None)  # wyoming keeps its asyncio server there
        if listening is not None and listening.sockets:
            return int(listening.sockets[0].getsockname()[1])
        return self.server.port

    @property
    def uri(self) -> str:
        if isinstance(self.server, AsyncTcpServer):
            return f"tcp://{self.server.host}:{self.port}"
        return self.settings.uri

    async def _register_zeroconf(self, name: str) -> None:
        from wyoming.zeroconf import HomeAssistantZeroconf  # needs the zeroconf package

        if not isinstance(self.server, AsyncTcpServer):
            raise ValueError("--zeroconf needs a tcp:// URI")
        host = self.server.host if self.server.host not in ("0.0.0.0", "", "::") else None
        self._zeroconf = HomeAssistantZeroconf(port=self.port or 0, name=name, host=host)
        await self._zeroconf.register_server()
        log.info("wyoming announced over zeroconf as %s._wyoming._tcp.local.", name)

    async def stop(self) -> None:
        """Close every connection (their streams are cancelled) and stop listening."""
        await self.server.stop()
        if self._zeroconf is not None:
            # HomeAssistantZeroconf has no unregister call: closing its AsyncZeroconf withdraws the service.
            with contextlib.suppress(Exception):
                await self._zeroconf._aiozc.async_close()

    async def run(self, on_started: Any = None) -> None:
        """Serve until SIGINT/SIGTERM."""
        await self.start()
        if on_started is not None:
            on_started(self)
        try:
            await wait_for_stop_signal()
        finally:
            await self.stop()


# ---- CLI (flags: agent/cli.py) ----------------------------------------------------------------------
def run_from_args(args: argparse.Namespace) -> int:
    """`voicegate wyoming`: load the model, start one engine, serve until SIGINT/SIGTERM."""
    if args.zeroconf and not args.uri.startswith("tcp://"):
        raise ValueError("--zeroconf needs a tcp:// URI")
    if not args.uri.startswith(("tcp://", "unix://")):
        raise ValueError(f"--uri must be tcp://HOST:PORT or unix://PATH, not {args.uri!r}")
    logging.getLogger("zeroconf").setLevel(logging.WARNING)
    import torch

    from agent.cli.engine_options import build_engine
    from tts_engine import load_model

    if args.threads:
        torch.set_num_threads(args.threads)
    from agent.voices.store import default_voices_dir

    settings = WyomingSettings(uri=args.uri, voice=args.voice, language=args.language, instruct=args.instruct,
                               seed=args.seed, greedy=args.greedy, zeroconf_name=args.zeroconf,
                               voices_dir=Path(args.voices_dir) if args.voices_dir else default_voices_dir())
    model = load_model(args.model, device=args.device, precision=args.precision)
    engine = build_engine(model, args.compile, max_streams=args.max_streams)
    try:
        service = WyomingService(engine, settings, model_name=args.model)

        def started(svc: WyomingService) -> None:
            print(f"voicegate: Wyoming TTS for {args.model} on {svc.uri} ({len(svc.info.voices)} voices)",
                  file=sys.stderr, flush=True)

        asyncio.run(service.run(on_started=started))
    finally:
        engine.close()
    print("voicegate: stopped", file=sys.stderr)
    return 0
