"""ICE servers and TURN credentials (agent/media/ice.py, agent/cli/ice_options.py): the shared-secret scheme
against an independent HMAC and against a real coturn, session.created's `ice_servers`, and the flags."""

from __future__ import annotations

import asyncio
import re
import time
from pathlib import Path
from typing import Any

import pytest
from aioice import stun, turn

from agent.cli.ice_options import check_ice_arguments, rtc_settings
from agent.cli.main import build_parser
from agent.media.ice import page_ice_servers, session_ice_servers, turn_rest_credentials
from agent.media.rtc import RtcPeer, RtcSettings
from agent.media.vad import VadSettings
from agent.settings import ServerSettings
from bench.rtc_client import RtcClient
from tests.agent.conftest import ServerThread, http_get, session_client
from tests.agent.coturn import Coturn

SECRET = "north-sea-secret"


def test_credentials_match_an_independent_hmac() -> None:
    # printf '%s' "1700003600:vg-0.sess_0123456789abcdef" | openssl dgst -sha1 -hmac north-sea-secret -binary | base64
    username, credential = turn_rest_credentials(SECRET, "vg-0.sess_0123456789abcdef", 3600, now=1700000000.7)
    assert username == "1700003600:vg-0.sess_0123456789abcdef"
    assert credential == "2yTB3+yz89T3eIzFiBt4aukQAAA="
    # printf '%s' "12334939:mbzrxpgjys" | openssl dgst -sha1 -hmac north -binary | base64
    assert turn_rest_credentials("north", "mbzrxpgjys", 0, now=12334939) == ("12334939:mbzrxpgjys",
                                                                              "Iq7YXkRon8YXJfdN1Ke9EZOw1UE=")


def test_only_turn_entries_without_credentials_get_minted_ones() -> None:
    servers = [{"urls": "stun:stun.example.org:3478"}, {"urls": "turn:turn.example.org:3478?transport=udp"},
               {"url": ["turns:turn.example.org:5349?transport=tcp"]},
               {"urls": "turn:fixed.example.org", "username": "u", "credential": "p"}]
    out = session_ice_servers(servers, SECRET, 600, "s1", now=1000)
    minted = turn_rest_credentials(SECRET, "s1", 600, now=1000)
    assert out == [{"urls": ["stun:stun.example.org:3478"]},
                   {"urls": ["turn:turn.example.org:3478?transport=udp"], "username": minted[0],
                    "credential": minted[1]},
                   {"urls": ["turns:turn.example.org:5349?transport=tcp"], "username": minted[0],
                    "credential": minted[1]},
                   {"urls": ["turn:fixed.example.org"], "username": "u", "credential": "p"}]
    assert session_ice_servers(servers[:2], None, 600, "s1") == [{"urls": [s["urls"]]} for s in servers[:2]]
    assert page_ice_servers(None, "s1") == {"ice_servers": [], "ice_transport_policy": "all"}


def test_the_secret_stays_out_of_reprs() -> None:
    settings = RtcSettings(ice_servers=[{"urls": "turn:t.example:3478"}], turn_secret=SECRET)
    assert SECRET not in repr(settings)
    server_side = settings.for_session("s1")
    assert server_side.turn_secret is None and SECRET not in repr(server_side)
    (entry,) = server_side.rtc_ice_servers()
    assert entry.username.endswith(":s1") and entry.credential == turn_rest_credentials(
        SECRET, "s1", settings.turn_ttl_s, now=int(entry.username.split(":")[0]) - settings.turn_ttl_s)[1]


# ---- a real coturn -------------------------------------------------------------------------------------------

async def allocate(coturn: Coturn, username: str, credential: str) -> tuple[str, int]:
    transport, _ = await turn.create_turn_endpoint(asyncio.DatagramProtocol, server_addr=("127.0.0.1", coturn.port),
                                                   username=username, password=credential)
    try:
        return transport.get_extra_info("sockname")  # type: ignore[no-any-return]
    finally:
        transport.close()


async def test_coturn_accepts_minted_credentials_and_refuses_others(tmp_path: Path) -> None:
    with Coturn(tmp_path, SECRET) as coturn:
        username, credential = turn_rest_credentials(SECRET, "sess_ok", 600)
        host, port = await allocate(coturn, username, credential)
        assert host == "127.0.0.1" and port > 0  # a relayed address
        for bad in (turn_rest_credentials("not-the-secret", "sess_bad", 600),
                    turn_rest_credentials(SECRET, "sess_expired", -60)):  # expired a minute ago
            with pytest.raises(stun.TransactionFailed) as failed:
                await allocate(coturn, *bad)
            assert failed.value.response.attributes["ERROR-CODE"][0] == 401
        assert coturn.allocated_users() == [username]


# ---- the server ----------------------------------------------------------------------------------------------

async def test_session_created_carries_this_sessions_credentials(engine: Any) -> None:
    rtc = RtcSettings(ice_servers=[{"urls": "stun:127.0.0.1:3478"}, {"urls": "turn:127.0.0.1:3478?transport=udp"}],
                      turn_secret=SECRET, turn_ttl_s=600, relay_only=True, host_addresses=["127.0.0.1"])
    srv = ServerThread(engine, ServerSettings(port=0), rtc_settings=rtc)
    try:
        async with session_client(srv.ws_url) as (_, first), session_client(srv.ws_url) as (_, second):
            assert first["ice_transport_policy"] == "relay"
            stun_entry, turn_entry = first["ice_servers"]
            assert stun_entry == {"urls": ["stun:127.0.0.1:3478"]}
            expiry, name = turn_entry["username"].split(":", 1)
            assert name == first["session"] and abs(int(expiry) - (time.time() + 600)) < 30
            assert turn_entry["credential"] == turn_rest_credentials(SECRET, name, 0, now=int(expiry))[1]
            assert second["ice_servers"][1]["username"].endswith(":" + second["session"])  # per session
            assert SECRET not in str(first) + str(second)
            status, _, health = await asyncio.to_thread(http_get, srv.url + "/healthz")
            assert status == 200 and SECRET not in health
    finally:
        srv.stop()


async def test_default_server_sends_no_ice_servers(server: ServerThread) -> None:
    async with session_client(server.ws_url) as (_, created):
        assert (created["ice_servers"], created["ice_transport_policy"]) == ([], "all")


# ---- the flags -----------------------------------------------------------------------------------------------

def serve_args(*extra: str) -> Any:
    return build_parser().parse_args(["serve", *extra])


def test_flags_build_the_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VOICEGATE_TURN_SECRET", SECRET)
    args = serve_args("--ice-server", "stun:s.example:3478", "--ice-server", "turn:t.example:3478",
                      "--ice-relay-only", "--turn-ttl", "900")
    check_ice_arguments(args)
    settings = rtc_settings(args)
    assert (settings.turn_secret, settings.turn_ttl_s, settings.relay_only) == (SECRET, 900, True)
    fixed = rtc_settings(serve_args("--ice-server", "stun:s.example", "--ice-server", "turns:t.example?transport=tcp",
                                    "--ice-username", "u", "--ice-credential", "p"))
    assert fixed.ice_servers == [{"urls": "stun:s.example"},
                                 {"urls": "turns:t.example?transport=tcp", "username": "u", "credential": "p"}]
    assert rtc_settings(serve_args()) is None


@pytest.mark.parametrize("argv, message", [
    (["--turn-secret", "s"], "need a turn:"),
    (["--ice-server", "stun:s.example", "--ice-relay-only"], "need a turn:"),
    (["--ice-server", "turn:t.example", "--turn-secret", "s", "--ice-username", "u", "--ice-credential", "p"],
     "exclude each other"),
    (["--ice-server", "turn:t.example", "--ice-username", "u"], "go together"),
    (["--ice-server", "turn:t.example", "--turn-secret", "s", "--turn-ttl", "5"], "at least 60"),
])
def test_bad_flag_combinations_are_usage_errors(argv: list[str], message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        check_ice_arguments(serve_args(*argv))


async def test_the_servers_own_peer_gets_a_relay_candidate(tmp_path: Path) -> None:
    with Coturn(tmp_path, SECRET) as coturn:
        settings = RtcSettings(ice_servers=[{"urls": coturn.url}], turn_secret=SECRET, host_addresses=["127.0.0.1"])
        peer = RtcPeer(settings.for_session("sess_server"), VadSettings(), lambda e, t, onset_t: None)
        client = RtcClient()
        try:
            answer = await peer.answer(await client.offer())
            assert any(" typ relay " in line for line in answer.splitlines() if line.startswith("a=candidate"))
        finally:
            await client.close()
            await peer.close()
        (username,) = coturn.allocated_users()
        assert username.endswith(":sess_server")
