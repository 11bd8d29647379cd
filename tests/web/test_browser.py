"""The browser page end to end: headless chromium, fake microphone, the real server with the tiny model.

Page-side measurements come from the page itself (window.vg): AnalyserNode levels of the received WebRTC
track every 20 ms, getStats() inbound-rtp counters, and the server events as the page received them.
"""

from __future__ import annotations

import re
import subprocess
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from agent.media.audio import read_wav

from .conftest import ARTIFACTS, SPEECH_48K, write_wav

LOUD_DB = -40.0    # the page's "speaking" threshold (app.js LOUD_DBFS)
SILENT_DB = -50.0  # ... and "silent"
STOP_BOUND_MS = 400  # barge-in: last loud agent audio at the page, after the page got user.speech_started


def events(page: Any, type_: str) -> list[dict[str, Any]]:
    return page.evaluate("t => vg.events.filter(e => e.type === t)", type_)


def wait_event(page: Any, type_: str, timeout: float = 20.0) -> dict[str, Any]:
    page.wait_for_function("t => vg.events.some(e => e.type === t)", arg=type_, timeout=timeout * 1000)
    return events(page, type_)[0]


def test_server_and_browser_share_a_loopback_only_namespace(web_server: Any, netns: Any) -> None:
    if not netns.active:
        pytest.fail("browser tests need root and iproute2 for their network namespace (CI has both)", pytrace=False)
    links = subprocess.run(["ip", "-n", netns.name, "-o", "link"], capture_output=True, text=True, check=True)
    assert [line.split(":")[1].strip() for line in links.stdout.splitlines()] == ["lo"]
    assert netns.call(lambda: urllib.request.urlopen(web_server.url + "/healthz", timeout=5).status) == 200
    with pytest.raises(urllib.error.URLError):  # not listening in the host's namespace
        urllib.request.urlopen(web_server.url + "/healthz", timeout=5)


def connect(page: Any, url: str) -> list[str]:
    """Open the page, collect console errors, click Connect; return the (live) list of console errors."""
    errors: list[str] = []
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(url + "/")
    page.get_by_role("button", name="Connect", exact=True).click()
    page.wait_for_function("vg.connected || vg.errors.length", timeout=15000)
    assert page.evaluate("vg.errors") == [], page.evaluate("vg.errors")
    return errors


def test_page_connects_and_plays_typed_text(web_base_server: Any, launch: Any, netns: Any, tmp_path: Path) -> None:
    """On a Base checkpoint with a saved voice: the picker offers it, and typed text plays in that voice."""
    web_server = web_base_server
    page = launch(write_wav(tmp_path / "silence.wav", np.zeros(48000 * 2)))
    errors = connect(page, web_server.url)
    candidates = re.findall(r"a=candidate:\S+ \d+ \w+ \d+ (\S+) ", page.evaluate("vg.offerSdp"))
    assert candidates, page.evaluate("vg.offerSdp")
    if netns.active:  # the browser sees only lo: every ICE candidate is a loopback address
        assert set(candidates) <= {"127.0.0.1", "::1"}, candidates
    created = events(page, "session.created")[0]
    assert page.locator("#voice option").count() == len(created["voices"]) > 0
    assert page.locator("#language option").count() == len(created["languages"]) > 0
    # the saved voice is in the picker, labelled, under "Saved voices", and selected (the session's voice)
    saved = page.locator('#voice optgroup[label="Saved voices"] option')
    assert saved.count() == 1 and saved.first.inner_text() == "alice — cloned, x-vector"
    assert page.locator("#voice").input_value() == "alice" == created["config"]["voice"]
    assert page.locator("#language").input_value() == "english"  # the saved voice's language
    # a Base model takes no style instruction: the field is not offered
    assert page.locator("#instruct").is_disabled() and not page.locator("#instruct").is_visible()
    assert created["session"] in page.locator("#snippet").inner_text()
    assert created["token"] in page.locator("#snippet").inner_text()

    before = page.evaluate("vg.stats()")
    text = page.locator("#text")
    text.click()
    text.press_sequentially("Hello there, this sentence is typed into the browser one key at a time.", delay=15)
    # streamed character by character: one text.append per input event
    assert page.evaluate("vg.appends") == len("Hello there, this sentence is typed into the browser one key at a time.")
    # audio arrives while typing; shoot the page during speech
    page.wait_for_function("vg.firstLoudAt !== null", timeout=15000)
    ARTIFACTS.mkdir(exist_ok=True)
    page.wait_for_timeout(300)
    page.screenshot(path=str(ARTIFACTS / "web_speaking.png"), full_page=True)
    page.keyboard.press("Enter")  # speak: text.flush
    done = wait_event(page, "utterance.done", timeout=30)
    assert done["text_fed"] == "Hello there, this sentence is typed into the browser one key at a time."
    page.wait_for_timeout(300)

    after = page.evaluate("vg.stats()")
    received = after["totalSamplesReceived"] - before["totalSamplesReceived"]
    concealed = after["concealedSamples"] - before["concealedSamples"]
    assert received > 48000 * 0.5, after  # the track kept flowing (silence when idle, speech in between)
    assert concealed < 0.2 * received, after
    levels = np.array(page.evaluate("vg.levels"))
    loud_ms = int((levels[:, 1] > LOUD_DB).sum()) * 20
    assert loud_ms >= 0.25 * done["played_ms"], (loud_ms, done)  # the page heard the speech it was sent

    u = page.evaluate("(() => { const u = vg.utterances[vg.order[0]]; return {page: u.pageFirstMs, server: u.serverFirstMs}; })()")
    assert u["page"] is not None and u["server"] is not None
    assert re.search(r"first audio \d+ ms server / \d+ ms page", page.locator("#utterances").inner_text())
    print(f"\nPAGE connect_ms={page.evaluate('vg.connectMs')} first_audio_after_first_key_ms={u['page']:.0f} "
          f"server_first_audio_ms={u['server']} samples_received={received} concealed={concealed} loud_ms={loud_ms}")
    assert errors == [], errors


def test_mic_speech_barges_in(web_server: Any, launch: Any, netns: Any, tmp_path: Path) -> None:
    speech, rate = read_wav(SPEECH_48K)
    assert rate == 48000
    lead_s = 3.0  # the fake mic starts at getUserMedia (connect): silence, then the speech WAV once
    mic = np.concatenate([np.zeros(int(lead_s * rate)), speech.astype(np.float64).reshape(-1), np.zeros(rate)])
    page = launch(write_wav(tmp_path / "mic.wav", mic))
    page.set_viewport_size({"width": 390, "height": 1400})  # phone width
    errors = connect(page, web_server.url)
    long = ("This is a long reply that keeps the agent talking for a good while, so that the person listening "
            "has plenty of time to interrupt it by simply speaking into the microphone, which is what happens now. ") * 3
    page.locator("#text").fill(long)  # one input event: one text.append
    page.keyboard.press("Enter")
    interrupted = wait_event(page, "utterance.interrupted", timeout=20)
    assert interrupted["reason"] == "barge_in", interrupted
    assert interrupted["spoken_text"] + interrupted["unspoken_text"] == interrupted["text_fed"] == long
    assert interrupted["unspoken_text"]
    started = events(page, "user.speech_started")
    assert started and interrupted["utterance"] in started[0]["interrupted"]
    expect_visible = page.locator("#bargein")
    assert expect_visible.is_visible() and "Barge-in" in expect_visible.inner_text()
    page.wait_for_function("vg.utterances[vg.order[0]].bargeIn && vg.utterances[vg.order[0]].bargeIn.silentAt !== null",
                           timeout=5000)
    page.wait_for_timeout(600)
    page.screenshot(path=str(ARTIFACTS / "web_bargein_phone.png"), full_page=True)

    # page-side stop time: from the page receiving user.speech_started to the last loud 20 ms level tick
    decision = started[0]["at"]
    levels = np.array(page.evaluate("vg.levels"))
    t, agent = levels[:, 0], levels[:, 1]
    assert (agent[t < decision] > LOUD_DB).sum() >= 5  # the agent was audibly speaking before
    loud_after = t[(t >= decision) & (agent > LOUD_DB)]
    stop_ms = float(loud_after.max() - decision) if loud_after.size else 0.0
    assert stop_ms < STOP_BOUND_MS, stop_ms
    tail = agent[(t > decision + STOP_BOUND_MS) & (t < decision + STOP_BOUND_MS + 500)]
    assert tail.size >= 15 and (tail < SILENT_DB).all(), tail  # and it stays silent
    shown = page.evaluate("vg.utterances[vg.order[0]].bargeIn")
    assert "agent silent at the page" in page.locator("#bargein").inner_text()
    metrics = netns.call(lambda: urllib.request.urlopen(web_server.url + "/metrics", timeout=5).read().decode())
    assert re.search(r'voicegate_utterances_total\{ended_by="barge_in"\} [1-9]', metrics)
    stats = page.evaluate("vg.stats()")
    jitter_ms = 1000 * stats["jitterBufferDelay"] / max(1, stats["jitterBufferEmittedCount"])
    mic_onset = shown.get("micOnsetAt")
    print(f"\nPAGE barge-in: stop_after_decision_ms={stop_ms:.0f} shown_ms={shown['silentAt'] - shown['decisionAt']:.0f} "
          f"from_mic_onset_ms={(shown['silentAt'] - mic_onset) if mic_onset else float('nan'):.0f} "
          f"jitter_buffer_ms={jitter_ms:.0f} played_ms={interrupted['played_ms']} spoken={interrupted['spoken_text']!r}")
    assert errors == [], errors
