"""100 requests that fail at each validation step, per surface: each gets its documented error, no engine stream
is left behind, nothing is logged at ERROR, and a normal request on that surface still speaks afterwards.

A refusal that took an engine row by mistake would show here: 100 of them exceed any `max_streams`.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import aiohttp
import pytest
import websockets
from websockets.exceptions import InvalidStatus

from .conftest import ServerThread, session_client, wait_no_streams
from .hostile import WyomingThread, frame, raw_wyoming
from .test_fuzz import elevenlabs_speaks, openai_speaks, server_log, wyoming_speaks

N = 100


# ---- the session WebSocket ---------------------------------------------------------------------------------
SESSION_STEPS: dict[str, tuple[Any, str]] = {
    "not JSON": ("{nope", "bad_json"),
    "not an object": ("[1, 2]", "bad_json"),
    "too deep": ("[" * 100 + "]" * 100, "bad_json"),
    "binary": (b"\x00\x01", "binary_not_allowed"),
    "unknown type": ({"type": "text.apend", "text": "x"}, "unknown_type"),
    "wrong type": ({"type": "text.append", "text": 5}, "invalid_message"),
    "missing field": ({"type": "text.append"}, "invalid_message"),
    "unknown field": ({"type": "text.flush", "now": True}, "invalid_message"),
    "too large": ({"type": "text.append", "text": "x" * 70_000}, "message_too_large"),
    "unknown voice": ({"type": "session.update", "voice": "nobody"}, "invalid_voice"),
    "unknown language": ({"type": "session.update", "language": "klingon"}, "invalid_voice"),
    "over the utterance limit": ({"type": "text.append", "text": "x" * 4001}, "text_limit"),
    "cancel of nothing": ({"type": "utterance.cancel"}, "unknown_utterance"),
    "cancel of an unknown id": ({"type": "utterance.cancel", "utterance": "u-none"}, "unknown_utterance"),
}


async def test_session_refusals_leave_nothing_behind(server: ServerThread) -> None:
    with server_log() as logs:
        async with session_client(server.ws_url) as (client, _):
            for step, (message, code) in SESSION_STEPS.items():
                data = message if isinstance(message, str | bytes) else json.dumps(message)
                for _ in range(N):
                    await client.ws.send(data)
                for _ in range(N):
                    evt = await client.expect("error")
                    assert evt["code"] == code, (step, evt)
            # queue_full: one long utterance plays (minutes of audio) while max_queued_utterances (16) wait;
            # every further utterance is refused
            await client.send(type="session.update", audio="none")
            await client.expect("session.updated")
            await client.send(type="text.append", text="A long one. " * 300)
            await client.send(type="text.flush")
            # playing, so it no longer counts as waiting (sent in one burst with the rest, it could still be
            # waiting when the 16th arrives: that one would be refused instead, and a later one accepted)
            await client.expect("utterance.started")
            for _ in range(16):
                await client.send(type="text.append", text="Queued. ")
                await client.send(type="text.flush")
            for _ in range(N):
                await client.send(type="text.append", text="One too many. ")
            for _ in range(N):
                assert (await client.expect("error", timeout=30))["code"] == "queue_full"
            await client.send(type="utterance.cancel", all=True)
            await client.send(type="session.update", audio="websocket")
            await client.expect("session.updated")
            assert wait_no_streams(server.engine, timeout=10) == 0
            done = await client.speak("Still here.")
            assert done["type"] == "utterance.done" and client.frames
    assert wait_no_streams(server.engine) == 0
    logs.assert_clean()


# ---- OpenAI ----------------------------------------------------------------------------------------------
GOOD = {"model": "tiny", "voice": "ryan", "input": "Hi.", "response_format": "pcm"}
OPENAI_STEPS: dict[str, tuple[bytes, str]] = {
    "not JSON": (b"{nope", "invalid_json"),
    "not an object": (b"[1]", "invalid_json"),
    "not UTF-8": (b'{"input": "\xff"}', "invalid_json"),
    "too deep": (b"[" * 100 + b"]" * 100, "invalid_json"),
    "no input": (json.dumps({**GOOD, "input": None}).encode(), "missing_required_parameter"),
    "input not a string": (json.dumps({**GOOD, "input": 5}).encode(), "invalid_value"),
    "empty input": (json.dumps({**GOOD, "input": "  "}).encode(), "invalid_value"),
    "input too long": (json.dumps({**GOOD, "input": "x" * 4097}).encode(), "string_above_max_length"),
    "unknown voice": (json.dumps({**GOOD, "voice": "nobody"}).encode(), "invalid_value"),  # (alloy: an alias)
    "bad format": (json.dumps({**GOOD, "response_format": "mp4"}).encode(), "invalid_value"),
    "bad stream format": (json.dumps({**GOOD, "stream_format": "video"}).encode(), "invalid_value"),
    "speed": (json.dumps({**GOOD, "speed": 9.0}).encode(), "invalid_value"),  # (0.25-4.0 is time-stretched)
}


async def test_openai_refusals_leave_nothing_behind(server: ServerThread) -> None:
    with server_log() as logs:
        limit = asyncio.Semaphore(8)
        async with aiohttp.ClientSession(server.url, timeout=aiohttp.ClientTimeout(total=60)) as http:
            async def one(body: bytes) -> tuple[int, str]:
                async with limit, http.post("/v1/audio/speech", data=body,
                                            headers={"Content-Type": "application/json"}) as response:
                    return response.status, (await response.json(content_type=None))["error"]["code"]

            for step, (body, code) in OPENAI_STEPS.items():
                answers = await asyncio.gather(*(one(body) for _ in range(N)))
                assert set(answers) == {(400, code)}, (step, set(answers))
            assert wait_no_streams(server.engine) == 0
            await asyncio.to_thread(openai_speaks, server)
    logs.assert_clean()


# ---- ElevenLabs -----------------------------------------------------------------------------------------------
def elevenlabs_url(server: ServerThread, voice: str = "ryan", kind: str = "stream-input", query: str = "") -> str:
    return f"ws://127.0.0.1:{server.port}/v1/text-to-speech/{voice}/{kind}?model_id=any{query}"


HANDSHAKE_STEPS = {"unknown voice": ("nobody", "", 404), "bad output format": ("ryan", "&output_format=mp3_44100", 400),
                   "unknown language": ("ryan", "&language_code=tlh", 400)}
SOCKET_STEPS: dict[str, tuple[Any, str]] = {
    "not JSON": ("{nope", "invalid_message"),
    "not an object": ("[1]", "invalid_message"),
    "binary": (b"\x00", "invalid_message"),
    "text not a string": ({"text": 5}, "invalid_message"),
    "context_id not a string": ({"text": "a", "context_id": 5}, "invalid_message"),
    "too large": ({"text": "x" * 70_000}, "message_too_large"),
    "close of an unknown context": ({"context_id": "nope", "close_context": True}, "context_not_found"),
}


async def read_errors(ws: Any, n: int) -> list[str]:
    codes: list[str] = []
    async with asyncio.timeout(60):
        while len(codes) < n:
            msg = json.loads(await ws.recv())
            if "error" in msg:
                codes.append(msg["error"])
    return codes


async def test_elevenlabs_refusals_leave_nothing_behind(server: ServerThread) -> None:
    with server_log() as logs:
        for step, (voice, query, status) in HANDSHAKE_STEPS.items():
            for _ in range(N):
                with pytest.raises(InvalidStatus) as refused:
                    async with websockets.connect(elevenlabs_url(server, voice, query=query)):
                        pass
                assert refused.value.response.status_code == status, step
        async with websockets.connect(elevenlabs_url(server, kind="multi-stream-input")) as ws:
            for step, (message, code) in SOCKET_STEPS.items():
                data = message if isinstance(message, str | bytes) else json.dumps(message)
                for _ in range(N):
                    await ws.send(data)
                assert set(await read_errors(ws, N)) == {code}, step
            # text_limit: one utterance over the engine's limit; max_active_conversations: a sixth context
            for _ in range(N):
                await ws.send(json.dumps({"context_id": "long", "text": "x" * (server.engine.settings.max_text_chars + 1)}))
            assert set(await read_errors(ws, N)) == {"text_limit"}
            for cid in "abcd":
                await ws.send(json.dumps({"context_id": cid, "text": "Waiting "}))
            for i in range(N):
                await ws.send(json.dumps({"context_id": f"extra-{i}", "text": "Hi."}))
            assert set(await read_errors(ws, N)) == {"max_active_conversations"}
            await ws.send(json.dumps({"close_socket": True}))
        assert wait_no_streams(server.engine, timeout=10) == 0
        await asyncio.to_thread(elevenlabs_speaks, server.port)
    logs.assert_clean()


# ---- Wyoming ----------------------------------------------------------------------------------------------
WYOMING_STEPS: dict[str, tuple[bytes, str]] = {
    "wrong type": (frame("synthesize", {"text": 5}), "bad_event"),
    "voice not an object": (frame("synthesize", {"text": "Hi.", "voice": "ryan"}), "bad_event"),
    "no type": (b'{"data": {}}\n', "bad_event"),
    "unknown voice": (frame("synthesize", {"text": "Hi.", "voice": {"name": "nobody"}}), "unknown_voice"),
    "unknown speaker": (frame("synthesize", {"text": "Hi.", "voice": {"name": "ryan", "speaker": "x"}}),
                        "unknown_speaker"),
    "unknown language": (frame("synthesize", {"text": "Hi.", "voice": {"language": "tlh"}}),
                         "unsupported_language"),
    "chunk without a stream": (frame("synthesize-chunk", {"text": "x"}), "no_stream"),
    "stop without a stream": (frame("synthesize-stop"), "no_stream"),
}


async def test_wyoming_refusals_leave_nothing_behind(engine: Any) -> None:
    wyoming = WyomingThread(engine)
    try:
        with server_log() as logs:
            async with raw_wyoming(wyoming.port) as conn:
                too_long = frame("synthesize", {"text": "x" * (engine.settings.max_text_chars + 1)})
                for step, (data, code) in [*WYOMING_STEPS.items(), ("text too long", (too_long, "text_too_long"))]:
                    await conn.send(data * N)
                    for _ in range(N):
                        event = await conn.read()
                        assert event is not None and event.type == "error", (step, event)
                        assert event.data["code"] == code, (step, event.data)
                # stream_open: a second start while one is open; the open stream still ends with its stop
                await conn.send(frame("synthesize-start") + frame("synthesize-start") * N)
                codes: list[str] = []
                while len(codes) < N:
                    codes += [e.data["code"] for e in await conn.until("error") if e.type == "error"]
                assert set(codes) == {"stream_open"}
                await conn.send(frame("synthesize-stop"))
                await conn.until("synthesize-stopped")
            assert wait_no_streams(engine, timeout=10) == 0
            await asyncio.to_thread(wyoming_speaks, wyoming.port)
        logs.assert_clean()
    finally:
        wyoming.stop()
