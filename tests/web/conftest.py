"""Browser tests: the real server (tiny model) on 127.0.0.1 and Debian's chromium driven by Playwright.

No browser download: Playwright launches `/usr/bin/chromium` (or $VOICEGATE_CHROMIUM). A missing chromium or
Playwright FAILS the tests (CI installs both: `apt-get install -y chromium`, `pip install playwright`).
"""

from __future__ import annotations

import os
import shutil
import wave
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.agent.conftest import ServerThread, loopback_rtc, serve_checkpoint

from .netns import LoopbackNamespace

REPO = Path(__file__).resolve().parents[2]
ARTIFACTS = REPO / "artifacts"
SPEECH_48K = REPO / "tests" / "fixtures" / "speech" / "speech_48k.wav"

CHROMIUM_FLAGS = [
    "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--use-fake-ui-for-media-stream",
    "--use-fake-device-for-media-stream", "--autoplay-policy=no-user-gesture-required",
    "--allow-loopback-in-peer-connection",
]


# No sound server for Chromium: it then renders audio on its own clock. Through PulseAudio's null sink
# (which the Firefox test starts) the page's AnalyserNode lags the network by about a second.
CHROMIUM_ENV = {**os.environ, "PULSE_SERVER": "unix:/nonexistent/voicegate-no-sound-server"}


def chromium_path() -> str:
    path = os.environ.get("VOICEGATE_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
    if not Path(path).exists():
        pytest.fail("chromium is not installed: `apt-get update && apt-get install -y chromium` "
                    "(Debian's package; the browser tests need it and must not be skipped)", pytrace=False)
    return path


@pytest.fixture(scope="session")
def web_engine(tiny_checkpoint: Callable[..., Path]) -> Iterator[Any]:
    from tts_engine import Engine, EngineSettings, load_model

    eng = Engine(load_model(tiny_checkpoint("custom_voice"), device="cpu"), EngineSettings(max_streams=4))
    yield eng
    eng.close()


@pytest.fixture(scope="session")
def netns() -> Iterator[LoopbackNamespace]:
    """The loopback-only network namespace that the server, the browser and other peers share."""
    with LoopbackNamespace(f"vg-web-{os.getpid()}") as ns:
        yield ns


def server_in(ns: LoopbackNamespace, engine: Any, stt: Any = None) -> ServerThread:
    """A server on `engine` whose sockets (HTTP, WebSocket, WebRTC) live in the namespace `ns`."""
    from agent.settings import ServerSettings

    return ServerThread(engine, ServerSettings(port=0), rtc_settings=loopback_rtc(),
                        on_thread_start=ns.enter_this_thread, stt=stt)


@pytest.fixture(scope="session")
def web_server(web_engine: Any, netns: LoopbackNamespace) -> Iterator[ServerThread]:
    srv = server_in(netns, web_engine)
    yield srv
    srv.stop()


@pytest.fixture(scope="session")
def stt_web_server(web_engine: Any, netns: LoopbackNamespace) -> Iterator[ServerThread]:
    """As `voicegate serve --stt faster-whisper:DIR`: the real recognizer, Whisper tiny.en (the pinned test model)."""
    from agent.speech_in.faster_whisper import FasterWhisperRecognizer, FasterWhisperSettings
    from agent.speech_in.service import RecognizerService
    from tests.agent.speech_helpers import test_model_dir

    recognizer = FasterWhisperRecognizer(FasterWhisperSettings(model=str(test_model_dir()), cpu_threads=2))
    srv = server_in(netns, web_engine, stt=RecognizerService(recognizer))
    yield srv
    srv.stop()  # closes the recognizer service too


@pytest.fixture(scope="session")
def web_base_server(tiny_checkpoint: Callable[..., Path], tmp_path_factory: pytest.TempPathFactory,
                    netns: LoopbackNamespace) -> Iterator[ServerThread]:
    """A tiny Base checkpoint with one saved (cloned) voice, "alice", made from espeak-ng speech."""
    from agent.voices.store import VoiceRegistry
    from tests.agent.voice_helpers import espeak_wav
    from tts_engine import load_model

    checkpoint = tiny_checkpoint("base")
    voices = tmp_path_factory.mktemp("web-voices")
    VoiceRegistry(voices).add_cloned("alice", load_model(checkpoint, device="cpu"),
                                     espeak_wav(voices.parent / "alice-ref.wav"), language="english")
    with serve_checkpoint(checkpoint, "tiny-base", voices_dir=voices, max_streams=4, rtc_settings=loopback_rtc(),
                          on_thread_start=netns.enter_this_thread) as srv:
        yield srv


def write_wav(path: Path, samples: np.ndarray, rate: int = 48000) -> Path:
    pcm = (np.clip(samples, -1, 1) * 32767).astype("<i2")
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(pcm.tobytes())
    return path


@pytest.fixture(scope="session")
def playwright_driver() -> Iterator[Any]:
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.fail("playwright is not installed: `pip install playwright` (never `playwright install`)", pytrace=False)
    with sync_playwright() as p:
        yield p


@pytest.fixture
def launch(playwright_driver: Any, netns: LoopbackNamespace, tmp_path: Path) -> Iterator[Callable[[Path], Any]]:
    """launch(mic_wav) -> a Page in a fresh headless chromium whose microphone plays mic_wav once."""
    browsers: list[Any] = []
    executable = netns.wrap_executable(chromium_path(), tmp_path)

    def start(mic_wav: Path) -> Any:
        browser = playwright_driver.chromium.launch(
            executable_path=executable, headless=True, env=CHROMIUM_ENV,
            args=[*CHROMIUM_FLAGS, f"--use-file-for-fake-audio-capture={mic_wav}%noloop"])
        browsers.append(browser)
        return browser.new_page(viewport={"width": 900, "height": 1100})

    yield start
    for b in browsers:
        b.close()
