"""Voice in on the session server, end to end: espeak-ng speech played into a real aiortc client's mic, the
server's VAD and turn cutter, the real recognizer (Whisper tiny.en, the pinned test model), and the events a
second connection (a producer) receives: partials, finals, raw turn audio, word-gated barge-in, faults."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import pytest

from agent.media.audio import Resampler
from agent.settings import ServerSettings, SessionSettings
from agent.speech_in.faster_whisper import FasterWhisperRecognizer, FasterWhisperSettings
from agent.speech_in.recognizer import Transcript
from agent.speech_in.service import RecognizerService

from .conftest import Client, ServerThread, http_get, loopback_rtc, session_client
from .speech_helpers import espeak, silence, test_model_dir, wer, words
from .test_server_rtc import LONG_TEXT, connect_rtc

SENTENCE = "Please open the kitchen window and turn on the lights"


def to_48k(pcm16k: np.ndarray) -> np.ndarray:
    resampler = Resampler(16000, 48000)
    return np.concatenate([resampler.push(pcm16k), resampler.drain()])


@pytest.fixture(scope="module")
def recognizer() -> FasterWhisperRecognizer:
    return FasterWhisperRecognizer(FasterWhisperSettings(model=str(test_model_dir()), cpu_threads=2))


@pytest.fixture(scope="module")
def sentence_48k() -> np.ndarray:
    return to_48k(np.concatenate([espeak(SENTENCE), silence(0.2)]))


@pytest.fixture
def stt_server(engine: Any) -> Iterator[Callable[..., ServerThread]]:
    """A fresh server with a recognizer service of its own (closed by the server's shutdown)."""
    started: list[ServerThread] = []

    def start(recognizer: Any, **session: Any) -> ServerThread:
        srv = ServerThread(engine, ServerSettings(port=0, session=SessionSettings(**session)),
                           rtc_settings=loopback_rtc(), stt=RecognizerService(recognizer))
        started.append(srv)
        return srv

    yield start
    for srv in started:
        srv.stop()


@contextlib.asynccontextmanager
async def producer(url: str, created: dict[str, Any]):  # type: ignore[no-untyped-def]
    async with session_client(f"{url}?session={created['session']}&token={created['token']}") as (client, joined):
        assert joined["role"] == "producer"
        yield client


async def until(client: Client, kind: str, turn_id: str | None = None, timeout: float = 30.0) -> dict[str, Any]:
    while True:
        evt = await client.expect(kind, timeout=timeout)
        if turn_id is None or evt.get("turn_id") == turn_id:
            return evt


async def test_mic_speech_becomes_partials_then_a_transcript_at_every_connection(
        stt_server: Callable[..., ServerThread], recognizer: Any, sentence_48k: np.ndarray) -> None:
    server = stt_server(recognizer, stt_partial_every_ms=500)
    async with session_client(server.ws_url) as (owner, created):
        assert created["config"]["transcription"] == {"enabled": True, "language": None, "end_of_turn_ms": 500,
                                                      "partials": True}
        rtc = await connect_rtc(owner)
        try:
            async with producer(server.ws_url, created) as prod:
                rtc.speak(sentence_48k, "user")
                started = await prod.expect("user.speech_started", timeout=15)
                turn = started["turn_id"]
                assert turn
                final = await until(prod, "user.transcript", turn, timeout=40)
                deltas = [e for e in prod.events if e["type"] == "user.transcript.delta" and e["turn_id"] == turn]
                assert deltas and all(isinstance(d["text"], str) for d in deltas)
                assert prod.events.index(deltas[0]) < prod.events.index(final)
                assert wer(SENTENCE, final["text"]) <= 0.3, final["text"]
                assert words(final["text"])[0] == "please"  # the pre-roll keeps the first word
                assert final["language"] == "en" and final["capped"] is False
                assert 0 <= final["start_ms"] < final["end_ms"]
                assert 2500 <= final["end_ms"] - final["start_ms"] <= 5000  # 3.1 s of speech + pre-roll + 500 ms
                assert 0 < final["latency_ms"] < 15000
                # every connection gets it; the raw audio went to nobody (nobody asked)
                owner_final = await until(owner, "user.transcript", turn, timeout=10)
                assert owner_final["text"] == final["text"]
                assert prod.frames == [] and owner.frames == []
                # the VAD's hangover (300 ms) ends before the turn (500 ms): its stop came first
                stopped = next(e for e in prod.events if e["type"] == "user.speech_stopped")
                assert stopped["turn_id"] == turn
            metrics = server.server.metrics  # type: ignore[union-attr]
            assert server.call(lambda: metrics.stt_latency.count) == 1
            assert server.call(lambda: metrics.stt_turns_total.get(outcome="transcribed")) == 1
            status, _, body = await asyncio.to_thread(http_get, server.url + "/healthz")
            assert status == 200
            assert json.loads(body)["stt"] == {"backend": "faster-whisper", "model": test_model_dir().name}
            _, _, text = await asyncio.to_thread(http_get, server.url + "/metrics")
            assert "voicegate_stt_queue_depth" in text and "voicegate_stt_latency_seconds_count 1.0" in text
        finally:
            await rtc.close()


async def test_input_audio_streams_each_turn_to_the_asking_producer_only(
        server: ServerThread, sentence_48k: np.ndarray) -> None:
    # the shared server has no recognizer: raw turn audio needs only the turn cutter
    async with session_client(server.ws_url) as (owner, created):
        assert created["config"]["transcription"]["enabled"] is False
        await owner.send(type="session.update", input_audio="pcm16", id="early")
        refused = await owner.expect("error")
        assert refused["code"] == "input_audio_unavailable" and refused["id"] == "early"
        rtc = await connect_rtc(owner)
        try:
            async with producer(server.ws_url, created) as asking, producer(server.ws_url, created) as other:
                await asking.send(type="session.update", input_audio="pcm16")
                await asking.expect("session.updated")
                rtc.speak(sentence_48k, "user")
                started = await asking.expect("user.audio.started", timeout=15)
                assert started["sample_rate"] == 16000 and started["format"] == "pcm16"
                done = await until(asking, "user.audio.done", started["turn_id"], timeout=15)
                pcm = b"".join(asking.frames)
                assert len(pcm) == 2 * done["samples"]
                seconds = done["samples"] / 16000
                # the 3.1 s sentence (+200 ms pause), 300 ms of pre-roll, 500 ms of silence ending the turn
                assert 3.3 <= seconds <= 4.8, seconds
                x = np.frombuffer(pcm, "<i2").astype(np.float32)
                assert np.sqrt(np.mean(x ** 2)) > 300  # speech, not silence
                speech_started = next(e for e in asking.events if e["type"] == "user.speech_started")
                assert speech_started["turn_id"] == started["turn_id"]
                await other.quiet_for(0.3)
                assert other.frames == [] and owner.frames == []
                assert not any(e["type"].startswith("user.audio") for e in other.events + owner.events)
                # the websocket listener's binary frames are speech: it may not ask
                await owner.send(type="session.update", audio="websocket", input_audio="pcm16", id="ws")
                refused = await owner.expect("error")
                assert refused["code"] == "input_audio_unavailable" and refused["id"] == "ws"
        finally:
            await rtc.close()


async def test_min_words_barge_in_ignores_a_hum_and_takes_a_sentence(
        stt_server: Callable[..., ServerThread], recognizer: Any, sentence_48k: np.ndarray) -> None:
    server = stt_server(recognizer)
    hum = to_48k(espeak("hmm"))
    async with session_client(server.ws_url) as (client, _):
        rtc = await connect_rtc(client, barge_in={"enabled": True, "min_words": 3})
        try:
            updated = next(e for e in client.events if e["type"] == "session.updated")
            assert updated["config"]["barge_in_min_words"] == 3
            await client.send(type="text.append", text=LONG_TEXT * 3)
            await client.send(type="text.flush")
            first = await client.expect("audio.first")
            rtc.speak(hum, "hum")
            started = await client.expect("user.speech_started", timeout=15)
            assert started["interrupted"] == []  # waiting for words
            final = await until(client, "user.transcript", started["turn_id"], timeout=30)
            assert len(words(final["text"])) < 3, final["text"]
            assert not any(e["type"] == "utterance.interrupted" for e in client.events)
            rtc.speak(sentence_48k, "user")
            second = await until(client, "user.speech_started", timeout=15)
            assert second["interrupted"] == [] and second["turn_id"] != started["turn_id"]
            interrupted = await client.expect("utterance.interrupted", "utterance.done", timeout=30)
            assert interrupted["type"] == "utterance.interrupted", "the reply ended before the sentence's words"
            assert interrupted["utterance"] == first["utterance"] and interrupted["reason"] == "barge_in"
            # it came from a partial: the turn's final is still to come
            assert not any(e["type"] == "user.transcript" and e["turn_id"] == second["turn_id"]
                           for e in client.events)
        finally:
            await rtc.close()


async def test_transcription_and_min_words_need_a_recognizer(server: ServerThread) -> None:
    async with session_client(server.ws_url) as (client, _):
        for update in ({"transcription": {"enabled": True}}, {"barge_in": {"min_words": 2}}):
            await client.send(type="session.update", id="x", **update)
            err = await client.expect("error")
            assert err["code"] == "stt_unavailable" and err["id"] == "x"
        await client.send(type="session.update", transcription={"enabled": False, "language": "English",
                                                                 "end_of_turn_ms": 800})
        config = (await client.expect("session.updated"))["config"]
        assert config["transcription"] == {"enabled": False, "language": "en", "end_of_turn_ms": 800,
                                           "partials": True}
        assert config["barge_in"] is True and config["barge_in_min_words"] == 0
        for bad in ({"transcription": {"enabled": False, "colour": 1}}, {"transcription": {"end_of_turn_ms": 50}},
                    {"transcription": {"language": "not a language"}}, {"barge_in": {"min_words": -1}},
                    {"input_audio": "wav"}):
            await client.send(type="session.update", **bad)
            assert (await client.expect("error"))["code"] == "invalid_message", bad
    status, _, body = await asyncio.to_thread(http_get, server.url + "/healthz")
    assert status == 200 and json.loads(body)["stt"] is None


class Broken:
    """A recognizer that raises: the boundary the service guards."""

    name = "broken"

    def transcribe(self, pcm16k: np.ndarray, language: str | None = None, *, partial: bool = False) -> Transcript:
        raise RuntimeError("decoder exploded")


async def test_a_failing_recognizer_reports_stt_failed_and_the_session_goes_on(
        stt_server: Callable[..., ServerThread], sentence_48k: np.ndarray) -> None:
    server = stt_server(Broken())
    async with session_client(server.ws_url) as (client, _):
        rtc = await connect_rtc(client)
        try:
            rtc.speak(sentence_48k, "user")
            started = await client.expect("user.speech_started", timeout=15)
            err = await client.expect("error", timeout=30)
            assert err["code"] == "stt_failed" and err["turn_id"] == started["turn_id"]
            assert "decoder exploded" in err["message"]
            done = await client.speak("Still here. ")
            assert done["type"] == "utterance.done"
            metrics = server.server.metrics  # type: ignore[union-attr]
            assert server.call(lambda: metrics.stt_turns_total.get(outcome="failed")) == 1
        finally:
            await rtc.close()


async def test_an_over_long_turn_is_cut_at_the_cap_into_capped_finals(
        stt_server: Callable[..., ServerThread], recognizer: Any, sentence_48k: np.ndarray) -> None:
    server = stt_server(recognizer, stt_max_turn_ms=1500)
    async with session_client(server.ws_url) as (client, _):
        rtc = await connect_rtc(client, transcription={"partials": False})
        try:
            rtc.speak(sentence_48k, "user")
            first = await client.expect("user.transcript", timeout=40)
            assert first["capped"] is True and first["end_ms"] - first["start_ms"] == pytest.approx(1500, abs=40)
            rest = await client.expect("user.transcript", timeout=40)
            assert rest["turn_id"] != first["turn_id"] and rest["start_ms"] == first["end_ms"]
            assert not any(e["type"] == "user.transcript.delta" for e in client.events)
            heard = words(first["text"] + " " + rest["text"])
            assert heard and heard[0] == "please", heard
        finally:
            await rtc.close()


async def test_the_open_turn_ends_when_the_mic_goes_away(
        stt_server: Callable[..., ServerThread], recognizer: Any, sentence_48k: np.ndarray) -> None:
    server = stt_server(recognizer)
    async with session_client(server.ws_url) as (client, _):
        rtc = await connect_rtc(client, transcription={"partials": False})
        try:
            rtc.speak(sentence_48k, "user")
            started = await client.expect("user.speech_started", timeout=15)
            await asyncio.sleep(1.2)  # mid-sentence
        finally:
            await rtc.close()
        final = await until(client, "user.transcript", started["turn_id"], timeout=30)
        assert final["capped"] is False and words(final["text"])[:1] == ["please"], final["text"]
        assert final["end_ms"] - final["start_ms"] < 2500  # cut when the peer closed, not after the sentence
