"""The serve port's HTTP/1.1 over raw sockets: what a client library would hide (keep-alive, HEAD, CORS, chunked
bodies, pipelining) and hostile requests, each answered with its documented status (docs/openai.md) and never a
traceback in the server's log; after each, the server still answers."""

from __future__ import annotations

import json
import logging
import socket
from collections.abc import Iterator
from typing import Any

import h11
import numpy as np
import pytest

from agent.server import transport

from .audio_compare import engine_pcm
from .conftest import ServerThread

TEXT = "Hello there, how are you today?"


CUTS_A_STREAM = {"test_shutdown_cuts_a_streamed_answer_and_its_engine_stream"}  # logs that it did, as an error


@pytest.fixture(autouse=True)
def no_tracebacks(request: pytest.FixtureRequest, caplog: pytest.LogCaptureFixture) -> Iterator[None]:
    """The server (on its thread, same process) logs no traceback, and no error, for anything these tests send."""
    caplog.set_level(logging.INFO)
    yield
    records = caplog.get_records("setup") + caplog.get_records("call")
    errors = request.node.originalname not in CUTS_A_STREAM
    bad = [r for r in records if r.exc_info or (errors and r.levelno >= logging.ERROR)]
    assert not bad, [r.getMessage() for r in bad]


class Peer:
    """One client connection: requests through an h11 client (so responses are framed exactly), or raw bytes."""

    def __init__(self, srv: ServerThread) -> None:
        self.sock = socket.create_connection(("127.0.0.1", srv.port), timeout=30)
        self.conn = h11.Connection(h11.CLIENT)

    def request(self, method: str, target: str, headers: list[tuple[str, str]] | None = None,
                body: list[bytes] | None = None) -> tuple[int, dict[str, str], bytes]:
        """One request (the body as chunks: chunked transfer when it has any) -> (status, headers, body)."""
        if self.conn.our_state is h11.DONE and self.conn.their_state is h11.DONE:
            self.conn.start_next_cycle()
        head = [("Host", "test"), *(headers or [])]
        if body is not None:
            head.append(("Transfer-Encoding", "chunked"))
        out = self.conn.send(h11.Request(method=method, target=target, headers=head)) or b""
        for chunk in body or []:
            out += self.conn.send(h11.Data(data=chunk)) or b""
        out += self.conn.send(h11.EndOfMessage()) or b""
        self.sock.sendall(out)
        return self.response()

    def response(self) -> tuple[int, dict[str, str], bytes]:
        status, headers, data = 0, {}, b""
        while True:
            event = self.conn.next_event()
            if event is h11.NEED_DATA:
                self.conn.receive_data(self.sock.recv(65536))
            elif isinstance(event, h11.Response):
                status = event.status_code
                headers = {k.decode().lower(): v.decode() for k, v in event.headers}
            elif isinstance(event, h11.Data):
                data += bytes(event.data)
            elif isinstance(event, h11.EndOfMessage):
                return status, headers, data
            else:
                raise AssertionError(f"unexpected {event!r}")

    def close(self) -> None:
        self.sock.close()


def raw(srv: ServerThread, data: bytes) -> bytes:
    """Send `data` as is; everything the server sends until it closes the connection."""
    with socket.create_connection(("127.0.0.1", srv.port), timeout=30) as sock:
        sock.sendall(data)
        got = b""
        while chunk := sock.recv(65536):
            got += chunk
    return got


def status_of(response: bytes) -> int:
    assert response.startswith(b"HTTP/1.1 "), response[:80]
    return int(response.split(b" ", 2)[1])


def still_answers(srv: ServerThread) -> None:
    peer = Peer(srv)
    try:
        status, _, body = peer.request("GET", "/healthz")
        assert status == 200 and json.loads(body)["ok"] is True
    finally:
        peer.close()


def speech_body(**fields: Any) -> bytes:
    return json.dumps({"model": "tiny", "voice": "vivian", "input": TEXT, "response_format": "pcm", **fields}).encode()


# ---- what the stack gained ----------------------------------------------------------------------------

def test_two_requests_on_one_keep_alive_connection(server: ServerThread) -> None:
    peer = Peer(server)
    try:
        status, headers, body = peer.request("GET", "/healthz")
        assert status == 200 and json.loads(body)["model"] == "tiny"
        assert headers.get("connection") != "close" and headers["server"] == "voicegate" and "date" in headers
        status, _, body = peer.request("GET", "/v1/models")
        assert status == 200 and [m["id"] for m in json.loads(body)["data"]] == ["tiny"]
    finally:
        peer.close()


def test_head_gives_the_headers_without_a_body(server: ServerThread) -> None:
    peer = Peer(server)
    try:
        status, get_headers, page = peer.request("GET", "/")
        assert status == 200 and b"<html" in page.lower()
        status, headers, body = peer.request("HEAD", "/")
        assert status == 200 and body == b"" and headers["content-type"].startswith("text/html")
        assert headers["content-length"] == get_headers["content-length"] == str(len(page))
        status, _, body = peer.request("HEAD", "/healthz")  # the connection goes on after a HEAD
        assert status == 200 and body == b""
    finally:
        peer.close()


def test_cors_preflight_allows_the_configured_origin_only(start_server) -> None:  # type: ignore[no-untyped-def]
    srv = start_server(cors_origins=("https://app.example",))
    peer = Peer(srv)
    try:
        ask = [("Access-Control-Request-Method", "POST"),
               ("Access-Control-Request-Headers", "authorization, content-type")]
        status, headers, _ = peer.request("OPTIONS", "/v1/audio/speech", [("Origin", "https://app.example"), *ask])
        assert status == 200 and headers["access-control-allow-origin"] == "https://app.example"
        assert "POST" in headers["access-control-allow-methods"]
        status, headers, _ = peer.request("OPTIONS", "/v1/audio/speech", [("Origin", "https://evil.example"), *ask])
        assert status == 400 and "access-control-allow-origin" not in headers
        status, headers, _ = peer.request("GET", "/v1/models", [("Origin", "https://app.example")])
        assert status == 200 and headers["access-control-allow-origin"] == "https://app.example"
    finally:
        peer.close()
    still_answers(srv)


def test_no_cors_headers_by_default(server: ServerThread) -> None:
    peer = Peer(server)
    try:
        status, headers, _ = peer.request("GET", "/v1/models", [("Origin", "https://app.example")])
        assert status == 200 and "access-control-allow-origin" not in headers
    finally:
        peer.close()


def test_a_chunked_request_body_is_read_whole(server: ServerThread) -> None:
    body = speech_body()
    peer = Peer(server)
    try:
        status, headers, audio = peer.request("POST", "/v1/audio/speech", [("Content-Type", "application/json")],
                                              [body[:7], body[7:20], body[20:]])
        assert status == 200 and headers["content-type"] == "audio/pcm"
        assert np.array_equal(np.frombuffer(audio, "<i2"), engine_pcm(server.engine, TEXT))
        status, _, _ = peer.request("GET", "/healthz")  # and the connection is still usable
        assert status == 200
    finally:
        peer.close()


def test_a_body_over_the_limit_is_413(server: ServerThread) -> None:
    got = raw(server, b"POST /v1/audio/speech HTTP/1.1\r\nHost: x\r\nContent-Length: 99999999999\r\n\r\n")
    assert status_of(got) == 413
    still_answers(server)


def test_pipelined_requests_are_each_answered(server: ServerThread) -> None:
    got = raw(server, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n" * 2
              + b"GET /v1/models HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert got.count(b"HTTP/1.1 200 OK\r\n") == 3 and got.count(b'"object":"list"') == 1


# ---- malformed and hostile requests -----------------------------------------------------------------------

@pytest.mark.parametrize(("request_bytes", "status"), [
    (b"GARBAGE\r\n\r\n", 400),  # no target, no version
    (b"GET / HTTP/1.1 extra\r\nHost: x\r\n\r\n", 400),
    (b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: \xc2\xb2\r\n\r\n", 400),  # a superscript two: not a digit
    (b"POST /v1/audio/speech HTTP/1.1\r\nHost: x\r\nContent-Length: " + b"9" * 5000 + b"\r\n\r\n", 400),
    (b"POST /v1/audio/speech HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\n{}", 400),
    (b"POST /v1/audio/speech HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\n\r\n", 400),
    (b"GET / HTTP/1.1\r\nHost: x\r\nX-Bad: a\x01b\r\n\r\n", 400),  # a control byte in a header value
    (b"GET / HTTP/1.1\r\nHost: x\r\nX-Bad: a\x7fb\r\n\r\n", 400),
    (b"GET / HTTP/1.1\r\nHost: x\r\nX-Bad: a\rb\r\n\r\n", 400),
    (b"GET / HTTP/1.1\r\nX-Long: " + b"a" * 20_000 + b"\r\n\r\n", 431),  # no Host either: the size wins
    (b"GET / HTTP/1.1\r\nHost: x\r\nX-Long: " + b"a" * 20_000 + b"\r\n\r\n", 431),
    (b"GET http://[ HTTP/1.1\r\nHost: x\r\n\r\n", 404),
    (b"GET //[x HTTP/1.1\r\nHost: x\r\n\r\n", 404),
    (b"GET //x HTTP/1.1\r\nHost: x\r\n\r\n", 404),  # not the page at /
    (b"GET /../pyproject.toml HTTP/1.1\r\nHost: x\r\n\r\n", 404),
    (b"GET /%2e%2e%2fpyproject.toml HTTP/1.1\r\nHost: x\r\n\r\n", 404),
])
def test_malformed_requests_get_a_documented_status_then_a_close(server: ServerThread, request_bytes: bytes,
                                                                  status: int) -> None:
    got = raw(server, request_bytes if b"Connection" in request_bytes or status != 404
              else request_bytes[:-2] + b"Connection: close\r\n\r\n")
    assert status_of(got) == status
    still_answers(server)


def test_identical_duplicate_content_lengths_are_one_length(server: ServerThread) -> None:
    body = speech_body(response_format=["pcm"])  # refused by the route: the body was read as one
    got = raw(server, b"POST /v1/audio/speech HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: %d\r\n"
              b"Content-Length: %d\r\n\r\n%s" % (len(body), len(body), body))
    assert status_of(got) == 400 and b"invalid_value" in got


def test_a_head_that_trickles_in_past_the_limit_is_431(server: ServerThread) -> None:
    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n")
        got = b""
        for _ in range(17):  # just past the limit, so that the server has read all of it
            sock.sendall(b"X-Pad: " + b"p" * 1000 + b"\r\n")
        while chunk := sock.recv(65536):
            got += chunk
    assert status_of(got) == 431
    still_answers(server)


def test_a_connection_that_sends_no_request_is_closed(server: ServerThread, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(transport, "HEAD_TIMEOUT_S", 0.3)
    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\n")  # and nothing more
        assert sock.recv(100) == b""  # closed without an answer
    still_answers(server)


@pytest.mark.parametrize("fmt", [["pcm"], {"pcm": 1}])
def test_an_unhashable_response_format_is_invalid_value(server: ServerThread, fmt: Any) -> None:
    peer = Peer(server)
    try:
        status, _, body = peer.request("POST", "/v1/audio/speech", body=[speech_body(response_format=fmt)])
        error = json.loads(body)["error"]
        assert (status, error["code"], error["param"]) == (400, "invalid_value", "response_format")
        status, _, body = peer.request("POST", "/v1/audio/speech", body=[speech_body(stream_format=[1])])
        assert status == 400 and json.loads(body)["error"]["param"] == "stream_format"
    finally:
        peer.close()


def test_deeply_nested_json_is_400(server: ServerThread) -> None:
    peer = Peer(server)
    try:
        nested = b'{"model": "tiny", "voice": "vivian", "input": "hi", "x": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
        status, _, body = peer.request("POST", "/v1/audio/speech", body=[nested])
        assert status == 400 and json.loads(body)["error"]["code"] == "invalid_json"
    finally:
        peer.close()
    still_answers(server)


def test_get_on_the_speech_endpoint_is_405_with_an_openai_error(server: ServerThread) -> None:
    peer = Peer(server)
    try:
        status, headers, body = peer.request("GET", "/v1/audio/speech")
        error = json.loads(body)["error"]
        assert (status, error["code"], error["type"]) == (405, "method_not_allowed", "invalid_request_error")
        assert "POST" in headers["allow"]
        status, _, body = peer.request("POST", "/v1/nothing/here", body=[b"{}"])
        assert status == 404 and json.loads(body)["error"]["code"] == "not_found"
    finally:
        peer.close()


def test_a_websocket_handshake_on_an_unknown_path_is_404(server: ServerThread) -> None:
    got = raw(server, b"GET /v1/nowhere HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
              b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")
    assert status_of(got) == 404
    got = raw(server, b"GET /v1/session HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
              b"Sec-WebSocket-Version: 13\r\n\r\n")  # no key: websockets refuses the handshake itself
    assert status_of(got) == 400
    got = raw(server, b"GET /v1/session HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
              b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
              + b"".join(b"X-Pad-%d: %s\r\n" % (i, b"p" * 1000) for i in range(20)) + b"\r\n")
    assert status_of(got) == 431
    still_answers(server)


def test_shutdown_cuts_a_streamed_answer_and_its_engine_stream(start_server) -> None:  # type: ignore[no-untyped-def]
    from .conftest import wait_no_streams

    srv = start_server()
    body = speech_body(input="This is a long answer that keeps going for quite a while. " * 6)
    with socket.create_connection(("127.0.0.1", srv.port), timeout=30) as sock:
        sock.sendall(b"POST /v1/audio/speech HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
        got = sock.recv(65536)
        assert got.startswith(b"HTTP/1.1 200 ")
        srv.shutdown()
        while chunk := sock.recv(65536):
            got += chunk
    assert not got.endswith(b"0\r\n\r\n")  # cut: no final chunk
    assert wait_no_streams(srv.engine) == 0


def test_the_page_and_its_files_are_the_web_client(server: ServerThread) -> None:
    peer = Peer(server)
    try:
        status, _, page = peer.request("GET", "/")
        assert status == 200 and b'src="app.js"' in page  # the bundled page, not the placeholder
        status, headers, script = peer.request("GET", "/app.js")
        assert status == 200 and headers["content-type"].startswith("text/javascript") and len(script) > 0
        status, _, _ = peer.request("GET", "/__init__.py")  # a file of the folder, not of the page
        assert status == 404
    finally:
        peer.close()
