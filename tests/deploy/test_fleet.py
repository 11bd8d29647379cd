"""Three `voicegate serve` replicas (tiny model) behind Debian's nginx with the config the Helm chart renders,
all on loopback, driven by real clients (websockets, the openai SDK, aiohttp): sessions spread over the replicas,
producers join through the proxy by session id, the compatible APIs pass, a draining replica finishes its live
utterance and takes no new sessions, and a killed replica takes down only its own sessions."""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import openai
import pytest
import websockets
from websockets.exceptions import ConnectionClosed, InvalidStatus

from bench.fleet import API_KEY, AUTH, Fleet, get_status, run_fleet
from bench.proxy import measure
from tests.agent.conftest import Client

SENTENCE = "Routing this reply through the proxy to the replica that holds the session. "


@pytest.fixture(scope="module")
def fleet(tiny_checkpoint: Callable[..., Path], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    with run_fleet(tiny_checkpoint("custom_voice"), tmp_path_factory.mktemp("fleet")) as running:
        yield running


def replica_of(session_id: str) -> str:
    return session_id.split(".", 1)[0]


@contextlib.asynccontextmanager
async def connect(url: str, expect_created: bool = True) -> AsyncIterator[tuple[Client, dict[str, Any]]]:
    """A WebSocket with the API key, and its first event (session.created unless `expect_created` is False)."""
    async with websockets.connect(url, additional_headers=AUTH, open_timeout=20) as ws:
        client = Client(ws)
        created = await client.next()
        assert created["type"] == "session.created" or not expect_created, created
        yield client, created


def join_url(fleet: Fleet, created: dict[str, Any], token: str | None = None) -> str:
    """The session's join_url (a path: the server does not know the proxy's origin) on the proxy."""
    if token is None:
        assert created["join_url"].startswith("/v1/session?"), created["join_url"]
        return f"ws://127.0.0.1:{fleet.proxy_port}{created['join_url']}"
    return f"{fleet.ws_url}?session={created['session']}&token={token}"


async def sessions_on(fleet: Fleet, stack: contextlib.AsyncExitStack, wanted: set[str],
                      tries: int = 8) -> dict[str, tuple[Client, dict[str, Any]]]:
    """New sessions through the proxy until one is held on each replica in `wanted` (least_conn spreads them)."""
    held: dict[str, tuple[Client, dict[str, Any]]] = {}
    for _ in range(tries):
        client, created = await stack.enter_async_context(connect(fleet.ws_url))
        held.setdefault(replica_of(created["session"]), (client, created))
        if wanted <= held.keys():
            return held
    raise AssertionError(f"no session on {wanted - held.keys()} after {tries} new sessions")


async def health(fleet: Fleet, rid: str) -> tuple[int, dict[str, Any]]:
    status, body = await asyncio.to_thread(get_status, fleet.replicas[rid].url + "/healthz")
    return status, json.loads(body)


async def closed_code(client: Client, timeout: float = 30.0) -> int | None:
    """Read until the connection closes; its close code (None: closed without a close frame)."""
    with pytest.raises(ConnectionClosed) as closed:
        async with asyncio.timeout(timeout):
            while True:
                await client.ws.recv()
    return closed.value.rcvd.code if closed.value.rcvd is not None else None


async def test_sessions_spread_over_replicas_and_producers_join_by_session_id(fleet: Fleet) -> None:
    async with contextlib.AsyncExitStack() as stack:
        owners = [await stack.enter_async_context(connect(fleet.ws_url)) for _ in range(6)]
        placed = Counter(replica_of(created["session"]) for _, created in owners)
        # least_conn: every open session is an active upstream connection, so six go two to each replica
        assert placed == {"voicegate-0": 2, "voicegate-1": 2, "voicegate-2": 2}
        for _, created in owners:
            assert created["replica"] == replica_of(created["session"])
        for rid in fleet.replicas:
            assert (await health(fleet, rid))[1]["sessions"] == 2
        # One producer per replica joins through the proxy and speaks into its session: the owner hears it.
        by_replica = {replica_of(created["session"]): (owner, created) for owner, created in owners}
        for owner, created in by_replica.values():
            async with connect(join_url(fleet, created)) as (producer, joined):
                assert joined["session"] == created["session"] and joined["role"] == "producer"
                await producer.send(type="text.append", text="Hello from the producer. ")
                await producer.send(type="text.flush")
                await owner.expect("audio.first", timeout=30)
                done = await owner.expect("utterance.done", timeout=60)
                assert done["type"] == "utterance.done" and owner.frames
        # The session's own replica answers a wrong token and an unknown id.
        _, created = by_replica["voicegate-1"]
        async with websockets.connect(join_url(fleet, created, token="wrong"), additional_headers=AUTH) as ws:
            assert json.loads(await ws.recv())["code"] == "bad_token"
            assert await closed_code(Client(ws)) == 4403
        unknown = f"{fleet.ws_url}?session=voicegate-2.sess_0123456789abcdef&token=x"
        async with websockets.connect(unknown, additional_headers=AUTH) as ws:
            assert json.loads(await ws.recv())["code"] == "unknown_session"
            assert await closed_code(Client(ws)) == 4404


async def test_openai_and_elevenlabs_requests_pass_through_the_proxy(fleet: Fleet) -> None:
    client = openai.OpenAI(base_url=fleet.url + "/v1", api_key=API_KEY, max_retries=0, timeout=60)

    def openai_speech() -> tuple[bytes, int]:
        whole = client.audio.speech.create(model="tiny", voice="vivian", input="Hello.", response_format="pcm")
        with client.audio.speech.with_streaming_response.create(
                model="tiny", voice="vivian", input="Hello again.", response_format="pcm") as response:
            chunks = list(response.iter_bytes())
        return whole.content, len(chunks)

    audio, chunks = await asyncio.to_thread(openai_speech)
    assert len(audio) > 0 and len(audio) % 2 == 0 and chunks >= 1
    async with aiohttp.ClientSession(fleet.url, headers={"xi-api-key": API_KEY},
                                     timeout=aiohttp.ClientTimeout(total=60)) as http:
        async with http.get("/v1/voices") as voices:
            assert voices.status == 200 and (await voices.json())["voices"]
        async with http.post("/v1/text-to-speech/vivian/stream?output_format=pcm_24000",
                             json={"text": "Streaming through nginx."}) as response:
            assert response.status == 200
            body = b"".join([chunk async for chunk in response.content.iter_any()])
        assert len(body) > 0
    url = fleet.ws_url.replace("/v1/session", "/v1/text-to-speech/vivian/stream-input?model_id=any")
    async with websockets.connect(url, additional_headers={"xi-api-key": API_KEY}) as ws:
        await ws.send(json.dumps({"text": " "}))
        await ws.send(json.dumps({"text": "Over the WebSocket too. "}))
        await ws.send(json.dumps({"text": ""}))
        messages = []
        async with asyncio.timeout(60):
            while not messages or messages[-1].get("isFinal") is not True:
                messages.append(json.loads(await ws.recv()))
    assert any(m.get("audio") for m in messages)


async def test_the_proxy_adds_under_2_ms_to_first_audio(fleet: Fleet) -> None:
    """bench/proxy.py's measure, small: sessions alternately direct to a replica and through nginx; what the
    proxy adds to first audio on the wire (the model's time, noisy on a busy CPU, is taken out)."""
    direct = f"ws://127.0.0.1:{fleet.replicas['voicegate-0'].port}/v1/session"
    result = await measure(direct, fleet.ws_url, n=12, text="Hello!", warmup=1)
    transit = result["transit_ms"]
    # The least disturbed sample of each path: on a 2-core machine shared with other jobs, single samples
    # (and medians of a dozen) swing by milliseconds either way; bench/proxy.py's 40 pairs give the p50.
    assert transit["proxy"]["min"] - transit["direct"]["min"] < 2.0, result


async def test_draining_replica_finishes_its_utterance_and_takes_no_new_sessions(fleet: Fleet) -> None:
    draining = fleet.replicas["voicegate-2"]
    async with contextlib.AsyncExitStack() as stack:
        held = await sessions_on(fleet, stack, {"voicegate-2"})
        owner, created = held["voicegate-2"]
        # The LLM is still streaming this reply (no flush yet), so the utterance stays live however long the
        # checks below take on a busy machine; the producer that joins through the proxy finishes it.
        await owner.send(type="text.append", text=SENTENCE)
        await owner.expect("audio.first", timeout=30)
        draining.signal(signal.SIGTERM)
        async with asyncio.timeout(10):
            while (status := await health(fleet, "voicegate-2"))[0] != 503:
                await asyncio.sleep(0.05)
        assert status[1]["status"] == "draining", status
        # ... while the chart's liveness probe still passes (a draining replica must not be restarted)
        assert (await asyncio.to_thread(get_status, draining.url + "/livez"))[0] == 200
        # It refuses new sessions and API requests itself.
        with pytest.raises(InvalidStatus) as refused:
            async with connect(f"ws://127.0.0.1:{draining.port}/v1/session", expect_created=False):
                pass
        assert refused.value.response.status_code == 503
        direct = openai.OpenAI(base_url=draining.url + "/v1", api_key=API_KEY, max_retries=0, timeout=30)
        with pytest.raises(openai.APIStatusError) as api_refused:
            await asyncio.to_thread(direct.audio.speech.create, model="tiny", voice="vivian", input="No.",
                                    response_format="pcm")
        assert api_refused.value.status_code == 503
        # Through the proxy an API request refused with 503 goes on to another replica.
        proxied = openai.OpenAI(base_url=fleet.url + "/v1", api_key=API_KEY, max_retries=0, timeout=30)
        for _ in range(3):
            speech = await asyncio.to_thread(proxied.audio.speech.create, model="tiny", voice="vivian",
                                             input="Yes.", response_format="pcm")
            assert len(speech.content) > 0
        # Through the proxy a new session refused with 503 goes on to another replica too, even before the
        # replica leaves the ready set ...
        for _ in range(6):
            _, other = await stack.enter_async_context(connect(fleet.ws_url))
            assert replica_of(other["session"]) != "voicegate-2"
        # ... and out of it (Kubernetes: the ready service; here the chart's staticNotReady) it gets none,
        # while producers still join its live session by id.
        await asyncio.to_thread(fleet.set_not_ready, ["voicegate-2"])
        for _ in range(4):
            _, other = await stack.enter_async_context(connect(fleet.ws_url))
            assert replica_of(other["session"]) != "voicegate-2"
        async with connect(join_url(fleet, created)) as (producer, joined):
            assert joined["role"] == "producer" and joined["session"] == created["session"]
            await producer.send(type="text.append", text="And it ends here. ")
            await producer.send(type="text.flush")
            done = await owner.expect("utterance.done", "utterance.interrupted", timeout=60)
            assert done["type"] == "utterance.done", done  # finished, not cut
            assert done["text_fed"] == SENTENCE + "And it ends here. "
        assert await closed_code(owner) == 1012  # service restart: reconnect
    assert draining.proc is not None and await asyncio.to_thread(draining.proc.wait, 30) == 0


async def test_killed_replica_takes_down_only_its_own_sessions(fleet: Fleet) -> None:
    victim = fleet.replicas["voicegate-1"]
    async with contextlib.AsyncExitStack() as stack:
        held = await sessions_on(fleet, stack, {"voicegate-0", "voicegate-1"})
        for client, _ in (held["voicegate-0"], held["voicegate-1"]):
            await client.send(type="text.append", text=SENTENCE)
            await client.send(type="text.flush")
        for client, _ in (held["voicegate-0"], held["voicegate-1"]):
            await client.expect("audio.first", timeout=30)
        victim.signal(signal.SIGKILL)
        lost, lost_created = held["voicegate-1"]
        assert await closed_code(lost, timeout=15) is None  # 1006: nginx drops it with its upstream
        survivor, _ = held["voicegate-0"]
        done = await survivor.expect("utterance.done", "utterance.interrupted", timeout=60)
        assert done["type"] == "utterance.done", done
        # New sessions still open (nginx skips the dead replica); rejoining the lost session fails clearly.
        for _ in range(2):
            async with connect(fleet.ws_url) as (_, other):
                assert replica_of(other["session"]) != "voicegate-1"
        with pytest.raises(InvalidStatus) as refused:
            async with websockets.connect(join_url(fleet, lost_created), additional_headers=AUTH):
                pass
        assert refused.value.response.status_code == 502  # nginx: its replica is gone
        # The survivor's session went on throughout.
        await survivor.send(type="text.append", text="Still here. ")
        await survivor.send(type="text.flush")
        assert (await survivor.expect("utterance.done", timeout=60))["type"] == "utterance.done"


@pytest.mark.slow  # a replica restart: ~20 s on a busy 2-core machine (the default run checks 4404 on a live one)
async def test_restarted_replica_answers_4404_for_the_sessions_it_lost(fleet: Fleet) -> None:
    victim = fleet.replicas["voicegate-0"]
    async with contextlib.AsyncExitStack() as stack:
        _, lost = (await sessions_on(fleet, stack, {"voicegate-0"}))["voicegate-0"]
        victim.signal(signal.SIGKILL)
        await asyncio.to_thread(victim.proc.wait, 10)  # type: ignore[union-attr]
        # It comes back under its name and port, as a StatefulSet pod does, without the sessions it held.
        await asyncio.to_thread(victim.start)
        await asyncio.to_thread(victim.wait_ready)
        async with websockets.connect(join_url(fleet, lost), additional_headers=AUTH) as ws:
            assert json.loads(await ws.recv())["code"] == "unknown_session"
            assert await closed_code(Client(ws)) == 4404
        async with connect(fleet.ws_url) as (_, created):
            assert created["replica"] in fleet.replicas
