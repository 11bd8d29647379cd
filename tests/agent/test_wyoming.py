"""`voicegate wyoming` against the real `wyoming` client library on loopback (tiny CustomVoice model).

The server runs in the test's loop on 127.0.0.1 port 0; clients are `wyoming.client.AsyncTcpClient`,
as Home Assistant uses. References come from the same engine, driven directly.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from wyoming.audio import AudioChunk, AudioStart, AudioStop
from wyoming.client import AsyncTcpClient
from wyoming.error import Error
from wyoming.event import Event
from wyoming.info import Describe, Info
from wyoming.ping import Ping
from wyoming.tts import Synthesize, SynthesizeChunk, SynthesizeStart, SynthesizeStop, SynthesizeVoice

from agent.cli.main import build_parser, main
from agent.wyoming.handler import WyomingService, WyomingSettings

FRAME_BYTES = 1920 * 2
TEXT = "Hello there, 你好世界 👋🏽 how are you today?"
# Split inside words, inside a CJK word and between an emoji and its skin-tone modifier.
CHUNKS = ["Hel", "lo th", "ere, 你", "好世", "界 👋", "🏽 how a", "re you to", "day?"]
assert "".join(CHUNKS) == TEXT


@pytest.fixture
async def service(engine: Any) -> AsyncIterator[WyomingService]:
    svc = WyomingService(engine, WyomingSettings(uri="tcp://127.0.0.1:0"), model_name="tiny")
    await svc.start()
    yield svc
    await svc.stop()
    await wait_engine_idle(engine)


async def wait_engine_idle(engine: Any, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while engine.scheduler.live_streams and time.monotonic() < deadline:
        await asyncio.sleep(0.01)
    assert engine.scheduler.live_streams == 0


@contextlib.asynccontextmanager
async def client(svc: WyomingService) -> AsyncIterator[AsyncTcpClient]:
    assert svc.port
    async with AsyncTcpClient("127.0.0.1", svc.port) as c:
        yield c


async def read(c: AsyncTcpClient, timeout: float = 20.0) -> Event:
    event = await asyncio.wait_for(c.read_event(), timeout)
    assert event is not None, "server closed the connection"
    return event


async def read_until(c: AsyncTcpClient, *types: str, timeout: float = 30.0) -> list[Event]:
    """Every event up to and including the first of `types`."""
    events: list[Event] = []
    async with asyncio.timeout(timeout):
        while True:
            events.append(await read(c))
            if events[-1].type in types:
                return events


def pcm_of(events: list[Event]) -> np.ndarray:
    chunks = [AudioChunk.from_event(e) for e in events if AudioChunk.is_type(e.type)]
    for chunk in chunks:
        assert (chunk.rate, chunk.width, chunk.channels) == (24000, 2, 1)
        assert len(chunk.audio) == FRAME_BYTES  # one 80 ms engine frame per audio-chunk
    return np.frombuffer(b"".join(c.audio for c in chunks), dtype="<i2")


async def reference_pcm(engine: Any, text: str, voice: str) -> np.ndarray:
    """The same text, voice and seed through the engine directly, in one piece."""
    def run() -> np.ndarray:
        stream = engine.open_stream(voice, "auto", seed=0)
        stream.push_text(text)
        stream.finish()
        frames, end = stream.collect()
        assert end.reason in ("eos", "cap"), end
        return np.concatenate([f.pcm for f in frames]).astype("<i2")
    return await asyncio.to_thread(run)


def assert_same_audio(got: np.ndarray, want: np.ndarray, batched: bool = False) -> None:
    assert got.shape == want.shape and got.size > 0
    # Same codes, same decoder input: alone the PCM is bit-identical; in a batch of two, float rounding in the
    # batched decoder moves a sample by at most one step (measured: 1).
    tolerance = 1 if batched else 0
    assert int(np.max(np.abs(got.astype(np.int32) - want.astype(np.int32)))) <= tolerance


async def test_describe_lists_the_catalogue_voices_with_streaming(service: WyomingService, engine: Any) -> None:
    async with client(service) as c:
        await c.write_event(Describe().event())
        info = Info.from_event(await read(c))
    assert len(info.tts) == 1
    program = info.tts[0]
    assert program.supports_synthesize_streaming and program.installed and program.version
    assert [v.name for v in program.voices] == service.info.voices == engine.model.speakers
    voice = program.voices[0]
    assert voice.installed and voice.attribution.name and voice.version == "tiny"
    assert "en" in voice.languages and "zh" in voice.languages and "english" not in voice.languages
    assert [s.name for s in voice.speakers or []] == [voice.name]


async def test_stream_split_anywhere_plays_before_stop_and_equals_one_shot(service: WyomingService,
                                                                          engine: Any) -> None:
    async with client(service) as c:
        await c.write_event(Ping(text="hi").event())
        assert (await read(c)).type == "pong"
        await c.write_event(SynthesizeStart(voice=SynthesizeVoice(name="vivian")).event())
        for chunk in CHUNKS:
            await c.write_event(SynthesizeChunk(text=chunk).event())
        # synthesize-stop has NOT been sent: audio must already flow.
        before_stop = await read_until(c, "audio-chunk")
        assert [e.type for e in before_stop] == ["audio-start", "audio-chunk"]
        # HA's compatibility copy of the whole text, then the stop: the copy must not be spoken.
        await c.write_event(Synthesize(text=TEXT, voice=SynthesizeVoice(name="vivian")).event())
        await c.write_event(SynthesizeStop().event())
        rest = await read_until(c, "synthesize-stopped")
        types = [e.type for e in rest]
        assert types[-2:] == ["audio-stop", "synthesize-stopped"]
        assert set(types[:-2]) <= {"audio-chunk"}
        streamed = pcm_of(before_stop + rest)
        assert streamed.size % 1920 == 0

        # One-shot synthesize of the same text on the same connection: the same audio.
        await c.write_event(Synthesize(text=TEXT, voice=SynthesizeVoice(name="vivian")).event())
        one_shot = await read_until(c, "audio-stop")
        assert one_shot[0].type == "audio-start" and AudioStart.from_event(one_shot[0]).rate == 24000
        assert_same_audio(pcm_of(one_shot), streamed)
        # Nothing else comes (no synthesize-stopped for a one-shot, no second copy of the text).
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(c.read_event(), 0.5)
    assert_same_audio(streamed, await reference_pcm(engine, TEXT, "vivian"))


async def test_unknown_voice_is_an_error_and_the_connection_stays_usable(service: WyomingService) -> None:
    async with client(service) as c:
        await c.write_event(Synthesize(text="Hi there.", voice=SynthesizeVoice(name="nobody")).event())
        err = Error.from_event(await read(c))
        assert err.code == "unknown_voice" and "nobody" in err.text and "vivian" in err.text

        # A refused stream still ends cleanly: its chunks are dropped and its stop is answered.
        await c.write_event(SynthesizeStart(voice=SynthesizeVoice(name="nobody")).event())
        assert Error.from_event(await read(c)).code == "unknown_voice"
        await c.write_event(SynthesizeChunk(text="Hello").event())
        await c.write_event(SynthesizeStop().event())
        assert [e.type for e in await read_until(c, "synthesize-stopped")] == ["synthesize-stopped"]

        await c.write_event(Event(type="synthesize", data={"text": ["not", "text"]}))
        assert Error.from_event(await read(c)).code == "bad_event"  # (no stream left behind: see the fixture)
        await c.write_event(Synthesize(text="Hi", voice=SynthesizeVoice(language="klingon")).event())
        assert Error.from_event(await read(c)).code == "unsupported_language"
        await c.write_event(SynthesizeChunk(text="stray").event())
        assert Error.from_event(await read(c)).code == "no_stream"
        await c.write_event(SynthesizeStop().event())
        assert Error.from_event(await read(c)).code == "no_stream"

        # Then a good request (by language code only, as a client without a voice may send) still works.
        await c.write_event(Synthesize(text="Hi there.", voice=SynthesizeVoice(language="en-US")).event())
        events = await read_until(c, "audio-stop")
        assert pcm_of(events).size >= 1920


async def test_second_start_and_oversized_text_are_errors_and_the_stream_still_ends(service: WyomingService,
                                                                                   engine: Any) -> None:
    async with client(service) as c:
        await c.write_event(SynthesizeStart().event())
        await c.write_event(SynthesizeStart().event())
        assert Error.from_event(await read(c)).code == "stream_open"
        await c.write_event(SynthesizeChunk(text="Hello there, ").event())
        await read_until(c, "audio-chunk")
        for bad in ({}, {"text": 5}):  # a malformed chunk: an error, and the stream goes on
            await c.write_event(Event(type="synthesize-chunk", data=bad))
            assert Error.from_event((await read_until(c, "error"))[-1]).code == "bad_event"
        await c.write_event(SynthesizeChunk(text="x" * (engine.settings.max_text_chars + 1)).event())
        err = Error.from_event((await read_until(c, "error"))[-1])
        assert err.code == "text_too_long" and str(engine.settings.max_text_chars) in err.text
        await c.write_event(SynthesizeChunk(text="ignored after the error").event())
        await c.write_event(SynthesizeStop().event())
        assert [e.type for e in await read_until(c, "synthesize-stopped")][-2:] == ["audio-stop",
                                                                                    "synthesize-stopped"]


async def test_disconnect_mid_stream_frees_the_engine_slot(service: WyomingService, engine: Any) -> None:
    c = AsyncTcpClient("127.0.0.1", service.port or 0)
    await c.connect()
    await c.write_event(SynthesizeStart(voice=SynthesizeVoice(name="ryan")).event())
    await c.write_event(SynthesizeChunk(text="This sentence is never finished, the listener walks away ").event())
    await read_until(c, "audio-chunk")
    # Without a stop the stream waits for more text forever: only a cancel can free its row.
    assert engine.scheduler.live_streams == 1
    await c.disconnect()
    deadline = time.monotonic() + 2.0
    while engine.scheduler.live_streams and time.monotonic() < deadline:
        await asyncio.sleep(0.01)
    assert engine.scheduler.live_streams == 0
    await asyncio.sleep(0.05)
    assert not any(h.flows for h in service.server._handlers.values())  # the flow tasks ended too


async def test_two_clients_at_once_share_the_engine_batch(service: WyomingService, engine: Any) -> None:
    texts = {"vivian": "Two homes talk at once, one engine.", "ryan": "The other one answers, at the same time."}
    batches_before = len(engine.scheduler.batch_sizes)

    async def speak(voice: str) -> np.ndarray:
        async with client(service) as c:
            await c.write_event(SynthesizeStart(voice=SynthesizeVoice(name=voice)).event())
            for word in texts[voice].split(" "):
                await c.write_event(SynthesizeChunk(text=word + " ").event())
            first = await read_until(c, "audio-chunk")
            await c.write_event(SynthesizeStop().event())
            return pcm_of(first + await read_until(c, "synthesize-stopped"))

    got = await asyncio.gather(speak("vivian"), speak("ryan"))
    assert max(engine.scheduler.batch_sizes[batches_before:]) == 2  # both streams stepped together
    for voice, pcm in zip(texts, got, strict=True):
        assert_same_audio(pcm, await reference_pcm(engine, texts[voice] + " ", voice), batched=True)


async def test_unix_socket(engine: Any, tmp_path: Path) -> None:
    from wyoming.client import AsyncUnixClient

    path = tmp_path / "voicegate.sock"
    svc = WyomingService(engine, WyomingSettings(uri=f"unix://{path}"), model_name="tiny")
    await svc.start()
    try:
        assert svc.port is None and svc.uri == f"unix://{path}"
        async with AsyncUnixClient(str(path)) as c:
            await c.write_event(Describe().event())
            assert Info.from_event(await read(c)).tts[0].supports_synthesize_streaming
    finally:
        await svc.stop()


def test_cli_parses_the_wyoming_subcommand(capsys: pytest.CaptureFixture[str]) -> None:
    args = build_parser().parse_args(["wyoming", "--model", "./tiny", "--uri", "tcp://0.0.0.0:10200",
                                      "--zeroconf"])
    assert (args.command, args.model, args.uri, args.zeroconf) == ("wyoming", "./tiny", "tcp://0.0.0.0:10200",
                                                                   "voicegate")
    assert build_parser().parse_args(["wyoming", "--zeroconf", "kitchen"]).zeroconf == "kitchen"
    assert build_parser().parse_args(["wyoming"]).zeroconf is None
    # Bad combinations fail with a clear message before any model is loaded.
    assert main(["wyoming", "--model", "/nonexistent", "--uri", "unix:///tmp/vg.sock", "--zeroconf"]) == 2
    assert "--zeroconf needs a tcp:// URI" in capsys.readouterr().err
    assert main(["wyoming", "--model", "/nonexistent", "--uri", "stdio://"]) == 2
    assert "--uri must be tcp://HOST:PORT or unix://PATH" in capsys.readouterr().err


async def test_bad_defaults_fail_at_startup(engine: Any) -> None:
    with pytest.raises(ValueError, match="unknown voice"):
        WyomingService(engine, WyomingSettings(uri="tcp://127.0.0.1:0", voice="nobody"))
    with pytest.raises(ValueError, match="tcp://"):
        WyomingService(engine, WyomingSettings(uri="stdio://"))
    svc = WyomingService(engine, WyomingSettings(uri="tcp://127.0.0.1:0", voice="VIVIAN", language="de"))
    assert (svc.settings.voice, svc.settings.language) == ("vivian", "german")


async def test_voicegate_wyoming_command_serves_and_stops_on_sigterm(tiny_checkpoint: Any) -> None:
    """The real command in its own process, with a recognizer: it announces its address, answers speech and
    text, and exits 0 on SIGTERM."""
    from .speech_helpers import test_model_dir

    root = Path(__file__).resolve().parents[2]
    env = {**os.environ, "PYTHONPATH": f"{root}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "agent.cli.main", "wyoming", "--model", str(tiny_checkpoint("custom_voice")),
        "--uri", "tcp://127.0.0.1:0", "--device", "cpu", "--threads", "1", "--voice", "serena",
        "--stt", f"faster-whisper:{test_model_dir()}", "--stt-threads", "1",
        stderr=asyncio.subprocess.PIPE, env=env)
    try:
        assert proc.stderr is not None
        lines: list[str] = []
        match = None
        async with asyncio.timeout(120):
            while match is None and (line := (await proc.stderr.readline()).decode()):
                lines.append(line)  # warnings may come first
                match = re.search(r"on tcp://127\.0\.0\.1:(\d+) \(9 voices\)", line)
        assert match, lines
        assert "speech-to-text on the same port" in lines[-1]
        async with AsyncTcpClient("127.0.0.1", int(match.group(1))) as c:
            await c.write_event(Describe().event())
            assert Info.from_event(await read(c)).asr[0].models[0].languages == ["en"]
            await c.write_event(AudioStart(rate=16000, width=2, channels=1).event())
            await c.write_event(AudioChunk(rate=16000, width=2, channels=1, audio=bytes(16000)).event())
            await c.write_event(AudioStop().event())
            assert (await read(c, timeout=60)).type == "transcript"
            await c.write_event(Synthesize(text="Hi.").event())  # no voice: the --voice default
            assert pcm_of(await read_until(c, "audio-stop")).size >= 1920
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 30) == 0
        assert b"voicegate: stopped" in await proc.stderr.read()
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
