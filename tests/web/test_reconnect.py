"""The page reconnects on its own when its replica drains: two replicas behind the chart's nginx config, all
in the loopback-only namespace with headless Chromium. The replica holding the page's session is drained in
process (what SIGTERM does): session.closing {reconnect: true}, close 1012; the page opens a new session
through the proxy (it lands on the other replica), renegotiates WebRTC, keeps the chosen voice and the LLM
bridge's conversation, and the next answer is heard."""

from __future__ import annotations

import asyncio
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from agent.settings import ServerSettings
from bench.fleet import get_status, loopback_values, nginx_command, nginx_conf, write_nginx_main
from tests.agent.conftest import ServerThread, loopback_rtc
from tests.agent.coturn import free_port

from .chat_server import ChatServer
from .conftest import write_wav
from .test_browser import connect, events, wait_event
from .test_llm_bridge import ask, enable_bridge

FIRST = ["Paris", " is", " the", " capital", " of", " France", "."]
SECOND = ["Rome", ", ", "of", " course", "."]
REPLICAS = ("voicegate-0", "voicegate-1")


class Proxy:
    """nginx with the chart's config in front of `replicas` (id -> port), inside the namespace."""

    def __init__(self, netns: Any, replicas: dict[str, int], directory: Path) -> None:
        in_ns = netns.active
        self.port = netns.call(free_port) if in_ns else free_port()
        main = write_nginx_main(directory, nginx_conf(loopback_values(replicas, self.port)))
        command = nginx_command(main)
        if in_ns:
            command = ["ip", "netns", "exec", netns.name, *command]
        self.proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)

        def probe() -> int:
            return get_status(self.url + "/nginx-healthz", timeout=1)[0]

        deadline = time.monotonic() + 10
        while True:
            try:
                if (netns.call(probe) if in_ns else probe()) == 200:
                    break
            except OSError:
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"nginx did not start: {(directory / 'logs' / 'error.log').read_text()[-2000:]}")
            time.sleep(0.05)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


@pytest.fixture
def fleet(web_engine: Any, netns: Any, tmp_path: Path) -> Iterator[tuple[dict[str, ServerThread], Proxy]]:
    servers: dict[str, ServerThread] = {}
    proxy = None
    try:
        for rid in REPLICAS:
            servers[rid] = ServerThread(web_engine, ServerSettings(port=0, replica_id=rid, drain_grace_s=5.0),
                                        rtc_settings=loopback_rtc(), on_thread_start=netns.enter_this_thread)
        proxy = Proxy(netns, {rid: srv.port for rid, srv in servers.items()}, tmp_path / "nginx")
        yield servers, proxy
    finally:
        if proxy is not None:
            proxy.stop()
        for srv in servers.values():
            srv.stop()


@pytest.fixture
def chat(netns: Any) -> Iterator[ChatServer]:
    server = ChatServer([FIRST, SECOND], on_thread_start=netns.enter_this_thread)
    yield server
    server.close()


def last_voice(page: Any) -> str | None:
    updated = events(page, "session.updated")
    return updated[-1]["config"]["voice"] if updated else None


def test_page_reconnects_after_a_drain_with_its_voice_and_chat(fleet: Any, chat: ChatServer, launch: Any,
                                                                tmp_path: Path) -> None:
    servers, proxy = fleet
    page = launch(write_wav(tmp_path / "silence.wav", np.zeros(48000 * 2)))
    errors = connect(page, proxy.url)
    first = events(page, "session.created")[0]
    home = first["replica"]
    assert home in REPLICAS
    voices = page.evaluate("[...document.querySelectorAll('#voice option')].map(o => o.value)")
    chosen = next(v for v in voices if v != first["config"]["voice"])
    page.select_option("#voice", chosen)
    page.wait_for_function("v => vg.events.some(e => e.type === 'session.updated' && e.config.voice === v)",
                           arg=chosen, timeout=10000)
    enable_bridge(page, chat.url)
    ask(page, "What is the capital of France?")
    assert wait_event(page, "utterance.done", timeout=30)["text_fed"] == "".join(FIRST)

    # SIGTERM's drain, in process: the session is quiet, so it closes at once (session.closing, then 1012)
    drain = asyncio.run_coroutine_threadsafe(servers[home].server.drain(), servers[home].loop)
    page.wait_for_function("vg.reconnects === 1 && vg.connected", timeout=20000)
    drain.result(timeout=10)
    closing = events(page, "session.closing")
    assert [(c["reason"], c["reconnect"]) for c in closing] == [("server_restart", True)]
    second = events(page, "session.created")[1]
    assert second["replica"] != home and second["session"] != first["session"]  # the other replica
    assert page.evaluate("vg.errors") == [], page.evaluate("vg.errors")
    assert page.locator("#status").inner_text() == "connected"
    # the new session speaks in the chosen voice
    page.wait_for_function("v => vg.events.filter(e => e.type === 'session.updated').at(-1)?.config.voice === v",
                           arg=chosen, timeout=10000)
    assert page.locator("#voice").input_value() == chosen

    # the conversation goes on with its context, heard over the new WebRTC peer
    before = page.evaluate("vg.stats()")
    loud_before = int((np.array(page.evaluate("vg.levels"))[:, 1] > -40.0).sum())
    ask(page, "And of Italy?")
    page.wait_for_function("vg.events.filter(e => e.type === 'utterance.done').length >= 2", timeout=30000)
    done = events(page, "utterance.done")[-1]
    assert done["text_fed"] == "".join(SECOND)
    assert [(m["role"], m["content"]) for m in chat.requests[1]["messages"][-3:]] == [
        ("user", "What is the capital of France?"), ("assistant", "Paris is the capital of France."),
        ("user", "And of Italy?")]
    page.wait_for_timeout(300)
    after = page.evaluate("vg.stats()")
    assert after["totalSamplesReceived"] > 48000 * 0.3, after  # the new peer's inbound track (fresh counters)
    loud_after = int((np.array(page.evaluate("vg.levels"))[:, 1] > -40.0).sum())
    assert (loud_after - loud_before) * 20 >= 0.25 * done["played_ms"], (loud_before, loud_after, done, before)
    assert errors == [], errors
