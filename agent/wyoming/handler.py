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

Bad requests get a Wyoming `error` event {text, code} and the connection stays usable (fields are checked by
agent.wyoming.events). A stream whose start was refused still answers its synthesize-stop with
synthesize-stopped, so a client waiting for the end (as HA does) is not left hanging. A frame that cannot be
read (agent.wyoming.framing) or a client gone mid-frame closes the connection with one INFO line. At most
`MAX_FLOWS` requests of one connection are in flight: past that, the connection is not read until one ends
(TCP backpressure), so a client that pipelines requests without reading cannot queue engine streams without
bound.

The engine comes ready from the caller (`voicegate wyoming` loads the model in agent.cli): this package
imports neither torch nor the model code.
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
from wyoming.info import Info
from wyoming.ping import Pong
from wyoming.server import AsyncEventHandler, AsyncServer, AsyncTcpServer
from wyoming.tts import SynthesizeStopped, SynthesizeVoice

from agent.boundary import clean_text
from agent.media.frames import StreamFailed, frames
from agent.settings import ENGINE_FRAME_MS, SAMPLE_RATE
from agent.signals import serve_until_signal
from agent.voices.catalogue import ModelInfo, ResolvedVoice
from agent.voices.errors import VoiceError
from agent.wyoming.events import BadEvent, ping_text, text_of, voice_of
from agent.wyoming.framing import FramingError, read_frame
from agent.wyoming.info import resolve, tts_program

if TYPE_CHECKING:
    from tts_engine import Engine, Stream

log = logging.getLogger(__name__)

DEFAULT_URI = "tcp://127.0.0.1:10200"  # 10200: the Wyoming TTS port convention
MAX_FLOWS = 8  # requests of one connection in flight (HA sends one at a time)


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
    async def run(self) -> None:
        """Read frames until the client leaves (the library's loop, with our reader: see agent.wyoming.framing)."""
        self._is_running = True
        reason = "client closed"
        try:
            while self._is_running:
                try:
                    event = await read_frame(self.reader)
                except BadEvent as exc:
                    await self._error("bad_event", str(exc))
                    continue
                if event is None:
                    break
                await self.handle_event(event)
        except FramingError as exc:
            reason = f"unreadable frame: {exc}"
        except ConnectionError as exc:  # an answer could not be written: the client is gone
            reason = f"write failed: {exc}"
        finally:
            await self.disconnect(reason)
            self.writer.close()

    async def handle_event(self, event: Event) -> bool:
        try:
            await self._dispatch(event)
        except BadEvent as exc:  # a field missing or of the wrong type: say so, keep the connection
            await self._error("bad_event", str(exc))
        except ConnectionError:  # the client is gone: run() ends the connection
            raise
        except Exception:  # a bug: logged whole, the client told, the connection goes on
            log.exception("wyoming conn=%d %s failed", self.conn, event.type)
            await self._error("internal_error", f"{event.type} failed inside the server")
        return True

    async def _dispatch(self, event: Event) -> None:
        kind, data = event.type, event.data
        if kind == "describe":
            await self.service.refresh()
            await self.write_event(self.service.info_event())
        elif kind == "synthesize-start":
            await self._start(voice_of(data, kind))
        elif kind == "synthesize-chunk":
            await self._chunk(text_of(data, kind))
        elif kind == "synthesize-stop":
            await self._stop()
        elif kind == "synthesize":
            if self.open_flow is None:  # inside a stream it is HA's compatibility copy: ignored
                await self._one_shot(text_of(data, kind), voice_of(data, kind))
        elif kind == "ping":
            await self.write_event(Pong(text=ping_text(data)).event())
        else:
            log.debug("wyoming conn=%d ignored event %r", self.conn, kind)

    async def _start(self, voice: SynthesizeVoice | None) -> None:
        if self.open_flow is not None:
            await self._error("stream_open", "synthesize-start while a stream is open: send synthesize-stop first")
            return
        await self._wait_for_room()
        stream = await self._open(voice)
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

    async def _one_shot(self, text: str, voice: SynthesizeVoice | None) -> None:
        await self._wait_for_room()
        stream = await self._open(voice, clean_text(text))
        if stream is None:
            return
        flow = self._launch(stream, streaming=False)
        flow.first_text = flow.started
        flow.stopped.set()

    async def _wait_for_room(self) -> None:
        """Backpressure: with MAX_FLOWS requests in flight, read nothing more until the oldest ends. Only called
        with no open stream, so every flow waited on has all its text and ends by itself."""
        while len(self.flows) >= MAX_FLOWS:
            oldest = self.flows[0].task
            assert oldest is not None
            await asyncio.wait([oldest])

    async def _open(self, requested: SynthesizeVoice | None, text: str | None = None) -> Stream | None:
        """A new engine stream for a Wyoming `voice`, holding the whole `text` of a one-shot request (None, after
        an error event, when it cannot be had; the engine takes no row for a refused one)."""
        try:
            voice = self.service.resolve(requested)
        except VoiceError as exc:
            await self._error(exc.code, str(exc))
            return None
        if text is not None and len(text) > self.service.engine.settings.max_text_chars:
            await self._error("text_too_long", f"utterance text over {self.service.engine.settings.max_text_chars} "
                                               "characters")
            return None
        try:
            return self.service.open_stream(voice, text)
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
        try:
            async for frame in frames(stream):
                if flow.first_audio is None:
                    flow.first_audio = time.monotonic()
                pcm = frame.pcm.astype("<i2", copy=False).tobytes()
                await self.write_event(AudioChunk(audio=pcm, timestamp=frame.index * ENGINE_FRAME_MS, **fmt).event())
                flow.frames += 1
        except StreamFailed as exc:  # the engine logged it; the client hears the end and, streaming, its stop
            await self._error("engine_error", f"synthesis failed: {exc}")
        await self.write_event(AudioStop(timestamp=flow.frames * ENGINE_FRAME_MS).event())

    def _log_done(self, flow: Flow) -> None:
        end = flow.stream.end if flow.stream is not None else None
        first = (None if flow.first_audio is None or flow.first_text is None
                 else round((flow.first_audio - flow.first_text) * 1000, 1))
        log.info("wyoming conn=%d flow=%d done streaming=%s frames=%d end=%s first_audio_ms=%s", self.conn,
                 flow.id, flow.streaming, flow.frames, end.reason if end else "refused", first)

    async def disconnect(self, reason: str = "client closed") -> None:
        """The client is gone: cancel every stream now (engine rows freed before the next step)."""
        tasks = [f.task for f in self.flows if f.task is not None]
        for flow in list(self.flows):
            if flow.stream is not None:
                flow.stream.cancel()
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks)
        log.info("wyoming conn=%d disconnected: %s", self.conn, reason)


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

    def open_stream(self, voice: ResolvedVoice, text: str | None = None) -> Stream:
        """An engine stream for a resolved voice; `text`: a one-shot request's whole text (the engine refuses text
        it cannot take before it takes a row)."""
        s = self.settings
        return self.engine.open_stream(**voice.stream_args, greedy=s.greedy, seed=s.seed, text=text)

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
        await serve_until_signal(self.stop)


# ---- CLI (flags and model loading: agent.cli.main) ------------------------------------------------------
def settings_from_args(args: argparse.Namespace) -> WyomingSettings:
    """`voicegate wyoming`'s flags, checked before any model is loaded (ValueError with a clear message)."""
    if args.zeroconf and not args.uri.startswith("tcp://"):
        raise ValueError("--zeroconf needs a tcp:// URI")
    if not args.uri.startswith(("tcp://", "unix://")):
        raise ValueError(f"--uri must be tcp://HOST:PORT or unix://PATH, not {args.uri!r}")
    from agent.voices.store import default_voices_dir

    return WyomingSettings(uri=args.uri, voice=args.voice, language=args.language, instruct=args.instruct,
                           seed=args.seed, greedy=args.greedy, zeroconf_name=args.zeroconf,
                           voices_dir=Path(args.voices_dir) if args.voices_dir else default_voices_dir())


def serve(engine: Engine, settings: WyomingSettings, model_name: str) -> int:
    """Serve `engine` until SIGINT/SIGTERM (the caller closes the engine)."""
    logging.getLogger("zeroconf").setLevel(logging.WARNING)
    service = WyomingService(engine, settings, model_name=model_name)

    def started(svc: WyomingService) -> None:
        print(f"voicegate: Wyoming TTS for {model_name} on {svc.uri} ({len(svc.info.voices)} voices)",
              file=sys.stderr, flush=True)

    asyncio.run(service.run(on_started=started))
    print("voicegate: stopped", file=sys.stderr)
    return 0
