"""OpenAI's speech API through the official `openai` SDK against a real server on loopback (tiny model)."""

from __future__ import annotations

import base64
import json
import socket
import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import openai
import pytest

from agent.apis.speech import split_text
from agent.settings import ApiSettings

from .audio_compare import assert_close_lossy, decode, engine_pcm
from .conftest import API_KEY, ServerThread, http_get, wait_no_streams

TEXT = "Hello there, how are you today?"


def client(srv: ServerThread, key: str = "unused") -> openai.OpenAI:
    return openai.OpenAI(base_url=srv.url + "/v1", api_key=key, max_retries=0, timeout=60)


@pytest.fixture(scope="module")
def reference(server: ServerThread) -> np.ndarray:
    return engine_pcm(server.engine, TEXT)


def speak_ok(srv: ServerThread, key: str = "unused") -> None:
    """A good request still works (the server lived through whatever came before)."""
    audio = client(srv, key).audio.speech.create(model="tiny", voice="ryan", input="Still here.",
                                                 response_format="pcm")
    assert len(audio.content) > 0 and len(audio.content) % 3840 == 0


@pytest.mark.parametrize("fmt", ["pcm", "wav", "flac", "mp3", "opus", "aac"])
def test_every_format_decodes_to_the_engine_audio(server: ServerThread, reference: np.ndarray, fmt: str) -> None:
    audio = client(server).audio.speech.create(model="tiny", voice="vivian", input=TEXT, response_format=fmt)
    if fmt == "pcm":
        assert np.array_equal(np.frombuffer(audio.content, "<i2"), reference)
        return
    got, codec = decode(audio.content)
    assert codec == {"wav": "pcm_s16le", "flac": "flac", "mp3": "mp3float", "opus": "opus", "aac": "aac"}[fmt]
    if fmt in ("wav", "flac"):
        assert np.array_equal(got, reference)  # lossless: exact
    else:
        assert_close_lossy(reference, got)


def test_streaming_response_sends_audio_as_it_is_made_and_drops_instructions(server: ServerThread, reference: np.ndarray) -> None:
    arrivals: list[tuple[float, int]] = []
    body = b""
    start = time.monotonic()
    with client(server).audio.speech.with_streaming_response.create(
            model="tiny", voice="vivian", input=TEXT, response_format="pcm", instructions="Speak softly.") as response:
        assert response.headers["transfer-encoding"] == "chunked"
        assert response.headers["content-type"] == "audio/pcm"
        # the tiny model is a 0.6B CustomVoice: it takes no instruction, and says so
        assert "instruction" in response.headers["x-voicegate-warning"]
        for chunk in response.iter_bytes(3840):
            arrivals.append((time.monotonic() - start, len(chunk)))
            body += chunk
    assert np.array_equal(np.frombuffer(body, "<i2"), reference)
    assert len(arrivals) == len(reference) // 1920  # one 80 ms frame per chunk, not one block at the end
    assert arrivals[-1][0] > arrivals[0][0]


def test_sse_stream_format_sends_deltas_then_done(server: ServerThread, reference: np.ndarray) -> None:
    events: list[dict[str, Any]] = []
    with client(server).audio.speech.with_streaming_response.create(
            model="tiny", voice="vivian", input=TEXT, response_format="pcm", stream_format="sse") as response:
        assert response.headers["content-type"] == "text/event-stream"
        for line in response.iter_lines():
            if line.startswith("data: "):
                events.append(json.loads(line[6:]))
    deltas = [e for e in events if e["type"] == "speech.audio.delta"]
    assert [e["type"] for e in events] == ["speech.audio.delta"] * len(deltas) + ["speech.audio.done"]
    pcm = b"".join(base64.b64decode(e["audio"]) for e in deltas)
    assert np.array_equal(np.frombuffer(pcm, "<i2"), reference)
    usage = events[-1]["usage"]
    assert usage["output_tokens"] == len(reference) // 1920 and usage["input_tokens"] > 0
    assert usage["total_tokens"] == usage["input_tokens"] + usage["output_tokens"]


def test_long_input_is_spoken_as_consecutive_streams(start_server) -> None:  # type: ignore[no-untyped-def]
    srv = start_server(api=ApiSettings(segment_chars=30))  # short segments keep the test short
    text = "First part is here. Second one follows. And a third."
    pieces = split_text(text, 30)
    assert pieces == ["First part is here. ", "Second one follows. ", "And a third."]
    expected = np.concatenate([engine_pcm(srv.engine, piece) for piece in pieces])
    audio = client(srv).audio.speech.create(model="tiny", voice="vivian", input=text, response_format="pcm")
    assert np.array_equal(np.frombuffer(audio.content, "<i2"), expected)


def test_a_client_that_disconnects_cancels_the_engine_stream(server: ServerThread) -> None:
    engine = server.engine
    text = "This is a long answer that keeps going for quite a while. " * 6
    body = json.dumps({"model": "tiny", "voice": "vivian", "input": text, "response_format": "pcm"}).encode()
    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as sock:
        sock.sendall(b"POST /v1/audio/speech HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
        got = b""
        while b"\r\n\r\n" not in got or len(got) < 4000:  # the head and the first frame
            got += sock.recv(65536)
        assert got.startswith(b"HTTP/1.1 200 ")
        assert engine.scheduler.live_streams == 1
    assert wait_no_streams(engine) == 0  # cancelled long before the text was spoken
    speak_ok(server)


def test_listings_models_and_voices(server: ServerThread) -> None:
    models = client(server).models.list()
    assert [m.id for m in models.data] == ["tiny"]
    status, ctype, body = http_get(server.url + "/v1/audio/voices")
    names = [v["id"] for v in json.loads(body)["data"]]
    assert status == 200 and ctype.startswith("application/json") and "vivian" in names and "ryan" in names


def _error(exc: openai.APIStatusError) -> dict[str, Any]:
    body = exc.response.json()
    assert set(body["error"]) == {"message", "type", "param", "code"} and body["error"]["message"]
    return body["error"]


@pytest.mark.parametrize(("fields", "param", "code"), [
    ({"voice": "nobody"}, "voice", "invalid_value"),
    ({"input": ""}, "input", "invalid_value"),
    ({"input": "x" * 100_000}, "input", "string_above_max_length"),
    ({"response_format": "ogg-vorbis"}, "response_format", "invalid_value"),
    ({"speed": 5.0}, "speed", "invalid_value"),  # 0.25-4.0 is time-stretched now (issue 19)
    ({"stream_format": "websocket"}, "stream_format", "invalid_value"),
])
def test_bad_requests_get_openai_errors_and_the_server_lives_on(server: ServerThread, fields: dict[str, Any],
                                                                 param: str, code: str) -> None:
    args: dict[str, Any] = {"model": "tiny", "voice": "vivian", "input": TEXT, "response_format": "pcm", **fields}
    with pytest.raises(openai.BadRequestError) as refused:
        client(server).audio.speech.create(**args)
    error = _error(refused.value)
    assert (error["param"], error["code"], error["type"]) == (param, code, "invalid_request_error")
    speak_ok(server)


def _raw_post(srv: ServerThread, path: str, body: bytes, extra: bytes = b"") -> tuple[int, bytes]:
    with socket.create_connection(("127.0.0.1", srv.port), timeout=10) as sock:
        sock.sendall(b"POST %s HTTP/1.1\r\nHost: x\r\n%sContent-Length: %d\r\n\r\n%s"
                     % (path.encode(), extra, len(body), body))
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    return int(head.split(b" ")[1]), rest


def test_malformed_http_gets_errors_and_the_server_lives_on(server: ServerThread) -> None:
    status, body = _raw_post(server, "/v1/audio/speech", b"{not json")
    assert status == 400 and json.loads(body)["error"]["code"] == "invalid_json"
    status, body = _raw_post(server, "/v1/audio/speech", b"[1, 2]")
    assert status == 400 and json.loads(body)["error"]["code"] == "invalid_json"
    status, body = _raw_post(server, "/v1/nothing/here", b"{}")
    assert status == 404 and json.loads(body)["error"]["code"] == "not_found"
    # chunked bodies are welcome (test_http.py), but not beside a Content-Length (request smuggling)
    status, body = _raw_post(server, "/v1/audio/speech", b"", b"Transfer-Encoding: chunked\r\n")
    assert status == 400 and b"Transfer-Encoding" in body
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(b"PUT / HTTP/1.1\r\nX-Long: " + b"a" * 20_000 + b"\r\n\r\n")
        assert sock.recv(100).startswith(b"HTTP/1.1 431 ")
    speak_ok(server)


@pytest.fixture
def keyed(limited_server: ServerThread) -> Iterator[ServerThread]:
    yield limited_server


def test_the_api_key_is_the_servers_bearer_key(keyed: ServerThread) -> None:
    with pytest.raises(openai.AuthenticationError) as refused:
        client(keyed, "wrong-key").audio.speech.create(model="tiny", voice="vivian", input=TEXT)
    assert _error(refused.value)["code"] == "invalid_api_key"
    with pytest.raises(openai.AuthenticationError):
        client(keyed, "wrong-key").models.list()
    speak_ok(keyed, API_KEY)
    assert [m.id for m in client(keyed, API_KEY).models.list().data] == ["tiny"]
