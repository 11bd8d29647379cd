"""Fuzzing every surface of the gateway with what an attacker or a sloppy client sends (strategies: fuzz_cases).

Per surface (the session WebSocket, OpenAI's speech endpoint and raw HTTP on the serve port, ElevenLabs'
sockets, Wyoming), seeded and bounded: every answer is a documented error code / status / close code or a clean
close; nothing hangs; the server's log gets no traceback and no ERROR line; afterwards the engine holds no
stream and a normal request on that surface still speaks. The default suite runs 200 derandomized examples per
surface (about half a minute for the whole file on two busy cores); `-m slow` runs 3000 per surface from a fixed
seed (a few minutes).

Each example is one client connection driven by `asyncio.run` from hypothesis' (synchronous) loop; the servers
run on threads of their own (conftest.ServerThread, hostile.WyomingThread), as in production.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
from collections.abc import Callable, Iterator
from typing import Any

import openai
import pytest
import websockets
from hypothesis import HealthCheck, given, seed, settings
from hypothesis import strategies as st
from websockets.exceptions import ConnectionClosed
from wyoming.client import AsyncTcpClient
from wyoming.tts import Synthesize

from . import fuzz_cases as cases
from .conftest import ServerThread, session_client, wait_no_streams
from .hostile import LogWatch, RawWyoming, WyomingThread, frame, watch_logs

EXAMPLE_TIMEOUT_S = 60.0  # an example that neither answers nor closes by then is a hang
END = "fuzz-end"  # marks the sentinel request after each example's messages


def fuzz_settings(examples: int, derandomize: bool) -> settings:
    return settings(max_examples=examples, derandomize=derandomize, deadline=None, database=None,
                    suppress_health_check=list(HealthCheck), print_blob=True)


# The default run (derandomized: the same examples every time), and the longer one (@pytest.mark.slow), seeded.
RUNS = [pytest.param((200, True), id="default"),
        pytest.param((3000, False), id="long", marks=pytest.mark.slow)]


def run_given(strategy: st.SearchStrategy[Any], example: Callable[[Any], Any], run: tuple[int, bool]) -> None:
    """Run `example(value)` (a coroutine function) for hypothesis' values of `strategy`."""
    examples, derandomize = run

    @seed(20261206)
    @fuzz_settings(examples, derandomize)
    @given(strategy)
    def search(value: Any) -> None:
        asyncio.run(asyncio.wait_for(example(value), EXAMPLE_TIMEOUT_S))

    search()


@contextlib.contextmanager
def server_log() -> Iterator[LogWatch]:
    """The root logger watched, with websockets' own logger at WARNING as `voicegate serve` sets it."""
    ws_logger = logging.getLogger("websockets")
    level = ws_logger.level
    ws_logger.setLevel(logging.WARNING)
    try:
        with watch_logs() as logs:
            yield logs
    finally:
        ws_logger.setLevel(level)


# ---- the session WebSocket ---------------------------------------------------------------------------------
def check_session_event(raw: str | bytes) -> dict[str, Any] | None:
    if isinstance(raw, bytes):
        assert len(raw) % 2 == 0  # audio: s16le frames
        return None
    evt = json.loads(raw)
    if evt["type"] == "error":
        assert evt["code"] in cases.SESSION_ERRORS, evt
    elif evt["type"] == "warning":
        assert evt["code"] in cases.SESSION_WARNINGS, evt
    return evt


async def session_example(url: str, sequence: list[Any]) -> None:
    try:
        async with websockets.connect(url) as ws:
            created = json.loads(await ws.recv())
            assert created["type"] == "session.created"
            for message in sequence:
                if message is cases.CLOSE:
                    ws.transport.abort()  # the client vanishes mid-conversation
                    return
                await ws.send(message)
            await ws.send(json.dumps({"type": "voices.list", "id": END}))
            async for raw in ws:
                evt = check_session_event(raw)
                if evt is not None and evt.get("id") == END and evt["type"] in ("voices", "error"):
                    break
    except ConnectionClosed as exc:
        assert (exc.rcvd is not None and exc.rcvd.code in cases.WS_CLOSE_CODES) or cases.too_big(sequence), exc


session_inputs = st.lists(st.one_of(cases.session_messages, st.just(cases.CLOSE)), min_size=1, max_size=8)


@pytest.mark.parametrize("run", RUNS)
def test_session_fuzz(server: ServerThread, run: tuple[int, bool]) -> None:
    with server_log() as logs:
        run_given(session_inputs, lambda seq: session_example(server.ws_url, seq), run)
        server.wait_sessions(0)
        assert wait_no_streams(server.engine, timeout=10) == 0

        async def still_speaks() -> None:
            async with session_client(server.ws_url) as (client, _):
                done = await client.speak("Still here.")
                assert done["type"] == "utterance.done" and client.frames

        asyncio.run(still_speaks())
    logs.assert_clean()


async def test_session_text_frame_that_is_not_utf8_closes_with_1007(server: ServerThread) -> None:
    with server_log() as logs:
        async with websockets.connect(server.ws_url) as ws:
            await ws.recv()
            await ws.send(b'{"type": "text.append", "text": "\xff\xfe"}', text=True)
            with pytest.raises(ConnectionClosed) as closed:
                while True:
                    check_session_event(await ws.recv())
            assert closed.value.rcvd is not None and closed.value.rcvd.code == 1007
        server.wait_sessions(0)
    logs.assert_clean()


async def test_session_id_with_a_lone_surrogate_is_echoed_and_the_connection_goes_on(server: ServerThread) -> None:
    """Found by the fuzz: an `id` of "\\ud800" echoed in an error could not be encoded, and the connection died."""
    with server_log() as logs:
        async with session_client(server.ws_url) as (client, _):
            await client.ws.send(json.dumps({"type": "text.flux", "id": "\ud800"}))
            err = await client.expect("error")
            assert (err["code"], err["id"]) == ("unknown_type", "\ud800")
            await client.send(type="voices.list", id="\udfff")
            assert (await client.expect("voices"))["id"] == "\udfff"
            assert (await client.speak("Still here."))["type"] == "utterance.done"
    logs.assert_clean()


# ---- HTTP: OpenAI's speech endpoint and raw requests ------------------------------------------------------
STATUS_LINE = re.compile(rb"HTTP/1\.[01] (\d{3}) ")
CONTENT_LENGTH = re.compile(rb"(?im)^content-length:\s*(\d+)")


async def http_exchange(port: int, request: bytes, read_body: bool = True, half_close: bool = False) -> bytes:
    """Send `request` (then half-close: no more bytes will come) and read the answer until the server closes
    (b"": closed without one)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(request)
        # the server may answer and close before the whole request is written (a refusal of its head): then
        # the drain or the half-close finds the socket gone (ENOTCONN is an OSError, not a ConnectionError)
        with contextlib.suppress(ConnectionError, OSError):
            await writer.drain()
            if half_close:
                writer.write_eof()
        data = b""
        with contextlib.suppress(ConnectionError):
            while chunk := await reader.read(65536):
                data += chunk
                if not read_body and b"\r\n\r\n" in data:
                    break  # the head is enough: hang up mid-response (a client gone while audio streams)
        return data
    finally:
        writer.transport.abort()


def statuses(answer: bytes) -> list[int]:
    """The status of each response in `answer`, one after the other (a body need not end in a newline, so the
    next status line is found after the previous response's Content-Length; a chunked body ends the walk)."""
    codes, pos = [], 0
    while (match := STATUS_LINE.match(answer, pos)) is not None:
        codes.append(int(match.group(1)))
        end = answer.find(b"\r\n\r\n", match.start())
        if end < 0:
            break
        length = CONTENT_LENGTH.search(answer[match.start():end])
        pos = end + 4 + (int(length.group(1)) if length else 0)
    return codes


def speech_request(body: bytes, extra_headers: str = "") -> bytes:
    return (f"POST /v1/audio/speech HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n{extra_headers}\r\n").encode() + body


def check_speech_answer(answer: bytes) -> None:
    codes = statuses(answer)
    assert len(codes) == 1 and codes[0] in cases.OPENAI_STATUSES, answer[:300]
    if codes[0] != 200:
        _, _, body = answer.partition(b"\r\n\r\n")
        error = json.loads(body)["error"]
        assert error["code"] in cases.OPENAI_CODES or (codes[0] in cases.OPENAI_UNCODED and error["code"] is None), error
        assert error["type"] == "invalid_request_error", error


async def speech_example(port: int, body: bytes, hang_up: bool) -> None:
    answer = await http_exchange(port, speech_request(body), read_body=not hang_up)
    if hang_up:  # the client left after the head (the body, audio or error, was not read)
        codes = statuses(answer)
        assert len(codes) <= 1 and all(code in cases.OPENAI_STATUSES for code in codes), answer[:300]
        return
    check_speech_answer(answer)


def openai_speaks(server: ServerThread) -> None:
    """The openai SDK, as a real client: a normal request gets audio."""
    client = openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=60)
    audio = client.audio.speech.create(model="tiny", voice="ryan", input="Still here.", response_format="pcm")
    assert len(audio.content) > 0 and len(audio.content) % 3840 == 0


@pytest.mark.parametrize("run", RUNS)
def test_openai_speech_fuzz(server: ServerThread, run: tuple[int, bool]) -> None:
    with server_log() as logs:
        run_given(st.tuples(cases.speech_bodies, st.booleans()),
                  lambda value: speech_example(server.port, *value), run)
        assert wait_no_streams(server.engine, timeout=10) == 0
        openai_speaks(server)
    logs.assert_clean()


async def raw_http_example(port: int, request: bytes) -> None:
    # half-closed: a request cut short (a Content-Length larger than the body) must not wait for more
    answer = await http_exchange(port, request, half_close=True)
    for code in statuses(answer):
        assert code in cases.HTTP_STATUSES, (request[:200], answer[:300])


@pytest.mark.parametrize("run", RUNS)
def test_raw_http_fuzz(server: ServerThread, run: tuple[int, bool]) -> None:
    with server_log() as logs:
        run_given(cases.raw_http_requests, lambda request: raw_http_example(server.port, request), run)
        assert wait_no_streams(server.engine, timeout=10) == 0
        openai_speaks(server)
    logs.assert_clean()


# Requests the fuzz found or that are known to trip a hand-written HTTP layer: each gets a clean 4xx answer.
RAW_HTTP_CASES = {
    "content-length non-ASCII digit": (speech_request(b"{}").replace(b"Content-Length: 2", "Content-Length: \u0663"
                                                                     .encode()), {400}),
    "content-length 5000 digits": (speech_request(b"{}").replace(b"Content-Length: 2", b"Content-Length: "
                                                                  + b"9" * 5000), {400, 413, 431}),
    "content-length twice, different": (speech_request(b"{}", "Content-Length: 3\r\n"), {400}),
    "content-length negative": (speech_request(b"{}").replace(b"Content-Length: 2", b"Content-Length: -2"), {400}),
    "control byte in a header": (speech_request(b"{}", "X-Evil: a\x01b\r\n"), {400}),
    "target http://[": (b"GET http://[ HTTP/1.1\r\nHost: x\r\n\r\n", {400, 404}),  # no such path: 404 is clean
    "request line garbage": (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n", {400}),
    "GET /v1/audio/speech": (b"GET /v1/audio/speech HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", {405}),
    "chunked body": (b"POST /v1/audio/speech HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
                     {400, 411}),
    "body over 1 MiB": (speech_request(b" " * (1024 * 1024 + 1)), {413}),
    "head over 16 KiB": (speech_request(b"{}", "X-Long: " + "v" * 20_000 + "\r\n"), {431}),
}


@pytest.mark.parametrize("case", list(RAW_HTTP_CASES), ids=list(RAW_HTTP_CASES))
def test_raw_http_cases_get_a_clean_4xx(server: ServerThread, case: str) -> None:
    request, expected = RAW_HTTP_CASES[case]
    with server_log() as logs:
        answer = asyncio.run(http_exchange(server.port, request))
        codes = statuses(answer)
        assert codes and codes[0] in expected, answer[:300]
        openai_speaks(server)
    logs.assert_clean()


def test_pipelined_gets_are_each_answered(server: ServerThread) -> None:
    request = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\nGET /v1/models HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    with server_log() as logs:
        answer = asyncio.run(http_exchange(server.port, request))
        assert statuses(answer) == [200, 200], answer[:500]
    logs.assert_clean()


def test_speech_response_format_of_the_wrong_type_is_a_400(server: ServerThread) -> None:
    with server_log() as logs:
        for fmt in (["pcm"], {"format": "pcm"}, 5, True):
            body = json.dumps({"model": "tiny", "voice": "ryan", "input": "Hi.", "response_format": fmt}).encode()
            answer = asyncio.run(http_exchange(server.port, speech_request(body)))
            assert statuses(answer) == [400], answer[:300]
            check_speech_answer(answer)
    logs.assert_clean()


# ---- ElevenLabs ----------------------------------------------------------------------------------------------
async def elevenlabs_example(port: int, multi: bool, sequence: list[Any], hang_up: bool) -> None:
    kind = "multi-stream-input" if multi else "stream-input"
    url = f"ws://127.0.0.1:{port}/v1/text-to-speech/ryan/{kind}?model_id=any"
    # a request nobody else sends, answered by a known error after the sequence's answers
    sentinel = ({"context_id": END, "close_context": True} if multi else {"context_id": [END]})
    try:
        async with websockets.connect(url) as ws:
            for message in sequence:
                if message is cases.CLOSE:
                    ws.transport.abort()  # the client vanishes mid-conversation
                    return
                await ws.send(message)
            await ws.send(json.dumps(sentinel))
            async for raw in ws:
                assert isinstance(raw, str), raw[:100]
                msg = json.loads(raw)
                if "error" in msg:
                    assert msg["error"] in cases.ELEVENLABS_ERRORS, msg
                    if (msg["error"] == "context_not_found" and msg.get("contextId") == END) or (
                            not multi and msg["error"] == "invalid_message" and "context_id" in msg["message"]):
                        break
                else:
                    assert "audio" in msg or msg.get("isFinal") is True, msg
            if hang_up:
                ws.transport.abort()
    except ConnectionClosed as exc:
        assert (exc.rcvd is not None and exc.rcvd.code in cases.WS_CLOSE_CODES) or cases.too_big(sequence), exc


def elevenlabs_speaks(port: int) -> None:
    async def speak() -> None:
        url = f"ws://127.0.0.1:{port}/v1/text-to-speech/ryan/stream-input?model_id=any"
        async with websockets.connect(url) as ws:
            for text in (" ", "Still here. ", ""):
                await ws.send(json.dumps({"text": text}))
            audio = 0
            async for raw in ws:
                msg = json.loads(raw)
                assert "error" not in msg, msg
                audio += len(msg.get("audio") or "")
                if msg.get("isFinal"):
                    break
            assert audio > 0

    asyncio.run(speak())


@pytest.mark.parametrize("multi", [False, True], ids=["stream-input", "multi-stream-input"])
@pytest.mark.parametrize("run", RUNS)
def test_elevenlabs_fuzz(server: ServerThread, multi: bool, run: tuple[int, bool]) -> None:
    with server_log() as logs:
        run_given(st.tuples(cases.elevenlabs_sequences, st.booleans()),
                  lambda value: elevenlabs_example(server.port, multi, *value), run)
        assert wait_no_streams(server.engine, timeout=10) == 0
        elevenlabs_speaks(server.port)
    logs.assert_clean()


# ---- Wyoming ----------------------------------------------------------------------------------------------
@pytest.fixture
def wyoming(engine: Any) -> Iterator[WyomingThread]:
    """With a recognizer (tiny.en): speech-to-text events reach their format checks (fuzzed frames carry no
    audio, so nothing is decoded)."""
    from agent.speech_in.faster_whisper import FasterWhisperRecognizer, FasterWhisperSettings
    from agent.speech_in.service import RecognizerService

    from .speech_helpers import test_model_dir

    stt = RecognizerService(FasterWhisperRecognizer(FasterWhisperSettings(model=str(test_model_dir()))))
    thread = WyomingThread(engine, stt)
    yield thread
    thread.stop()
    asyncio.run(stt.close())


async def wyoming_example(port: int, sequence: list[bytes], cut: int | None) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    conn = RawWyoming(reader, writer)
    data = b"".join(sequence)
    try:
        if cut is not None:  # the client vanishes in the middle of its requests (likely mid-frame)
            with contextlib.suppress(ConnectionError):
                await conn.send(data[:cut])
            return
        # a server that closes on a broken frame with bytes of ours unread resets the connection: a close too
        with contextlib.suppress(ConnectionError):
            await conn.send(data + frame("ping", {"text": END}))
            while (event := await conn.read(EXAMPLE_TIMEOUT_S)) is not None:
                if event.type == "error":
                    assert event.data.get("code") in cases.WYOMING_ERRORS, event
                elif event.type == "pong" and event.data.get("text") == END:
                    break
    finally:
        conn.abort()


def wyoming_speaks(port: int) -> None:
    async def speak() -> None:
        async with AsyncTcpClient("127.0.0.1", port) as client:
            await client.write_event(Synthesize(text="Still here.").event())
            chunks = 0
            while (event := await asyncio.wait_for(client.read_event(), 30)) is not None:
                assert event.type != "error", event
                chunks += event.type == "audio-chunk"
                if event.type == "audio-stop":
                    break
            assert chunks > 0

    asyncio.run(speak())


@pytest.mark.parametrize("run", RUNS)
def test_wyoming_fuzz(wyoming: WyomingThread, run: tuple[int, bool]) -> None:
    with server_log() as logs:
        cuts = st.one_of(st.none(), st.none(), st.integers(min_value=0, max_value=2000))
        run_given(st.tuples(cases.wyoming_sequences, cuts), lambda value: wyoming_example(wyoming.port, *value), run)
        assert wait_no_streams(wyoming.service.engine, timeout=10) == 0
        wyoming_speaks(wyoming.port)
        assert not any(h.flows for h in wyoming.handlers())
    logs.assert_clean()
