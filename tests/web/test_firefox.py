"""The page in Firefox: Debian's firefox-esr, headless, driven over WebDriver BiDi (tests/web/bidi.py).

A namespace of its own (with a dead-end default route, see netns.py) and the real server. Firefox's fake microphone is its own
tone (it cannot play a WAV), so barge-in is covered in Chromium; here: connect over WebRTC, stream typed
text character by character, and receive the speech (inbound-rtp samples and the page's level meter).
Headless Firefox starts an AudioContext only with a sound server: a PulseAudio daemon with its null sink
(CI installs pulseaudio; the fixture starts it).
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.agent.conftest import ServerThread

from .bidi import BiDiSession
from .conftest import server_in
from .netns import LoopbackNamespace

FIREFOX_PREFS = {
    "media.navigator.streams.fake": True,  # a fake microphone ...
    "media.navigator.permission.disabled": True,  # ... granted without a prompt
    "media.peerconnection.ice.loopback": True,  # ICE candidates on lo (the namespace has nothing else)
    "media.peerconnection.ice.obfuscate_host_addresses": False,
    "media.autoplay.default": 0,
    "media.autoplay.blocking_policy": 0,
    "app.update.enabled": False,
    "datareporting.policy.dataSubmissionEnabled": False,
    "network.captive-portal-service.enabled": False,
    "browser.shell.checkDefaultBrowser": False,
}
BIDI_PORT = 9222  # inside the test's own network namespace, so always free
TEXT = "Hello from Firefox, typed one key at a time."


@pytest.fixture(scope="module")
def sound_server() -> Iterator[None]:
    """A PulseAudio daemon (null sink) for this module; stopped after it if this fixture started it."""
    if shutil.which("pulseaudio") is None:
        pytest.fail("pulseaudio is not installed (`apt-get install pulseaudio`): headless Firefox needs a "
                    "sound server to run an AudioContext", pytrace=False)
    if subprocess.run(["pactl", "info"], capture_output=True).returncode == 0:
        yield  # someone else's: leave it alone
        return
    subprocess.run(["pulseaudio", "--daemonize=yes", "--exit-idle-time=-1"], capture_output=True, check=True)
    try:
        for _ in range(50):
            if subprocess.run(["pactl", "info"], capture_output=True).returncode == 0:
                break
            time.sleep(0.1)
        else:
            pytest.fail("pulseaudio did not start", pytrace=False)
        yield
    finally:
        subprocess.run(["pulseaudio", "--kill"], capture_output=True)


@pytest.fixture(scope="module")
def firefox_netns() -> Iterator[LoopbackNamespace]:
    with LoopbackNamespace(f"vg-ff-{os.getpid()}", dead_end_route=True) as ns:
        yield ns


@pytest.fixture(scope="module")
def firefox_server(web_engine: Any, firefox_netns: LoopbackNamespace) -> Iterator[ServerThread]:
    """The server of the Chromium tests' engine, listening in Firefox's namespace."""
    srv = server_in(firefox_netns, web_engine)
    yield srv
    srv.stop()


@pytest.fixture
def firefox(firefox_netns: LoopbackNamespace, sound_server: None, tmp_path: Path) -> Iterator[str]:
    """A headless firefox-esr in the namespace; yields its BiDi WebSocket URL."""
    binary = shutil.which("firefox-esr") or shutil.which("firefox")
    if binary is None:
        pytest.fail("firefox is not installed: `apt-get install -y firefox-esr`", pytrace=False)
    profile = tmp_path / "profile"
    profile.mkdir()
    prefs = "".join(f'user_pref("{k}", {str(v).lower() if isinstance(v, bool) else v});\n'
                    for k, v in FIREFOX_PREFS.items())
    (profile / "user.js").write_text(prefs)
    command = [binary, "--headless", "--no-remote", "--profile", str(profile),
               "--remote-debugging-port", str(BIDI_PORT), "about:blank"]
    if firefox_netns.active:
        command = ["ip", "netns", "exec", firefox_netns.name, *command]
    log = (tmp_path / "firefox.log").open("w+")
    proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60
        while "WebDriver BiDi listening" not in (tmp_path / "firefox.log").read_text():
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"firefox did not start: {(tmp_path / 'firefox.log').read_text()[-2000:]}")
            time.sleep(0.2)
        yield f"ws://127.0.0.1:{BIDI_PORT}/session"
    finally:
        proc.kill()
        proc.wait()
        log.close()


async def speak_in_firefox(bidi_url: str, page_url: str) -> dict[str, Any]:
    page = await BiDiSession.open(bidi_url)
    try:
        await page.navigate(page_url + "/")
        await page.evaluate("document.getElementById('connect').click()")
        await page.wait_for("vg.connected || vg.errors.length > 0", timeout=20)
        assert await page.evaluate("vg.errors") == []
        before = await page.evaluate("vg.stats()")
        for char in TEXT:  # one input event per key, as a person types
            await page.evaluate(f"(() => {{ const t = document.getElementById('text'); t.value += {char!r};"
                                " t.dispatchEvent(new InputEvent('input')); return true; })()")
        await page.evaluate("document.getElementById('speak').click()")
        await page.wait_for("vg.events.some(e => e.type === 'utterance.done' || e.type === 'error')", timeout=40)
        await asyncio.sleep(0.3)
        return {
            "before": before,
            "after": await page.evaluate("vg.stats()"),
            "appends": await page.evaluate("vg.appends"),
            "events": await page.evaluate("vg.events.map(e => e.type)"),
            "done": await page.evaluate("vg.events.find(e => e.type === 'utterance.done')"),
            "loud_ms": await page.evaluate("vg.levels.filter(l => l[1] > -40).length * 20"),
            "connect_ms": await page.evaluate("vg.connectMs"),
            "offer": await page.evaluate("vg.offerSdp"),
            "errors": await page.evaluate("vg.errors"),
            "agent": await page.evaluate("navigator.userAgent"),
        }
    finally:
        await page.close()


def test_page_works_in_firefox(firefox_server: ServerThread, firefox_netns: LoopbackNamespace,
                               firefox: str) -> None:
    result = firefox_netns.call(lambda: asyncio.run(speak_in_firefox(firefox, firefox_server.url)))
    assert "Firefox/" in result["agent"]
    assert result["errors"] == [], result["errors"]
    assert result["appends"] == len(TEXT)
    assert "utterance.interrupted" not in result["events"], result["events"]  # its fake-mic tone is no speech
    assert result["done"]["text_fed"] == TEXT
    received = result["after"]["totalSamplesReceived"] - result["before"]["totalSamplesReceived"]
    concealed = result["after"]["concealedSamples"] - result["before"]["concealedSamples"]
    assert received > 48000 * 0.5 and concealed < 0.2 * received, result
    assert result["loud_ms"] >= 0.25 * result["done"]["played_ms"], result  # the page heard the speech
    print(f"\nFIREFOX {result['agent']}: connect_ms={result['connect_ms']} samples_received={received} "
          f"concealed={concealed} loud_ms={result['loud_ms']} played_ms={result['done']['played_ms']}")
