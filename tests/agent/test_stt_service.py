"""RecognizerService's queue, errors and cancellation with stand-in backends (the real one: test_speech_in.py),
and `--stt` parsing. A gate (threading.Event) holds the worker inside a request so the queue's state is known."""

from __future__ import annotations

import asyncio
import sys
import threading

import numpy as np
import pytest

from agent.speech_in.recognizer import (
    STT_BUSY,
    STT_FAILED,
    STT_UNAVAILABLE,
    SttChoice,
    SttError,
    Transcript,
    load_recognizer,
    parse_stt,
)
from agent.speech_in.service import RecognizerService, ServiceSettings
from agent.speech_in.transcriber import TranscriberSettings, UserTranscriber


class Gated:
    """Answers with the first sample of each request; waits for `gate` first; raises on a sample of -1."""

    name = "gated"

    def __init__(self) -> None:
        self.gate = threading.Event()
        self.entered = threading.Event()
        self.seen: list[tuple[int, bool]] = []

    def transcribe(self, pcm16k: np.ndarray, language: str | None = None, *, partial: bool = False) -> Transcript:
        self.entered.set()
        self.gate.wait(10)
        self.seen.append((int(pcm16k[0]), partial))
        if pcm16k[0] == -1:
            raise RuntimeError("backend exploded")
        return Transcript(text=str(int(pcm16k[0])), language=language, partial=partial)


def req(n: int) -> np.ndarray:
    return np.full(1600, n, np.int16)


async def until(cond: threading.Event) -> None:
    await asyncio.to_thread(cond.wait, 10)


async def test_no_recognizer_is_stt_unavailable() -> None:
    service = RecognizerService(None)
    assert not service.available
    with pytest.raises(SttError) as err:
        await service.transcribe(req(1))
    assert err.value.code == STT_UNAVAILABLE
    with pytest.raises(SttError) as err:
        await service.partial(req(1))
    assert err.value.code == STT_UNAVAILABLE


async def test_backend_error_is_stt_failed_and_the_service_lives_on() -> None:
    backend = Gated()
    backend.gate.set()
    service = RecognizerService(backend)
    with pytest.raises(SttError) as err:
        await service.transcribe(req(-1))
    assert err.value.code == STT_FAILED and "backend exploded" in err.value.message
    assert (await service.transcribe(req(7), "en")).text == "7"
    assert service.stats.failed == 1 and service.stats.done == 1
    await service.close()


async def test_finals_first_full_queue_drops_oldest_partial_then_refuses_finals() -> None:
    backend = Gated()
    service = RecognizerService(backend, ServiceSettings(max_pending=2))
    running = asyncio.create_task(service.transcribe(req(1)))
    await until(backend.entered)  # the worker holds request 1; the queue is empty
    p2 = asyncio.create_task(service.partial(req(2)))
    p3 = asyncio.create_task(service.partial(req(3)))
    await asyncio.sleep(0)
    assert service.pending == 2
    f4 = asyncio.create_task(service.transcribe(req(4)))  # full: the oldest partial (2) makes room
    assert await p2 is None
    f5 = asyncio.create_task(service.transcribe(req(5)))  # full: partial 3 goes
    assert await p3 is None
    with pytest.raises(SttError) as err:  # full of finals: refused
        await service.transcribe(req(6))
    assert err.value.code == STT_BUSY
    assert await service.partial(req(7)) is None  # a partial finds no room: skipped, not an error
    backend.gate.set()
    assert [t.text for t in await asyncio.gather(running, f4, f5)] == ["1", "4", "5"]
    assert backend.seen == [(1, False), (4, False), (5, False)]
    assert service.stats.finals_refused == 1 and service.stats.partials_dropped == 3
    await service.close()


async def test_finals_are_served_before_waiting_partials() -> None:
    backend = Gated()
    service = RecognizerService(backend)
    first = asyncio.create_task(service.transcribe(req(1)))
    await until(backend.entered)
    partial = asyncio.create_task(service.partial(req(2)))
    await asyncio.sleep(0)
    final = asyncio.create_task(service.transcribe(req(3)))
    await asyncio.sleep(0)
    backend.gate.set()
    await asyncio.gather(first, partial, final)
    assert backend.seen == [(1, False), (3, False), (2, True)]
    assert (await partial) is not None and (await partial).partial
    await service.close()


async def test_cancelling_a_waiting_request_takes_it_out_of_the_queue() -> None:
    backend = Gated()
    service = RecognizerService(backend)
    first = asyncio.create_task(service.transcribe(req(1)))
    await until(backend.entered)
    waiting = asyncio.create_task(service.transcribe(req(2)))
    await asyncio.sleep(0)
    assert service.pending == 1
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    assert service.pending == 0 and service.stats.cancelled == 1
    backend.gate.set()
    assert (await first).text == "1"
    assert (await service.transcribe(req(3))).text == "3"
    assert backend.seen == [(1, False), (3, False)]  # request 2 never reached the backend
    await service.close()


async def test_cancelling_a_running_request_discards_its_result() -> None:
    backend = Gated()
    service = RecognizerService(backend)
    running = asyncio.create_task(service.transcribe(req(1)))
    await until(backend.entered)
    running.cancel()
    with pytest.raises(asyncio.CancelledError):
        await running
    backend.gate.set()
    assert (await service.transcribe(req(2))).text == "2"
    assert backend.seen == [(1, False), (2, False)]
    await service.close()


async def test_close_fails_waiting_requests_and_refuses_new_ones() -> None:
    backend = Gated()
    service = RecognizerService(backend)
    running = asyncio.create_task(service.transcribe(req(1)))
    await until(backend.entered)
    waiting = asyncio.create_task(service.transcribe(req(2)))
    await asyncio.sleep(0)
    closing = asyncio.create_task(service.close())
    with pytest.raises(SttError) as err:
        await waiting
    assert err.value.code == STT_UNAVAILABLE
    backend.gate.set()
    await closing
    assert (await running).text == "1"  # the running one finished
    with pytest.raises(SttError) as err:
        await service.transcribe(req(3))
    assert err.value.code == STT_UNAVAILABLE


def test_parse_stt() -> None:
    assert parse_stt("none") is None
    assert parse_stt("faster-whisper") == SttChoice("faster-whisper", None)
    assert parse_stt("faster-whisper:/models/whisper-small") == SttChoice("faster-whisper", "/models/whisper-small")
    assert parse_stt("faster-whisper:tiny.en") == SttChoice("faster-whisper", "tiny.en")
    for bad in ("whisper", "faster-whisper:", "", "parakeet:x"):
        with pytest.raises(ValueError):
            parse_stt(bad)


def test_missing_model_or_package_is_stt_unavailable(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(SttError) as err:
        load_recognizer(SttChoice("faster-whisper", str(tmp_path)))  # a directory with no model
    assert err.value.code == STT_UNAVAILABLE and "model.bin" in err.value.message
    with pytest.raises(SttError) as err:  # a name not in the local cache: nothing is downloaded
        load_recognizer(SttChoice("faster-whisper", "no-such-model-xyz"))
    assert err.value.code == STT_UNAVAILABLE
    monkeypatch.setitem(sys.modules, "faster_whisper", None)  # the `stt` extra not installed
    with pytest.raises(SttError) as err:
        load_recognizer(SttChoice("faster-whisper", str(tmp_path)))
    assert err.value.code == STT_UNAVAILABLE and "not installed" in err.value.message


async def test_transcriber_reports_stt_busy_when_its_queue_is_full() -> None:
    backend = Gated()
    backend.gate.set()
    service = RecognizerService(backend)
    events: list[dict] = []
    transcriber = UserTranscriber(service, events.append, TranscriberSettings(partial_every_ms=0, max_jobs=1))
    # two turns pushed in one tick: the first final fills the session's queue of 1, the second is refused
    for i, speech in enumerate(([True] * 10 + [False] * 25) * 2):
        transcriber.push(np.full(320, i + 1, np.int16), speech)
    assert events == [{"type": "error", "code": STT_BUSY, "turn_id": "turn_2",
                       "message": "too many turns waiting for the recognizer"}]
    async with asyncio.timeout(10):
        while len(events) < 2:
            await asyncio.sleep(0.01)
    assert events[1]["type"] == "user.transcript" and events[1]["turn_id"] == "turn_1" and events[1]["text"] == "1"
    await transcriber.close()
    await service.close()


async def test_closing_a_transcriber_cancels_its_waiting_request() -> None:
    """A session that closes takes its turn out of the shared queue; other sessions' requests stay."""
    backend = Gated()
    service = RecognizerService(backend)
    other = asyncio.create_task(service.transcribe(req(1)))  # another session's turn holds the worker
    await until(backend.entered)
    events: list[dict] = []
    transcriber = UserTranscriber(service, events.append, TranscriberSettings(partial_every_ms=0))
    for i, speech in enumerate([True] * 10 + [False] * 25):
        transcriber.push(np.full(320, 100 + i, np.int16), speech)
    async with asyncio.timeout(10):
        while service.pending == 0:  # its task has sent the final to the service
            await asyncio.sleep(0.01)
    await transcriber.close()
    assert service.pending == 0 and service.stats.cancelled == 1
    backend.gate.set()
    assert (await other).text == "1"
    assert backend.seen == [(1, False)] and events == []
    await service.close()


async def test_a_failing_event_consumer_does_not_stop_recognition() -> None:
    backend = Gated()
    backend.gate.set()
    service = RecognizerService(backend)
    seen: list[dict] = []

    def on_event(event: dict) -> None:
        seen.append(event)
        if len(seen) == 1:
            raise RuntimeError("consumer bug")

    transcriber = UserTranscriber(service, on_event, TranscriberSettings(partial_every_ms=0))
    for i, speech in enumerate(([True] * 10 + [False] * 25) * 2):
        transcriber.push(np.full(320, i + 1, np.int16), speech)
    async with asyncio.timeout(10):
        while len(seen) < 2:
            await asyncio.sleep(0.01)
    assert [(e["type"], e["turn_id"]) for e in seen] == [("user.transcript", "turn_1"), ("user.transcript", "turn_2")]
    await transcriber.close()
    await service.close()
