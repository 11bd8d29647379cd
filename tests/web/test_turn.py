"""WebRTC media through a real TURN server: coturn (shared-secret auth, as the Helm chart runs it), the server
as `voicegate serve --ice-server turn:... --turn-secret S --ice-relay-only` and headless Chromium, all in the
loopback-only namespace. The page's selected candidate pair must be a relayed one, its audio must arrive, and
coturn must have allocated for the username minted for that session; a wrong secret fails cleanly."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from agent.cli.ice_options import check_ice_arguments, rtc_settings
from agent.cli.main import build_parser
from agent.settings import ServerSettings
from tests.agent.conftest import ServerThread
from tests.agent.coturn import Coturn

from .conftest import write_wav
from .test_browser import connect, events, wait_event

SECRET = "turn-test-secret"


@pytest.fixture
def coturn(netns: Any, tmp_path: Path) -> Iterator[Coturn]:
    with Coturn(tmp_path, SECRET, netns) as server:
        yield server


def turn_server(engine: Any, netns: Any, coturn: Coturn, secret: str) -> ServerThread:
    args = build_parser().parse_args(["serve", "--ice-server", coturn.url, "--turn-secret", secret,
                                      "--ice-relay-only"])
    check_ice_arguments(args)
    return ServerThread(engine, ServerSettings(port=0), rtc_settings=rtc_settings(args),
                        on_thread_start=netns.enter_this_thread)


def test_page_media_goes_through_turn(web_engine: Any, netns: Any, coturn: Coturn, launch: Any,
                                      tmp_path: Path) -> None:
    srv = turn_server(web_engine, netns, coturn, SECRET)
    try:
        page = launch(write_wav(tmp_path / "silence.wav", np.zeros(48000 * 2)))
        errors = connect(page, srv.url)
        created = events(page, "session.created")[0]
        assert created["ice_transport_policy"] == "relay"
        (ice,) = created["ice_servers"]
        assert ice["urls"] == [coturn.url] and ice["username"].endswith(":" + created["session"])
        assert " typ relay " in page.evaluate("vg.offerSdp")
        pair = page.evaluate("vg.selectedPair()")
        assert pair is not None and pair["local"] == "relay", pair  # the page's end of the pair: coturn's relay
        assert ice["username"] in coturn.allocated_users(), coturn.log_text()[-3000:]

        before = page.evaluate("vg.stats()")
        page.locator("#text").fill("Relayed through the TURN server on loopback.")
        page.keyboard.press("Enter")
        done = wait_event(page, "utterance.done", timeout=30)
        page.wait_for_function("vg.firstLoudAt !== null", timeout=5000)  # the speech was heard
        page.wait_for_timeout(200)
        after = page.evaluate("vg.stats()")
        received = after["totalSamplesReceived"] - before["totalSamplesReceived"]
        assert received > 48000 * 0.5 and done["played_ms"] > 0, (after, done)
        assert after["concealedSamples"] - before["concealedSamples"] < 0.2 * received, after
        levels = np.array(page.evaluate("vg.levels"))
        assert int((levels[:, 1] > -40.0).sum()) * 20 >= 0.25 * done["played_ms"]
        assert page.evaluate("vg.selectedPair()")["local"] == "relay"  # still relayed at the end
        print(f"\nTURN connect_ms={page.evaluate('vg.connectMs')} pair={pair} samples_received={received}")
        assert errors == [], errors
    finally:
        srv.stop()


def test_a_wrong_secret_fails_cleanly(web_engine: Any, netns: Any, coturn: Coturn, launch: Any,
                                      tmp_path: Path) -> None:
    srv = turn_server(web_engine, netns, coturn, "not-the-turn-secret")
    try:
        page = launch(write_wav(tmp_path / "silence.wav", np.zeros(48000 * 2)))
        page.goto(srv.url + "/")
        page.get_by_role("button", name="Connect", exact=True).click()
        page.wait_for_function("vg.connected || vg.errors.length", timeout=15000)
        assert not page.evaluate("vg.connected")
        (error,) = page.evaluate("vg.errors")
        assert error.startswith("connect failed: no TURN relay candidate") and "401" in error, error
        assert page.locator("#status").inner_text() == "error"
        assert page.locator("#connect").is_enabled()  # torn down, ready to try again
        username = events(page, "session.created")[0]["ice_servers"][0]["username"]
        assert username in coturn.refused_users() and username not in coturn.allocated_users()
    finally:
        srv.stop()
