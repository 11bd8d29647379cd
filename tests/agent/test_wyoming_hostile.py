"""Wyoming with broken or hostile input: wrong field types answer `bad_event` and the connection goes on; frames
that cannot be read, and clients that leave mid-frame, close the connection with one INFO line and no traceback.

Requests the `wyoming` client can send go through it (`AsyncTcpClient`, as Home Assistant uses); bytes it cannot
produce (broken framing) go over a raw TCP connection.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import numpy as np
import pytest
from wyoming.asr import Transcribe
from wyoming.audio import AudioChunk, AudioStart, AudioStop
from wyoming.client import AsyncTcpClient
from wyoming.error import Error
from wyoming.event import Event
from wyoming.ping import Ping
from wyoming.tts import Synthesize, SynthesizeStart, SynthesizeStop

from agent.wyoming.handler import MAX_FLOWS, WyomingService, WyomingSettings

from .hostile import frame, raw_wyoming, watch_logs
from .test_wyoming import read, read_until, wait_engine_idle
from .test_wyoming_stt import recognizer, wyoming_server  # noqa: F401  (recognizer: a fixture)


@pytest.fixture
async def service(engine: Any) -> AsyncIterator[WyomingService]:
    svc = WyomingService(engine, WyomingSettings(uri="tcp://127.0.0.1:0"), model_name="tiny")
    await svc.start()
    yield svc
    await svc.stop()
    await wait_engine_idle(engine)


@contextlib.asynccontextmanager
async def client(svc: WyomingService) -> AsyncIterator[AsyncTcpClient]:
    assert svc.port
    async with AsyncTcpClient("127.0.0.1", svc.port) as c:
        yield c


async def assert_usable(c: AsyncTcpClient) -> None:
    await c.write_event(Ping(text="still there?").event())
    pong = await read(c)
    assert (pong.type, pong.data.get("text")) == ("pong", "still there?")


# Each: an event the real client sends, whose content is wrong. Types only a raw client could get wrong are below.
BAD_EVENTS = {
    "voice.name a number": Event("synthesize", {"text": "Hi.", "voice": {"name": 5}}),
    "voice.language a number": Event("synthesize", {"text": "Hi.", "voice": {"language": 7}}),
    "voice.speaker a number": Event("synthesize", {"text": "Hi.", "voice": {"name": "ryan", "speaker": 1}}),
    "voice.name an object": Event("synthesize-start", {"voice": {"name": {"x": 1}}}),
    "voice.language a list": Event("synthesize-start", {"voice": {"language": ["en"]}}),
    "voice a string": Event("synthesize", {"text": "Hi.", "voice": "ryan"}),
    "voice a list": Event("synthesize", {"text": "Hi.", "voice": ["ryan"]}),
    "voice a number": Event("synthesize-start", {"voice": 3}),
    "voice.name too long": Event("synthesize", {"text": "Hi.", "voice": {"name": "x" * 100_000}}),
    "synthesize without text": Event("synthesize", {"voice": {"name": "ryan"}}),
    "synthesize text null": Event("synthesize", {"text": None}),
    "synthesize text a number": Event("synthesize", {"text": 12}),
    "synthesize text a boolean": Event("synthesize", {"text": True}),
    "ping text a number": Event("ping", {"text": 42}),
    "ping data not an object": Event("ping", [1, 2]),  # type: ignore[arg-type]
    "describe data a string": Event("describe", "x"),  # type: ignore[arg-type]
    "transcribe language a number": Event("transcribe", {"language": 5}),
    "transcribe language a list": Event("transcribe", {"language": ["en"]}),
    "transcribe language too long": Event("transcribe", {"language": "e" * 100_000}),
}


@pytest.mark.parametrize("bad", list(BAD_EVENTS), ids=list(BAD_EVENTS))
async def test_wrong_field_types_answer_bad_event_and_the_connection_goes_on(service: WyomingService,
                                                                             engine: Any, bad: str) -> None:
    with watch_logs() as logs:
        async with client(service) as c:
            await c.write_event(BAD_EVENTS[bad])
            err = Error.from_event(await read(c))
            assert err.code == "bad_event", err
            assert len(err.text) < 400  # a huge value is not echoed back
            await assert_usable(c)
            # and it still speaks
            await c.write_event(Synthesize(text="Hi.").event())
            events = await read_until(c, "audio-stop")
            assert events[0].type == "audio-start" and "audio-chunk" in [e.type for e in events]
    await wait_engine_idle(engine)
    logs.assert_clean()


async def test_a_chunk_of_the_wrong_type_keeps_the_stream(service: WyomingService) -> None:
    async with client(service) as c:
        await c.write_event(SynthesizeStart().event())
        events: list[Event] = []
        for data in ({"text": 5}, {"text": None}, {"text": ["a"]}, {}):
            await c.write_event(Event("synthesize-chunk", data))
            events += await read_until(c, "error")
            assert Error.from_event(events[-1]).code == "bad_event"
        await c.write_event(Event("synthesize-chunk", {"text": "Still one stream."}))
        await c.write_event(SynthesizeStop().event())
        types = [e.type for e in events + await read_until(c, "synthesize-stopped") if e.type != "error"]
        assert types[0] == "audio-start" and types[-2:] == ["audio-stop", "synthesize-stopped"]
        assert "audio-chunk" in types


# Frames that are read whole but are not events: bad_event, and the next frame is read normally.
BAD_CONTENT = {
    "no type": b'{"data": {"text": "x"}}\n',
    "type a number": frame(5),
    "type null": frame(None),
    "type empty": frame(""),
    "type huge": frame("x" * 10_000),
    "inline data a list": frame("synthesize", [1]),
    "inline data a string": frame("ping", "text"),
    "data block not JSON": b'{"type": "ping", "data_length": 5}\nhello',
    "data block a list": b'{"type": "ping", "data_length": 3}\n[1]',
    "data block not UTF-8": b'{"type": "ping", "data_length": 4}\n"\xff\xfe"',
    "data block too deep": b'{"type": "ping", "data_length": 200}\n' + b"[" * 100 + b"]" * 100,
}


@pytest.mark.parametrize("bad", list(BAD_CONTENT), ids=list(BAD_CONTENT))
async def test_frames_that_are_not_events_answer_bad_event(service: WyomingService, bad: str) -> None:
    assert service.port
    with watch_logs() as logs:
        async with raw_wyoming(service.port) as conn:
            await conn.send(BAD_CONTENT[bad] + frame("ping", {"text": "after"}))
            err = await conn.read()
            assert err is not None and err.type == "error" and err.data["code"] == "bad_event", err
            pong = await conn.read()
            assert pong is not None and (pong.type, pong.data["text"]) == ("pong", "after")
    logs.assert_clean()


async def test_a_ping_with_a_lone_surrogate_gets_a_pong(service: WyomingService) -> None:
    """The pong copies the text under the text rule: a lone surrogate cannot be written as UTF-8."""
    assert service.port
    with watch_logs() as logs:
        async with raw_wyoming(service.port) as conn:
            await conn.send(frame("ping", {"text": "a\ud800b"}))
            pong = await conn.read()
            assert pong is not None and (pong.type, pong.data["text"]) == ("pong", "a\ufffdb")
    logs.assert_clean()


# Frames that cannot be followed: the connection closes, with one INFO line saying why.
BROKEN_FRAMES = {
    "header not JSON": b"hello there\n",
    "header empty line": b"\n",
    "header a JSON array": b'["synthesize"]\n',
    "header a number": b"42\n",
    "header a string": b'"ping"\n',
    "header not UTF-8": b'{"type": "\xff\xfe"}\n',
    "header NaN": b'{"type": "ping", "data_length": NaN}\n',
    "header nested too deep": b'{"type": "ping", "data": ' + b"[" * 5000 + b"]" * 5000 + b"}\n",
    "header line too long": b'{"type": "synthesize", "data": {"text": "' + b"a" * 100_000 + b'"}}\n',
    "data_length a string": b'{"type": "ping", "data_length": "5"}\n{"a":1}',
    "data_length negative": b'{"type": "ping", "data_length": -1}\n',
    "data_length a float": b'{"type": "ping", "data_length": 2.5}\n{}',
    "data_length a boolean": b'{"type": "ping", "data_length": true}\n{',
    "data_length huge": b'{"type": "ping", "data_length": 1099511627776}\n',
    "data_length a list": b'{"type": "ping", "data_length": [2]}\n{}',
    "payload_length a string": b'{"type": "audio-chunk", "payload_length": "4"}\nabcd',
    "payload_length huge": b'{"type": "audio-chunk", "payload_length": 99999999999}\n',
    "payload_length negative": b'{"type": "audio-chunk", "payload_length": -4}\n',
}


@pytest.mark.parametrize("bad", list(BROKEN_FRAMES), ids=list(BROKEN_FRAMES))
async def test_broken_framing_closes_quietly(service: WyomingService, bad: str) -> None:
    assert service.port
    with watch_logs() as logs:
        async with raw_wyoming(service.port) as conn:
            await conn.send(frame("ping", {"text": "before"}))
            pong = await conn.read()
            assert pong is not None and pong.type == "pong"
            await conn.send(BROKEN_FRAMES[bad])
            assert await conn.closed_by_server()
        lines = await logs.lines("agent.wyoming", "unreadable frame")
        assert len(lines) == 1, logs.messages("agent.wyoming")
        # the server goes on
        async with client(service) as c:
            await assert_usable(c)
    logs.assert_clean()


# A client that leaves in the middle of a frame: cut after `n` bytes.
PARTIAL_FRAMES = {
    "mid header": (frame("synthesize", {"text": "Hello."}), 10),
    "mid data block": (b'{"type": "synthesize", "data_length": 40}\n' + b'{"text": "Hello, the rest never comes."}',
                       50),
    "mid payload": (b'{"type": "audio-chunk", "payload_length": 3840}\n' + bytes(3840), 100),
}


@pytest.mark.parametrize("cut", list(PARTIAL_FRAMES), ids=list(PARTIAL_FRAMES))
@pytest.mark.parametrize("how", ["close", "reset"])
async def test_a_client_gone_mid_frame_closes_quietly(service: WyomingService, engine: Any, cut: str,
                                                      how: str) -> None:
    assert service.port
    data, n = PARTIAL_FRAMES[cut]
    with watch_logs() as logs:
        async with raw_wyoming(service.port) as conn:
            # a stream waiting for more text holds an engine row until the connection ends
            await conn.send(frame("synthesize-start") + frame("synthesize-chunk", {"text": "Never finished "}))
            await conn.until("audio-chunk")
            assert engine.scheduler.live_streams == 1
            await conn.send(data[:n])
            if how == "reset":
                conn.abort()
            else:
                conn.writer.write_eof()
                assert await conn.closed_by_server()
        await wait_engine_idle(engine)
        lines = await logs.lines("agent.wyoming", "disconnected")
        assert len(lines) == 1, lines
        assert not any(h.flows for h in service.server._handlers.values())
        if how == "close":
            assert "unreadable frame: connection closed" in lines[0]
    logs.assert_clean()


async def test_a_client_that_never_reads_cannot_queue_unbounded_requests(service: WyomingService,
                                                                         engine: Any) -> None:
    assert service.port
    async with raw_wyoming(service.port) as conn:
        await conn.send(b"".join(frame("synthesize", {"text": f"Request {i}."}) for i in range(4 * MAX_FLOWS)))
        # the server reads requests only while fewer than MAX_FLOWS are in flight
        peak = 0
        stops = 0
        async with asyncio.timeout(120):
            while stops < 4 * MAX_FLOWS:
                peak = max(peak, *(len(h.flows) for h in service.server._handlers.values()))
                event = await conn.read()
                assert event is not None and event.type != "error", event
                stops += event.type == "audio-stop"
        assert 1 <= peak <= MAX_FLOWS
    await wait_engine_idle(engine)


async def test_text_over_the_engine_limit_in_one_shot_takes_no_row(service: WyomingService, engine: Any) -> None:
    async with client(service) as c:
        await c.write_event(Synthesize(text="x" * (engine.settings.max_text_chars + 1)).event())
        err = Error.from_event(await read(c))
        assert err.code == "text_too_long"
        assert engine.scheduler.live_streams == 0
        await assert_usable(c)



async def test_an_engine_failure_is_engine_error_and_the_stream_still_ends(tiny_checkpoint: Any) -> None:
    """A stream the engine fails: `engine_error`, then audio-stop and synthesize-stopped (a client waiting for
    the end, as Home Assistant does, is not left hanging); nothing of ours logs a traceback."""
    from tts_engine import Engine, EngineSettings, load_model

    engine = Engine(load_model(tiny_checkpoint("custom_voice"), device="cpu"), EngineSettings(max_streams=2))
    step = engine.scheduler._step
    failed = False

    def failing_step() -> bool:  # one step fails while a stream is live (the engine fails its live streams)
        nonlocal failed
        if engine.scheduler.live_streams and not failed:
            failed = True
            raise RuntimeError("injected step failure")
        return step()

    engine.scheduler._step = failing_step  # type: ignore[method-assign]
    svc = WyomingService(engine, WyomingSettings(uri="tcp://127.0.0.1:0"), model_name="tiny")
    await svc.start()
    try:
        with watch_logs() as logs:
            async with client(svc) as c:
                await c.write_event(SynthesizeStart().event())
                await c.write_event(Event("synthesize-chunk", {"text": "This one fails. "}))
                await c.write_event(SynthesizeStop().event())
                events = await read_until(c, "synthesize-stopped")
                types = [e.type for e in events]
                assert "error" in types and Error.from_event(events[types.index("error")]).code == "engine_error"
                assert types[-2:] == ["audio-stop", "synthesize-stopped"]
                # the connection and the engine go on
                await c.write_event(Synthesize(text="Hi.").event())
                assert "audio-chunk" in [e.type for e in await read_until(c, "audio-stop")]
        assert failed
        assert not [r for r in logs.records if r.name.startswith("agent.wyoming") and r.exc_info]
    finally:
        await svc.stop()
        engine.close()


# Audio formats a client can send but no one can read: each in its own request (audio-start, or a chunk after a
# good audio-start), answered bad_audio_format; the request still ends with a transcript at its audio-stop.
GOOD_START = {"rate": 16000, "width": 2, "channels": 1}
BAD_AUDIO = {
    "start rate a string": ({"rate": "16000", "width": 2, "channels": 1}, None),
    "start rate a float": ({"rate": 16000.0, "width": 2, "channels": 1}, None),
    "start rate zero": ({"rate": 0, "width": 2, "channels": 1}, None),
    "start rate huge": ({"rate": 10**12, "width": 2, "channels": 1}, None),
    "start width a boolean": ({"rate": 16000, "width": True, "channels": 1}, None),
    "start width 8": ({"rate": 16000, "width": 8, "channels": 1}, None),
    "start channels huge": ({"rate": 16000, "width": 2, "channels": 2**40}, None),
    "start without fields": ({}, None),
    "chunk rate changed": (GOOD_START, ({"rate": 8000, "width": 2, "channels": 1}, bytes(320))),
    "chunk channels a string": (GOOD_START, ({"rate": 16000, "width": 2, "channels": "1"}, bytes(320))),
    "chunk odd bytes": (GOOD_START, ({"rate": 16000, "width": 2, "channels": 1}, bytes(321))),
}


@pytest.mark.parametrize("bad", list(BAD_AUDIO), ids=list(BAD_AUDIO))
async def test_unreadable_audio_is_bad_audio_format_and_the_connection_goes_on(
        engine: Any, recognizer: Any, bad: str) -> None:  # noqa: F811
    start, chunk = BAD_AUDIO[bad]
    with watch_logs() as logs:
        async with wyoming_server(engine, recognizer) as svc, client(svc) as c:
            await c.write_event(Event("audio-start", start))
            if chunk is not None:
                await c.write_event(Event("audio-chunk", chunk[0], payload=chunk[1]))
            err = Error.from_event(await read(c))
            assert err.code == "bad_audio_format" and len(err.text) < 400, err
            await c.write_event(Event("audio-chunk", GOOD_START, payload=bytes(3200)))  # dropped: the request failed
            await c.write_event(Event("audio-stop"))
            assert (await read(c)).data == {"text": ""}
            await assert_usable(c)
    logs.assert_clean()


async def test_a_payload_at_the_frame_limit_is_audio_too_long(engine: Any, recognizer: Any) -> None:  # noqa: F811
    """1 MiB of 8 kHz 8-bit mono is 131 s: refused when it arrives, before any of it is converted."""
    from agent.wyoming.framing import MAX_PAYLOAD_BYTES

    with watch_logs() as logs:
        async with wyoming_server(engine, recognizer) as svc, client(svc) as c:
            await c.write_event(Event("audio-start", {"rate": 8000, "width": 1, "channels": 1}))
            await c.write_event(Event("audio-chunk", {"rate": 8000, "width": 1, "channels": 1},
                                      payload=bytes(MAX_PAYLOAD_BYTES)))
            assert Error.from_event(await read(c)).code == "audio_too_long"
            await c.write_event(Event("audio-stop"))
            assert (await read(c)).type == "transcript"
            await assert_usable(c)
    logs.assert_clean()


async def test_a_client_gone_while_its_partial_decodes_leaves_nothing_behind(engine: Any,
                                                                           recognizer: Any) -> None:  # noqa: F811
    with watch_logs() as logs:
        async with wyoming_server(engine, recognizer) as svc:
            assert svc.port and svc.recognizer is not None
            async with raw_wyoming(svc.port) as conn:
                fmt = {"rate": 16000, "width": 2, "channels": 1}
                noise = (np.random.default_rng(0).normal(0, 3000, 16000 * 3)).astype("<i2").tobytes()
                await conn.send(frame("transcribe") + frame("audio-start", fmt)
                                + frame("audio-chunk", fmt, payload_length=len(noise)) + noise)
                assert (await conn.read()).type == "transcript-start"  # type: ignore[union-attr]
                async with asyncio.timeout(10):  # the partial is running or waiting
                    while not any(t.get_name().startswith("wyoming-stt-partial") for t in asyncio.all_tasks()):
                        await asyncio.sleep(0.01)
                conn.abort()
            await logs.lines("agent.wyoming", "disconnected")
            async with asyncio.timeout(10):
                while any(t.get_name().startswith("wyoming-stt-partial") for t in asyncio.all_tasks()):
                    await asyncio.sleep(0.01)
            async with client(svc) as c:  # the server and its recognizer go on
                await c.write_event(Transcribe().event())
                await c.write_event(AudioStart(rate=16000, width=2, channels=1).event())
                await c.write_event(AudioChunk(rate=16000, width=2, channels=1, audio=bytes(16000)).event())
                await c.write_event(AudioStop().event())
                assert [e.type for e in await read_until(c, "transcript-stop")][-2:] == ["transcript",
                                                                                        "transcript-stop"]
    logs.assert_clean()

