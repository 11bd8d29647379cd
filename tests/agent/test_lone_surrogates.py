"""Lone surrogates (a UTF-16 string cut between the halves of an emoji, sent as JSON "\\ud83d") on every surface.

The one rule (agent.boundary): replaced by U+FFFD before any engine stream sees the text. 100 such requests
per surface leave no engine stream behind, and a normal request still speaks afterwards. Before the rule, the
OpenAI endpoint answered 500 and kept its engine row: after `max_streams` such requests all speech stopped.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import aiohttp
import pytest
import websockets
from wyoming.audio import AudioStop
from wyoming.error import Error
from wyoming.event import async_read_event

from agent.boundary import REPLACEMENT, clean_text
from agent.wyoming.handler import WyomingService, WyomingSettings

from .conftest import ServerThread, session_client, wait_no_streams

LONE = "\ud800"
REQUESTS = 100


def test_clean_text_replaces_lone_surrogates_and_drops_control_characters() -> None:
    assert clean_text(f"a{LONE}b\udfffc") == f"a{REPLACEMENT}b{REPLACEMENT}c"
    assert clean_text("tab\tline\nreturn\r") == "tab\tline\nreturn\r"
    assert clean_text("nul\x00 esc\x1b del\x7f c1\x85 end") == "nul esc del c1 end"
    assert clean_text("👋🏽 你好") == "👋🏽 你好"  # real pairs (one code point each in Python) are kept
    with pytest.raises(TypeError):
        clean_text(3)  # type: ignore[arg-type]


def test_the_engine_refuses_a_lone_surrogate_without_taking_a_row(engine: Any) -> None:
    with pytest.raises(ValueError, match="surrogate"):
        engine.open_stream(speaker="ryan", text=f"{LONE} hi")
    with pytest.raises(ValueError, match="surrogate"):
        engine.open_stream(speaker="ryan", instruct=LONE)
    assert wait_no_streams(engine) == 0
    with engine.open_stream(speaker="ryan", greedy=True) as stream:
        with pytest.raises(ValueError, match="surrogate"):
            stream.push_text(LONE)
        stream.push_text("Still usable.")  # the refused fragment changed nothing
        assert stream.text == "Still usable."
    assert stream.end is not None and stream.end.reason == "cancelled"  # leaving the block stopped it
    assert wait_no_streams(engine) == 0


async def test_openai_speech_with_lone_surrogates_speaks_and_leaks_nothing(server: ServerThread) -> None:
    body = json.dumps({"model": "tiny", "voice": "ryan", "input": f"{LONE} hi", "response_format": "pcm"})
    async with aiohttp.ClientSession(server.url, timeout=aiohttp.ClientTimeout(total=120)) as http:
        async def one() -> int:
            async with http.post("/v1/audio/speech", data=body,
                                 headers={"Content-Type": "application/json"}) as response:
                assert response.status == 200, await response.text()
                return len(await response.read())

        sizes = await asyncio.gather(*(one() for _ in range(REQUESTS)))
        assert all(size > 0 and size % 3840 == 0 for size in sizes)
        assert wait_no_streams(server.engine) == 0
        async with http.post("/v1/audio/speech", json={"model": "tiny", "voice": "ryan", "input": "Still here.",
                                                       "response_format": "pcm"}) as ok:
            assert ok.status == 200 and len(await ok.read()) > 0


async def test_session_text_with_lone_surrogates_is_spoken_with_replacement(server: ServerThread) -> None:
    async with session_client(server.ws_url + "?mode=headless") as (client, _):
        for _ in range(REQUESTS):
            await client.send(type="text.append", text=f"a{LONE}")
        await client.send(type="text.flush")
        done = await client.expect("utterance.done", "utterance.interrupted", timeout=60)
        assert done["type"] == "utterance.done", done
        assert done["text_fed"] == f"a{REPLACEMENT}" * REQUESTS
        assert not [e for e in client.events if e["type"] == "error"]
        assert (await client.speak("Still here."))["type"] == "utterance.done"
    assert wait_no_streams(server.engine) == 0


async def test_elevenlabs_text_with_lone_surrogates_speaks(server: ServerThread) -> None:
    url = f"ws://127.0.0.1:{server.port}/v1/text-to-speech/ryan/stream-input?model_id=any"
    async with websockets.connect(url) as ws:
        await ws.send(json.dumps({"text": " "}))
        for _ in range(REQUESTS):
            await ws.send(json.dumps({"text": f"a{LONE}"}))
        await ws.send(json.dumps({"text": ""}))
        audio, errors = 0, []
        async for raw in ws:
            msg = json.loads(raw)
            if "error" in msg:
                errors.append(msg)
            audio += len(msg.get("audio") or "")
            if msg.get("isFinal"):
                break
        assert not errors and audio > 0
    assert wait_no_streams(server.engine) == 0


async def test_wyoming_text_with_lone_surrogates_speaks(engine: Any) -> None:
    service = WyomingService(engine, WyomingSettings(uri="tcp://127.0.0.1:0"), model_name="tiny")
    await service.start()
    try:
        assert service.port
        # raw event lines: the wyoming client itself cannot encode a lone surrogate (ensure_ascii=False)
        reader, writer = await asyncio.open_connection("127.0.0.1", service.port)

        def send(kind: str, **data: Any) -> None:
            writer.write((json.dumps({"type": kind, "data": data}) + "\n").encode())

        for i in range(REQUESTS):
            if i % 2:
                send("synthesize", text=f"a{LONE}")
            else:
                send("synthesize-start")
                send("synthesize-chunk", text=f"a{LONE}")
                send("synthesize-stop")
        await writer.drain()
        stops = 0
        async with asyncio.timeout(120):
            while stops < REQUESTS:
                event = await async_read_event(reader)
                assert event is not None
                assert not Error.is_type(event.type), Error.from_event(event)
                stops += AudioStop.is_type(event.type)
        writer.close()
    finally:
        await service.stop()
    assert wait_no_streams(engine) == 0
