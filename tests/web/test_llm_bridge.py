"""The page's optional LLM bridge: a question goes to an OpenAI-compatible endpoint and the streamed reply
is spoken as it arrives; the conversation keeps what the listener heard; failures are shown on the page.

The endpoint is tests/web/chat_server.py (real HTTP + server-sent events, scripted replies) in the same
loopback-only namespace as the voicegate server and Chromium.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from .chat_server import ChatServer
from .conftest import ARTIFACTS, write_wav
from .test_browser import connect, events, wait_event

FIRST = ["Paris", " is", " the", " capital", " of", " France", "."]
LONG = [f" word{i}" for i in range(60)]  # a long answer, cancelled while it is being spoken
THIRD = ["Sure", ", ", "bye", "."]


@pytest.fixture
def chat(netns: Any) -> Iterator[ChatServer]:
    server = ChatServer([FIRST, ["It", " goes", " on", " and", " on:", *LONG], THIRD],
                        on_thread_start=netns.enter_this_thread)
    yield server
    server.close()


def enable_bridge(page: Any, url: str, model: str = "test-model", key: str = "") -> None:
    page.locator("#llm-on").check()
    page.locator("#llm-url").fill(url)
    page.locator("#llm-model").fill(model)
    page.locator("#llm-key").fill(key)


def ask(page: Any, question: str) -> None:
    text = page.locator("#text")
    text.fill(question)
    text.press("Enter")


def test_llm_reply_is_spoken_and_the_context_keeps_what_was_heard(web_server: Any, launch: Any, chat: ChatServer,
                                                                  tmp_path: Path) -> None:
    page = launch(write_wav(tmp_path / "silence.wav", np.zeros(48000 * 2)))
    errors = connect(page, web_server.url)
    assert page.locator("#llm-on").is_checked() is False  # off by default
    enable_bridge(page, chat.url, key="sk-local")

    ask(page, "What is the capital of France?")
    done = wait_event(page, "utterance.done", timeout=30)
    assert done["text_fed"] == "".join(FIRST)
    assert page.evaluate("vg.appends") == len(FIRST)  # one text.append per streamed delta, nothing typed
    first = chat.requests[0]
    assert first["model"] == "test-model" and first["stream"] is True and first["auth"] == "Bearer sk-local"
    assert [m["role"] for m in first["messages"]] == ["system", "user"]
    assert first["messages"][1]["content"] == "What is the capital of France?"

    ask(page, "Tell me more.")
    page.wait_for_function("vg.events.filter(e => e.type === 'audio.first').length >= 2", timeout=30000)
    page.wait_for_timeout(400)
    page.keyboard.press("Escape")  # stop: cancels the utterance and the LLM reply
    cut = wait_event(page, "utterance.interrupted", timeout=10)
    assert cut["reason"] == "cancel"
    assert cut["spoken_text"] + cut["unspoken_text"] == cut["text_fed"]
    assert cut["text_fed"].startswith("It goes on and on:") and len(cut["text_fed"]) < len("".join(LONG))

    ask(page, "OK, goodbye.")
    page.wait_for_function("vg.events.filter(e => e.type === 'utterance.done').length >= 2", timeout=30000)
    third = chat.requests[2]
    assert [(m["role"], m["content"]) for m in third["messages"][1:]] == [
        ("user", "What is the capital of France?"), ("assistant", "Paris is the capital of France."),
        ("user", "Tell me more."), ("assistant", cut["spoken_text"]),  # what the listener heard, not the rest
        ("user", "OK, goodbye.")]
    ARTIFACTS.mkdir(exist_ok=True)
    page.locator("#h-llm").scroll_into_view_if_needed()
    page.screenshot(path=str(ARTIFACTS / "web_llm.png"), full_page=True)
    log = page.locator("#llm-log").inner_text()
    assert "Paris is the capital of France." in log and "Sure, bye." in log and "stopped" in log
    assert len(events(page, "utterance.done")) == 2
    assert errors == [], errors


def test_llm_failures_are_shown_and_the_session_lives_on(web_server: Any, launch: Any, chat: ChatServer,
                                                         tmp_path: Path) -> None:
    page = launch(write_wav(tmp_path / "silence.wav", np.zeros(48000 * 2)))
    connect(page, web_server.url)

    chat.status = 401
    enable_bridge(page, chat.url)
    ask(page, "Hello?")
    page.wait_for_function("vg.errors.length >= 1", timeout=10000)
    assert "401" in page.locator("#errors").inner_text() and "invalid api key" in page.locator("#errors").inner_text()

    enable_bridge(page, "http://127.0.0.1:9/v1")  # nothing listens on the discard port
    ask(page, "Anyone there?")
    page.wait_for_function("vg.errors.length >= 2", timeout=10000)
    assert "cannot reach http://127.0.0.1:9/v1/chat/completions" in page.locator("#errors").inner_text()
    assert page.locator("#errors").is_visible()

    chat.status = 200
    enable_bridge(page, chat.url)
    ask(page, "Now?")
    done = wait_event(page, "utterance.done", timeout=30)
    assert done["text_fed"] == "".join(FIRST)
    assert page.evaluate("vg.connected") is True
