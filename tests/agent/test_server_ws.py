"""The media server over real WebSockets on loopback, with the tiny CustomVoice model (noise audio)."""

from __future__ import annotations

import asyncio
import json
import re
import socket
import sys
from pathlib import Path

import pytest
import websockets
from websockets.exceptions import ConnectionClosed, InvalidStatus

from agent.cli.main import main as cli_main
from agent.session import protocol
from agent.settings import ENGINE_FRAME_BYTES

from .conftest import API_KEY, Client, ServerThread, http_get, session_client

SHORT = "Hello there. "


async def alive(client: Client, server: ServerThread) -> None:
    """The session answers, and the server answers over HTTP."""
    await client.send(type="voices.list", id="ping")
    reply = await client.expect("voices")
    assert reply["id"] == "ping" and "vivian" in reply["voices"]
    status, _, body = await asyncio.to_thread(http_get, server.url + "/healthz")
    assert status == 200 and json.loads(body)["ok"] is True


# ---- session basics ------------------------------------------------------------------------------

async def test_session_created_fields(server: ServerThread) -> None:
    async with session_client(server.ws_url) as (_, created):
        assert re.fullmatch(r"[a-z0-9-]{1,63}\.sess_[0-9a-f]{16}", created["session"])  # replica.random
        assert isinstance(created["token"], str) and len(created["token"]) >= 32
        assert (created["sample_rate"], created["frame_ms"], created["role"]) == (24000, 80, "owner")
        assert "vivian" in created["voices"] and "english" in created["languages"]
        assert created["config"]["audio"] == "websocket" and created["config"]["voice"] in created["voices"]
        assert created["model_kind"] == "custom_voice"


async def test_headless_gets_3840_byte_frames_then_done(server: ServerThread) -> None:
    async with session_client(server.ws_url) as (client, _):
        await client.send(type="session.update", voice="vivian", language="english", seed=3)
        assert (await client.expect("session.updated"))["config"]["voice"] == "vivian"
        for word in ("Hello ", "there, ", "how ", "are ", "you ", "today? ", " "):
            await client.send(type="text.append", text=word)
        await client.send(type="text.flush")
        started = await client.expect("utterance.started")
        first = await client.expect("audio.first")
        done = await client.expect("utterance.done")
        assert started["utterance"] == first["utterance"] == done["utterance"]
        assert first["latency_ms"] >= 0 and first["model_ms"] >= 0
        assert client.frames and all(len(f) == ENGINE_FRAME_BYTES for f in client.frames)
        assert len(client.frames) == done["frames"] and done["played_ms"] == 80.0 * done["frames"]
        assert done["ended_by"] in ("eos", "cap")
        assert done["text_fed"] == "Hello there, how are you today?  "
        # audio of an utterance comes after its start and before its end
        assert client.order.index("utterance.started") < client.order.index("<audio>")
        assert max(i for i, t in enumerate(client.order) if t == "<audio>") < client.order.index("utterance.done")


async def test_utterances_play_in_order_and_text_after_flush_starts_the_next(server: ServerThread) -> None:
    async with session_client(server.ws_url) as (client, _):
        await client.send(type="text.append", text="One. ")
        await client.send(type="text.flush")
        await client.send(type="text.append", text="Two. ")
        await client.send(type="text.flush")
        queued = await client.expect("utterance.queued")
        first = await client.expect("utterance.done")
        second_started = await client.expect("utterance.started")
        second = await client.expect("utterance.done")
        assert first["text_fed"] == "One. " and second["text_fed"] == "Two. "
        assert queued["utterance"] == second["utterance"] == second_started["utterance"] != first["utterance"]
        assert len(client.frames) == first["frames"] + second["frames"]


async def test_none_mode_is_a_paced_text_sink(server: ServerThread) -> None:
    async with session_client(server.ws_url) as (client, _):
        await client.send(type="session.update", audio="none")
        await client.expect("session.updated")
        done = await client.speak(SHORT)
        assert done["type"] == "utterance.done" and done["played_ms"] > 0
        assert client.frames == []


async def test_producer_joins_with_token_and_drives_speech(server: ServerThread) -> None:
    async with session_client(server.ws_url) as (listener, created):
        join = f"{server.ws_url}?session={created['session']}&token={created['token']}"
        async with session_client(join) as (producer, joined):
            assert joined["session"] == created["session"] and joined["role"] == "producer"
            done = await producer.speak(SHORT)
            assert done["type"] == "utterance.done"
        heard = await listener.expect("utterance.done")
        assert heard["utterance"] == done["utterance"]
        assert len(listener.frames) == done["frames"] > 0
        assert producer.frames == []  # audio goes to the listener only


@pytest.mark.parametrize("case", ["wrong_token", "missing_token", "unknown_session"])
async def test_joining_without_the_right_token_is_refused(server: ServerThread, case: str) -> None:
    async with session_client(server.ws_url) as (owner, created):
        sid, token = created["session"], created["token"]
        query = {"wrong_token": f"session={sid}&token={token[:-2]}xx", "missing_token": f"session={sid}",
                 "unknown_session": f"session=sess_0000000000000000&token={token}"}[case]
        async with websockets.connect(f"{server.ws_url}?{query}") as ws:
            err = json.loads(await ws.recv())
            with pytest.raises(ConnectionClosed) as closed:
                await ws.recv()
        expected = (protocol.UNKNOWN_SESSION, protocol.CLOSE_UNKNOWN_SESSION) if case == "unknown_session" \
            else (protocol.BAD_TOKEN, protocol.CLOSE_BAD_TOKEN)
        assert err["type"] == "error" and err["code"] == expected[0]
        assert closed.value.rcvd is not None and closed.value.rcvd.code == expected[1]
        assert ("token" in closed.value.rcvd.reason) or ("unknown session" in closed.value.rcvd.reason)
        await alive(owner, server)


async def test_two_sessions_at_once_stay_isolated(server: ServerThread) -> None:
    async with session_client(server.ws_url) as (a, ca), session_client(server.ws_url) as (b, cb):
        assert ca["session"] != cb["session"] and ca["token"] != cb["token"]
        await a.send(type="session.update", voice="ryan")
        await b.send(type="session.update", voice="serena")
        done_a, done_b = await asyncio.gather(a.speak("Alpha one two. "), b.speak("Bravo three four five six. "))
        assert done_a["text_fed"] == "Alpha one two. " and done_b["text_fed"] == "Bravo three four five six. "
        assert len(a.frames) == done_a["frames"] and len(b.frames) == done_b["frames"]
        ids_a = {e.get("utterance") for e in a.events} - {None}
        ids_b = {e.get("utterance") for e in b.events} - {None}
        assert ids_a == {done_a["utterance"]} and ids_b == {done_b["utterance"]}
        assert [e["config"]["voice"] for e in a.events if e["type"] == "session.updated"] == ["ryan"]
        assert [e["config"]["voice"] for e in b.events if e["type"] == "session.updated"] == ["serena"]


async def test_cancel_reports_interrupted_with_exact_text_fed(server: ServerThread) -> None:
    fragments = ["  Well, ", "this is ", "a long", "er sentence — with ünïcode ", "and ", "many words ",
                 "so that it keeps speaking for a while. "]
    async with session_client(server.ws_url) as (client, _):
        for fragment in fragments:
            await client.send(type="text.append", text=fragment)
        await client.expect("audio.first")
        await client.audio_frames(3)
        await client.send(type="utterance.cancel")
        evt = await client.expect("utterance.interrupted")
        assert evt["reason"] == "cancel"
        assert evt["text_fed"] == "".join(fragments)
        assert evt["spoken_text"] + evt["unspoken_text"] == evt["text_fed"]
        assert evt["played_ms"] >= 80.0 and evt["awaiting_flush"] is False
        late = [m for m in await client.quiet_for(0.4) if isinstance(m, bytes)]
        assert late == []  # nothing of the cancelled utterance after the event
        # a cancel ends the utterance: the next text starts a new one
        done = await client.speak(SHORT)
        assert done["type"] == "utterance.done" and done["utterance"] != evt["utterance"]
        assert done["text_fed"] == SHORT


async def test_cancel_all_drops_queued_utterances(server: ServerThread) -> None:
    async with session_client(server.ws_url) as (client, _):
        for text in ("First one here. ", "Second. ", "Third. "):
            await client.send(type="text.append", text=text)
            await client.send(type="text.flush")
        await client.expect("audio.first")
        await client.send(type="utterance.cancel", all=True)
        got = [await client.expect("utterance.interrupted") for _ in range(3)]
        assert [e["text_fed"] for e in got] == ["First one here. ", "Second. ", "Third. "]
        assert all(e["reason"] == "cancel" for e in got)
        assert got[1]["played_ms"] == got[2]["played_ms"] == 0 and got[2]["spoken_text"] == ""
        await client.send(type="utterance.cancel", id="c1")
        err = await client.expect("error")
        assert (err["code"], err["id"]) == (protocol.UNKNOWN_UTTERANCE, "c1")


# ---- bad input: each gets an error event (or a clear close) and everything lives on -----------------

@pytest.mark.parametrize(("payload", "code"), [
    ("{not json", protocol.BAD_JSON),
    ("[1, 2, 3]", protocol.BAD_JSON),
    ('{"type": "text.append", "text": NaN}', protocol.BAD_JSON),
    ('{"type": "speak.louder"}', protocol.UNKNOWN_TYPE),
    ('{"text": "no type"}', protocol.INVALID_MESSAGE),
    ('{"type": "text.append"}', protocol.INVALID_MESSAGE),
    ('{"type": "text.append", "text": 42}', protocol.INVALID_MESSAGE),
    ('{"type": "text.append", "text": "x", "txet": "typo"}', protocol.INVALID_MESSAGE),
    ('{"type": "session.update", "audio": "carrier-pigeon"}', protocol.INVALID_MESSAGE),
    ('{"type": "session.update", "voice": "nobody"}', protocol.INVALID_VOICE),
    ('{"type": "session.update", "language": "klingon"}', protocol.INVALID_VOICE),
    ('{"type": "session.update", "vad": {"aggressiveness": 9}}', protocol.INVALID_MESSAGE),
    ('{"type": "session.update", "vad": {"no_such_knob": 1}}', protocol.INVALID_MESSAGE),
    ('{"type": "webrtc.offer", "sdp": "v=0 garbage"}', protocol.WEBRTC_FAILED),
])
async def test_malformed_messages_get_an_error_event(server: ServerThread, payload: str, code: str) -> None:
    async with session_client(server.ws_url) as (client, _):
        await client.ws.send(payload)
        err = await client.expect("error")
        assert err["code"] == code and err["message"]
        await alive(client, server)


async def test_binary_frame_where_text_is_expected(server: ServerThread) -> None:
    async with session_client(server.ws_url) as (client, _):
        await client.ws.send(b"\x00\x01" * 100)
        err = await client.expect("error")
        assert err["code"] == protocol.BINARY_NOT_ALLOWED
        await alive(client, server)


async def test_oversized_message(server: ServerThread) -> None:
    limit = server.settings.max_message_bytes
    async with session_client(server.ws_url) as (client, _):
        await client.send(type="text.append", text="a" * (limit + 1), id="big")
        err = await client.expect("error")
        assert err["code"] == protocol.MESSAGE_TOO_LARGE and str(limit) in err["message"]
        # over the hard frame limit the connection itself closes (1009); the server goes on
        async with websockets.connect(server.ws_url) as ws:
            await ws.recv()
            await ws.send("x" * (server.settings.max_frame_bytes + 1))
            with pytest.raises(ConnectionClosed) as closed:
                await ws.recv()
            codes = {frame.code for frame in (closed.value.sent, closed.value.rcvd) if frame is not None}
            assert 1009 in codes
        await alive(client, server)


async def test_text_flood_is_bounded_per_utterance(server: ServerThread) -> None:
    limit = server.settings.session.max_utterance_chars
    chunk = "word " * 200  # 1000 characters
    async with session_client(server.ws_url) as (client, _):
        await client.send(type="session.update", audio="none")
        sent = 0
        errors = []
        for _ in range(limit // len(chunk) + 3):
            await client.send(type="text.append", text=chunk)
            sent += len(chunk)
        while len(errors) < 3:
            evt = await client.expect("error", "utterance.started", "audio.first")
            if evt["type"] == "error":
                errors.append(evt)
        assert all(e["code"] == protocol.TEXT_LIMIT for e in errors)
        accepted = server.call(lambda: [u.chars for s in server.server.sessions.values() for u in s.utterances.queue])
        assert max(accepted) <= limit
        await client.send(type="utterance.cancel")
        evt = await client.expect("utterance.interrupted")
        assert len(evt["text_fed"]) == (limit // len(chunk)) * len(chunk)  # whole fragments only
        await alive(client, server)


async def test_too_many_queued_utterances(server: ServerThread) -> None:
    n = server.settings.session.max_queued_utterances
    async with session_client(server.ws_url) as (client, _):
        await client.send(type="session.update", audio="none")
        for i in range(n + 2):
            await client.send(type="text.append", text=f"Sentence {i}. ")
            await client.send(type="text.flush")
        err = await client.expect("error")
        assert err["code"] == protocol.QUEUE_FULL
        await client.send(type="utterance.cancel", all=True)
        await client.expect("utterance.interrupted")
        await alive(client, server)


async def test_max_sessions_refused_with_error_and_close(limited_server: ServerThread) -> None:
    url = f"{limited_server.ws_url}?api_key={API_KEY}"
    limited_server.wait_sessions(0)
    async with session_client(url) as (first, _):
        async with websockets.connect(url) as ws:
            err = json.loads(await ws.recv())
            with pytest.raises(ConnectionClosed) as closed:
                await ws.recv()
        assert err["code"] == protocol.MAX_SESSIONS
        assert closed.value.rcvd is not None and closed.value.rcvd.code == protocol.CLOSE_TRY_AGAIN
        assert "max_sessions" in closed.value.rcvd.reason
        await alive(first, limited_server)
    limited_server.wait_sessions(0)
    async with session_client(url) as (again, _):  # a freed slot is usable again
        await alive(again, limited_server)


async def test_slow_consumer_is_closed_and_server_lives_on(limited_server: ServerThread) -> None:
    url = f"{limited_server.ws_url}?api_key={API_KEY}"
    limited_server.wait_sessions(0)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", limited_server.port))
    metrics = limited_server.server.metrics  # type: ignore[union-attr]
    before = limited_server.call(lambda: metrics.errors_total.get(code=protocol.SLOW_CONSUMER))
    async with websockets.connect(url, sock=sock, max_queue=1) as ws:
        await ws.recv()  # session.created
        await ws.send(json.dumps({"type": "text.append", "text": "A long sentence that makes audio for a "
                                  "good few seconds, long enough to fill every buffer on the way. "}))
        await ws.send(json.dumps({"type": "text.flush"}))
        # do not read: the server's queue for this connection fills up
        for _ in range(300):
            if limited_server.call(lambda: metrics.errors_total.get(code=protocol.SLOW_CONSUMER)) > before:
                break
            await asyncio.sleep(0.05)
        else:
            pytest.fail("the server never gave up on the slow consumer")
        with pytest.raises(ConnectionClosed) as closed:
            while True:
                await asyncio.wait_for(ws.recv(), 15)
        assert closed.value.rcvd is not None and closed.value.rcvd.code == protocol.CLOSE_POLICY
        assert "slow consumer" in closed.value.rcvd.reason
    limited_server.wait_sessions(0)
    async with session_client(url) as (client, _):
        await alive(client, limited_server)


# ---- HTTP routes, API key, CLI ---------------------------------------------------------------------

async def test_healthz_metrics_and_page(server: ServerThread) -> None:
    async with session_client(server.ws_url) as (client, _):
        await client.send(type="session.update", audio="none")
        await client.speak(SHORT)
        status, ctype, body = await asyncio.to_thread(http_get, server.url + "/healthz")
        health = json.loads(body)
        assert status == 200 and ctype.startswith("application/json")
        assert health["ok"] is True and health["model"] == "tiny" and health["sessions"] >= 1
        status, ctype, text = await asyncio.to_thread(http_get, server.url + "/metrics")
    assert status == 200 and ctype.startswith("text/plain")
    for name in ("voicegate_sessions ", "voicegate_utterances_total{ended_by=\"eos\"}",
                 "voicegate_first_audio_latency_seconds_bucket", "voicegate_bargein_latency_seconds_count",
                 "voicegate_frame_jitter_seconds_count", "voicegate_engine_batch_size_bucket"):
        assert name in text, name
    assert re.search(r"^voicegate_first_audio_latency_seconds_count [1-9]", text, re.M)
    status, ctype, page = await asyncio.to_thread(http_get, server.url + "/")
    assert status == 200 and ctype.startswith("text/html") and "<html" in page.lower()
    assert (await asyncio.to_thread(http_get, server.url + "/../pyproject.toml"))[0] == 404
    assert (await asyncio.to_thread(http_get, server.url + "/nope.html"))[0] == 404


async def test_api_key_guards_the_session_endpoint(limited_server: ServerThread) -> None:
    with pytest.raises(InvalidStatus) as refused:
        async with websockets.connect(limited_server.ws_url):
            pass
    assert refused.value.response.status_code == 401
    assert (await asyncio.to_thread(http_get, limited_server.url + "/metrics"))[0] == 401
    assert (await asyncio.to_thread(http_get, limited_server.url + "/healthz"))[0] == 200
    limited_server.wait_sessions(0)
    headers = {"Authorization": f"Bearer {API_KEY}"}
    async with session_client(limited_server.ws_url, additional_headers=headers) as (client, _):
        await alive(client, limited_server)


def test_public_host_without_api_key_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    rc = cli_main(["serve", "--host", "0.0.0.0", "--model", "/nonexistent"])
    err = capsys.readouterr().err
    assert rc == 2 and "0.0.0.0" in err and "--api-key" in err


# ---- shutdown ----------------------------------------------------------------------------------------

async def test_graceful_shutdown_finishes_in_flight_utterances_then_closes(start_server) -> None:  # type: ignore[no-untyped-def]
    srv = start_server(shutdown_grace_s=20.0)
    async with session_client(srv.ws_url) as (client, _):
        await client.send(type="text.append", text="Finishing this sentence before the server stops. ")
        await client.expect("audio.first")  # not flushed: shutdown flushes it, and it ends normally
        stopping = asyncio.create_task(asyncio.to_thread(srv.shutdown))
        done = await client.expect("utterance.done", "utterance.interrupted", timeout=30)
        assert done["type"] == "utterance.done" and done["ended_by"] in ("eos", "cap")
        with pytest.raises(ConnectionClosed) as closed:
            while True:
                await client.next()
        assert closed.value.rcvd is not None and closed.value.rcvd.code == protocol.CLOSE_GOING_AWAY
        await stopping
    with pytest.raises((OSError, InvalidStatus)):
        async with websockets.connect(srv.ws_url, open_timeout=5):
            pass


async def test_shutdown_grace_expiry_interrupts_with_reason_shutdown(start_server) -> None:  # type: ignore[no-untyped-def]
    srv = start_server(shutdown_grace_s=0.2)
    async with session_client(srv.ws_url) as (client, _):
        await client.send(type="text.append", text="This one is far too long to finish within a fifth of a "
                                                     "second, so the server has to cut it short when it stops. ")
        await client.send(type="text.flush")
        await client.expect("audio.first")
        stopping = asyncio.create_task(asyncio.to_thread(srv.shutdown))
        evt = await client.expect("utterance.interrupted", timeout=30)
        assert evt["reason"] == "shutdown" and evt["played_ms"] > 0
        with pytest.raises(ConnectionClosed):
            while True:
                await client.next()
        await stopping


# ---- the documented client -----------------------------------------------------------------------------

def documented_clients() -> list[Path]:
    """Docs that carry the copy-paste client (marked `<!-- client-example -->` before its code block)."""
    root = Path(__file__).resolve().parents[2]
    return [p for p in (root / "docs" / "protocol.md", root / "README.md")
            if p.exists() and "<!-- client-example -->" in p.read_text()]


@pytest.mark.parametrize("doc", documented_clients(), ids=lambda p: p.name)
async def test_documented_client_example_runs(server: ServerThread, doc: Path, tmp_path: Path) -> None:
    block = doc.read_text().split("<!-- client-example -->", 1)[1]
    code = block.split("```python\n", 1)[1].split("```", 1)[0]
    script = tmp_path / "client.py"
    script.write_text(code)
    proc = await asyncio.create_subprocess_exec(sys.executable, str(script), server.ws_url,
                                                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    text = out.decode()
    assert proc.returncode == 0, err.decode()
    assert "'type': 'utterance.done'" in text and "'type': 'audio.first'" in text
    seconds = float(re.search(r"received ([0-9.]+) s of audio", text).group(1))  # type: ignore[union-attr]
    assert seconds > 0


async def test_start_buffer_holds_first_audio_until_ready(start_server) -> None:  # type: ignore[no-untyped-def]
    from agent.settings import SessionSettings

    srv = start_server(session=SessionSettings(start_buffer_ms=60_000))  # longer than the utterance
    async with session_client(srv.ws_url) as (client, _):
        done = await client.speak("Held back until all of it is ready. ")
        assert done["type"] == "utterance.done" and len(client.frames) == done["frames"] > 0
        first = next(e for e in client.events if e["type"] == "audio.first")
        assert first["model_ms"] > 0
