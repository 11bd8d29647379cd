"""Replicas behind a proxy (docs/protocol.md, "Replicas"): routable session ids, join_url, refusals that a
proxy can act on, /healthz's replica, the capacity gauge, and draining on SIGTERM."""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import signal
import socket
import sys
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import websockets
from websockets.exceptions import ConnectionClosed, InvalidStatus

from agent.cli.fleet_options import fleet_settings
from agent.cli.main import build_parser
from agent.server.replica import check_public_url, check_replica_id, default_replica_id, join_base
from agent.session import protocol

from .conftest import Client, ServerThread, http_get, session_client

# ---- replica ids ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["a", "voicegate-0", "tts-7f9c4-x2", "0", "a" * 63])
def test_a_dns_label_is_a_replica_id(name: str) -> None:
    assert check_replica_id(name) == name


@pytest.mark.parametrize("name", ["", "Voicegate", "vg_0", "a.b", "-a", "a-", "a" * 64, "é", "a b"])
def test_anything_else_is_refused_as_a_replica_id(name: str) -> None:
    with pytest.raises(ValueError, match="DNS label"):
        check_replica_id(name)


@pytest.mark.parametrize(("hostname", "expected"), [
    ("voicegate-0", "voicegate-0"),  # a StatefulSet pod
    ("My_Laptop.local", "my-laptop"),
    ("-x-.example.com", "x"),
    ("___", "voicegate"),
    ("a" * 80, "a" * 63),
])
def test_the_default_replica_id_is_the_host_names_first_label(hostname: str, expected: str) -> None:
    assert default_replica_id(hostname) == expected


def test_join_base_is_a_path_or_the_websocket_url_under_the_public_url() -> None:
    assert join_base(None) == "/v1/session"
    assert join_base("https://voice.example.com") == "wss://voice.example.com/v1/session"
    assert join_base("http://10.0.0.5:8080/tts/") == "ws://10.0.0.5:8080/tts/v1/session"
    assert join_base("wss://voice.example.com/a") == "wss://voice.example.com/a/v1/session"
    for bad in ("voice.example.com", "ftp://x", "https://x/?a=1", "https://x/#f", "https:///path"):
        with pytest.raises(ValueError):
            check_public_url(bad)


def test_serve_checks_its_fleet_flags_before_loading_a_model(monkeypatch: pytest.MonkeyPatch,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    for flags in (["--replica-id", "Blue_1"], ["--public-url", "ftp://x"], ["--capacity-streams", "0"],
                  ["--capacity-streams", "2.5"]):
        with pytest.raises(SystemExit) as exited:
            build_parser().parse_args(["serve", *flags])
        assert exited.value.code == 2
    assert "DNS label" in capsys.readouterr().err
    args = build_parser().parse_args(["serve", "--replica-id", "blue-1", "--public-url", "https://v.example"])
    assert fleet_settings(args) == {"replica_id": "blue-1", "public_url": "https://v.example", "drain_grace_s": 30,
                                    "capacity_streams": None}
    assert fleet_settings(build_parser().parse_args(["serve", "--capacity-streams", "12"]))["capacity_streams"] == 12
    for flag in ("--drain-grace", "--shutdown-grace"):  # the old name still works
        assert fleet_settings(build_parser().parse_args(["serve", flag, "2.5"]))["drain_grace_s"] == 2.5
    monkeypatch.setenv("VOICEGATE_REPLICA_ID", "green-2")
    assert fleet_settings(build_parser().parse_args(["serve"]))["replica_id"] == "green-2"
    assert fleet_settings(build_parser().parse_args(["serve", "--replica-id", "b"]))["replica_id"] == "b"
    monkeypatch.setenv("VOICEGATE_REPLICA_ID", "Not.A.Label")
    with pytest.raises(SystemExit) as exited:
        build_parser().parse_args(["serve"])
    assert exited.value.code == 2 and "Not.A.Label" in capsys.readouterr().err


# ---- routable sessions ---------------------------------------------------------------------------------

async def get_json(url: str) -> tuple[int, dict[str, Any]]:
    status, _, body = await asyncio.to_thread(http_get, url)
    return status, json.loads(body)


async def test_session_ids_start_with_the_replica_and_join_url_joins(start_server: Any) -> None:
    srv: ServerThread = start_server(replica_id="blue-1")
    status, health = await get_json(srv.url + "/healthz")
    assert status == 200 and (health["replica"], health["status"]) == ("blue-1", "serving")
    assert await get_json(srv.url + "/livez") == (200, {"ok": True, "status": "serving"})
    async with session_client(srv.ws_url) as (owner, created):
        sid, token = created["session"], created["token"]
        assert re.fullmatch(r"blue-1\.sess_[0-9a-f]{16}", sid) and created["replica"] == "blue-1"
        assert created["join_url"] == f"/v1/session?session={sid}&token={token}"
        # what a producer does: the proxy's origin + join_url
        async with session_client(f"ws://127.0.0.1:{srv.port}{created['join_url']}") as (producer, joined):
            assert (joined["session"], joined["role"], joined["join_url"]) == (sid, "producer", created["join_url"])
            done = await producer.speak("Routed here. ")
        assert (await owner.expect("utterance.done"))["utterance"] == done["utterance"]


async def test_join_url_is_absolute_under_the_public_url(start_server: Any) -> None:
    srv: ServerThread = start_server(replica_id="tts-0", public_url="https://voice.example.com/gw/")
    async with session_client(srv.ws_url) as (_, created):
        assert created["join_url"] == (f"wss://voice.example.com/gw/v1/session?session={created['session']}"
                                       f"&token={created['token']}")


async def test_the_default_replica_is_the_host_names(server: ServerThread) -> None:
    _, health = await get_json(server.url + "/healthz")
    assert health["replica"] == default_replica_id()
    async with session_client(server.ws_url) as (_, created):
        assert created["session"].split(".", 1)[0] == created["replica"] == default_replica_id()


@pytest.mark.parametrize("case", ["other_replica", "ended_here"])
async def test_a_session_that_is_not_here_is_refused_4404_at_once(server: ServerThread, case: str) -> None:
    """A producer sent to a replica that does not hold its session (it moved, or the replica restarted)
    gets unknown_session and 4404 at once, never a hang."""
    async with session_client(server.ws_url) as (_, created):
        sid, token = created["session"], created["token"]
    if case == "other_replica":  # the same random part under another replica's name
        sid = "some-other-replica." + sid.split(".", 1)[1]
    else:
        server.wait_sessions(0)
    started = time.monotonic()
    async with websockets.connect(f"{server.ws_url}?session={sid}&token={token}") as ws:
        err = json.loads(await asyncio.wait_for(ws.recv(), 5))
        with pytest.raises(ConnectionClosed) as closed:
            await asyncio.wait_for(ws.recv(), 5)
    assert err["type"] == "error" and err["code"] == protocol.UNKNOWN_SESSION
    assert closed.value.rcvd is not None and closed.value.rcvd.code == protocol.CLOSE_UNKNOWN_SESSION
    assert time.monotonic() - started < 5


# ---- capacity ------------------------------------------------------------------------------------------

def gauge(metrics: str, name: str) -> float:
    match = re.search(rf"^{name} (\S+)$", metrics, re.MULTILINE)
    assert match, f"{name} not in /metrics"
    return float(match.group(1))


async def test_capacity_is_published_beside_the_live_streams(server: ServerThread, start_server: Any) -> None:
    status, _, body = await asyncio.to_thread(http_get, server.url + "/metrics")
    assert status == 200 and "# TYPE voicegate_engine_capacity_streams gauge" in body
    assert gauge(body, "voicegate_engine_capacity_streams") == server.engine.settings.max_streams  # the default
    srv: ServerThread = start_server(capacity_streams=3)
    async with session_client(srv.ws_url) as (client, _):
        await client.send(type="text.append", text="Counting streams while this one plays. ")
        await client.expect("audio.first")
        _, _, body = await asyncio.to_thread(http_get, srv.url + "/metrics")
        assert gauge(body, "voicegate_engine_capacity_streams") == 3
        assert gauge(body, "voicegate_engine_streams") >= 1  # this session's stream, at least


# ---- drain (SIGTERM) -----------------------------------------------------------------------------------

def request(url: str, body: bytes | None = None) -> tuple[int, Any, bytes]:
    """(status, headers (case-insensitive), body): a GET, or a JSON POST with `body` (blocking)."""
    req = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"} if body else {})
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, resp.headers, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers, exc.read()


async def closed_for_restart(client: Client, timeout: float = 20.0) -> dict[str, Any]:
    """Reads to the end: the session.closing event, then a 1012 close."""
    closing = await client.expect("session.closing", timeout=timeout)
    with pytest.raises(ConnectionClosed) as closed:
        while True:
            await client.next(timeout)
    assert closed.value.rcvd is not None and closed.value.rcvd.code == protocol.CLOSE_SERVICE_RESTART
    assert closing["reconnect"] is True and closing["reason"] == "server_restart"
    return closing


async def refused_as_new_session(url: str) -> None:
    """Refused before the upgrade with 503 + Retry-After (a proxy retries it on another replica)."""
    with pytest.raises(InvalidStatus) as refused:
        async with websockets.connect(url):
            pass
    response = refused.value.response
    assert response.status_code == 503 and response.headers.get("Retry-After") == "1"
    assert json.loads(response.body)["error"]["code"] == protocol.SHUTTING_DOWN


async def test_drain_refuses_new_work_and_lets_live_speech_finish(start_server: Any) -> None:
    srv: ServerThread = start_server(drain_grace_s=30.0)
    async with session_client(srv.ws_url) as (speaking, created), session_client(srv.ws_url) as (idle, _):
        await speaking.send(type="text.append", text="The agent is still in the middle of ")
        await speaking.expect("audio.first")  # open: the LLM is still streaming this sentence
        assert srv.server is not None
        drained = asyncio.wrap_future(asyncio.run_coroutine_threadsafe(srv.server.drain(), srv.loop))

        await closed_for_restart(idle)  # nothing played there: closed at once
        status, health = await get_json(srv.url + "/healthz")
        assert status == 503 and (health["ok"], health["status"]) == (False, "draining")
        assert await get_json(srv.url + "/livez") == (200, {"ok": True, "status": "draining"})
        await refused_as_new_session(srv.ws_url)
        body = json.dumps({"model": "tts-1", "input": "Hi.", "voice": "vivian"}).encode()
        status, headers, answer = await asyncio.to_thread(request, srv.url + "/v1/audio/speech", body)
        assert status == 503 and headers.get("Retry-After") == "1"
        assert json.loads(answer)["error"]["code"] == "shutting_down"
        status, headers, answer = await asyncio.to_thread(request, srv.url + "/v1/voices")
        assert status == 503 and json.loads(answer)["detail"]["status"] == "shutting_down"
        status, _, _ = await asyncio.to_thread(request, srv.url + "/metrics")
        assert status == 200  # still scraped while draining
        with pytest.raises(InvalidStatus) as refused:
            async with websockets.connect(f"ws://127.0.0.1:{srv.port}/v1/text-to-speech/vivian/stream-input"):
                pass
        assert refused.value.response.status_code == 503

        # a producer still reaches the session, and the sentence is finished
        async with session_client(f"ws://127.0.0.1:{srv.port}{created['join_url']}") as (producer, joined):
            assert joined["role"] == "producer"
            await producer.send(type="text.append", text="a sentence. ")
            await producer.send(type="text.flush")
            done = await speaking.expect("utterance.done", timeout=30)
            assert done["text_fed"] == "The agent is still in the middle of a sentence. "
            await closed_for_restart(speaking)  # after utterance.done: `expect` fails on a close before it
            await closed_for_restart(producer)
        await asyncio.wait_for(drained, 10)
    assert srv.call(lambda: len(srv.server.sessions)) == 0  # type: ignore[union-attr]


async def test_drain_grace_expiry_interrupts_then_closes_for_restart(start_server: Any) -> None:
    srv: ServerThread = start_server(drain_grace_s=0.3)
    async with session_client(srv.ws_url) as (client, _):
        await client.send(type="text.append", text="This sentence is never flushed, so it cannot end before the "
                                                    "grace runs out. ")
        await client.expect("audio.first")
        assert srv.server is not None
        drained = asyncio.wrap_future(asyncio.run_coroutine_threadsafe(srv.server.drain(), srv.loop))
        evt = await client.expect("utterance.interrupted", timeout=10)
        assert evt["reason"] == "shutdown"
        await closed_for_restart(client)
        await asyncio.wait_for(drained, 10)


@contextlib.asynccontextmanager
async def serve_process(checkpoint: Path, *flags: str) -> AsyncIterator[tuple[asyncio.subprocess.Process, int]]:
    """`voicegate serve` in its own process: (process, port); killed if still running at the end."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "agent.cli.main", "serve", "--model", str(checkpoint), "--port", "0",
        "--threads", "1", *flags, stderr=asyncio.subprocess.PIPE)
    assert proc.stderr is not None
    try:
        port = None
        async with asyncio.timeout(120):
            while port is None:
                line = (await proc.stderr.readline()).decode()
                assert line, "voicegate serve exited before serving"
                if match := re.search(r"serving .* on http://127\.0\.0\.1:(\d+)/", line):
                    port = int(match.group(1))
        yield proc, port
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def until_draining(url: str) -> dict[str, Any]:
    async with asyncio.timeout(10):
        while True:
            status, health = await get_json(url + "/healthz")
            if status == 503:
                return health
            await asyncio.sleep(0.05)


async def test_sigterm_drains_a_real_server_and_it_exits_0(tiny_checkpoint: Any) -> None:
    """An utterance in flight at SIGTERM plays to utterance.done while /healthz says draining and new
    sessions are refused; then its session closes for a restart (1012) and the process exits 0."""
    async with serve_process(tiny_checkpoint("custom_voice"), "--replica-id", "pod-7") as (proc, port):
        url = f"ws://127.0.0.1:{port}/v1/session"
        async with session_client(url) as (client, created):
            assert created["session"].startswith("pod-7.")
            await client.send(type="text.append", text="Goodbye for ")
            await client.expect("audio.first")
            proc.send_signal(signal.SIGTERM)
            health = await until_draining(f"http://127.0.0.1:{port}")
            assert (health["ok"], health["status"], health["replica"]) == (False, "draining", "pod-7")
            await refused_as_new_session(url)
            await client.send(type="text.append", text="now. ")
            await client.send(type="text.flush")
            done = await client.expect("utterance.done", "utterance.interrupted", timeout=30)
            assert done["type"] == "utterance.done" and done["text_fed"] == "Goodbye for now. "
            await closed_for_restart(client)
        async with asyncio.timeout(30):
            assert await proc.wait() == 0
        assert proc.stderr is not None
        assert "voicegate: stopped\n" in (await proc.stderr.read()).decode()


async def test_a_second_signal_stops_at_once(tiny_checkpoint: Any) -> None:
    async with serve_process(tiny_checkpoint("custom_voice"), "--drain-grace", "60") as (proc, port):
        async with session_client(f"ws://127.0.0.1:{port}/v1/session") as (client, _):
            await client.send(type="text.append", text="An unfinished sentence that would hold the drain ")
            await client.expect("audio.first")
            proc.send_signal(signal.SIGTERM)
            await until_draining(f"http://127.0.0.1:{port}")
            proc.send_signal(signal.SIGINT)
            started = time.monotonic()
            with pytest.raises(ConnectionClosed) as closed:
                while True:
                    await client.next(10)
            assert closed.value.rcvd is not None and closed.value.rcvd.code == protocol.CLOSE_GOING_AWAY
        async with asyncio.timeout(10):
            assert await proc.wait() == 1
        assert time.monotonic() - started < 10


def test_a_streamed_answer_in_flight_at_the_drain_is_finished(start_server: Any) -> None:
    srv: ServerThread = start_server(drain_grace_s=30.0)
    assert srv.server is not None
    body = json.dumps({"model": "tts-1", "input": "An answer that was asked for before the drain.",
                       "voice": "vivian", "response_format": "pcm"}).encode()
    with socket.create_connection(("127.0.0.1", srv.port), timeout=30) as sock:
        sock.sendall(b"POST /v1/audio/speech HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
        got = sock.recv(65536)
        assert got.startswith(b"HTTP/1.1 200 ")
        drained = asyncio.run_coroutine_threadsafe(srv.server.drain(), srv.loop)
        while chunk := sock.recv(65536):
            got += chunk
            if got.endswith(b"0\r\n\r\n"):
                break
        assert got.endswith(b"0\r\n\r\n")  # whole: the final chunk came
        drained.result(10)
