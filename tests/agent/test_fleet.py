"""Replicas behind a proxy (docs/protocol.md, "Replicas"): routable session ids, join_url, refusals that a
proxy can act on, /healthz's replica, the capacity gauge, and draining on SIGTERM."""

from __future__ import annotations

import asyncio
import json
import re
import time
from typing import Any

import pytest
import websockets
from websockets.exceptions import ConnectionClosed

from agent.cli.fleet_options import fleet_settings
from agent.cli.main import build_parser
from agent.server.replica import check_public_url, check_replica_id, default_replica_id, join_base
from agent.session import protocol

from .conftest import ServerThread, http_get, session_client

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
    for flags in (["--replica-id", "Blue_1"], ["--public-url", "ftp://x"]):
        with pytest.raises(SystemExit) as exited:
            build_parser().parse_args(["serve", *flags])
        assert exited.value.code == 2
    assert "DNS label" in capsys.readouterr().err
    args = build_parser().parse_args(["serve", "--replica-id", "blue-1", "--public-url", "https://v.example"])
    assert fleet_settings(args) == {"replica_id": "blue-1", "public_url": "https://v.example"}
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
    assert status == 200 and health["replica"] == "blue-1"
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
