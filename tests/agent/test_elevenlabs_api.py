"""ElevenLabs' streaming-input WebSockets: raw websockets clients and pipecat's ElevenLabsTTSService."""

from __future__ import annotations

import asyncio
import base64
import json
from typing import Any

import numpy as np
import pytest
import websockets
from websockets.exceptions import ConnectionClosed, InvalidStatus

from agent.media.audio import Resampler

from .audio_compare import engine_pcm
from .conftest import API_KEY, ServerThread, wait_no_streams

TEXT = "Hello there, how are you today?"
WORDS = ["Hel", "lo ", "there, ", "how ", "are ", "you ", "to", "day?"]  # fragments of any size


def el_url(srv: ServerThread, voice: str = "vivian", multi: bool = False, query: str = "") -> str:
    kind = "multi-stream-input" if multi else "stream-input"
    return f"ws://127.0.0.1:{srv.port}/v1/text-to-speech/{voice}/{kind}?model_id=any{query}"


async def read_until_final(ws: Any, timeout: float = 30.0) -> tuple[dict[str | None, bytes], list[dict[str, Any]]]:
    """PCM per contextId and every message, until each context seen has sent isFinal (or the socket closes)."""
    audio: dict[str | None, bytes] = {}
    messages: list[dict[str, Any]] = []
    finals: set[str | None] = set()
    async with asyncio.timeout(timeout):
        while True:
            try:
                msg = json.loads(await ws.recv())
            except ConnectionClosed:
                break
            messages.append(msg)
            cid = msg.get("contextId")
            if msg.get("audio"):
                audio[cid] = audio.get(cid, b"") + base64.b64decode(msg["audio"])
            if msg.get("isFinal") is True:
                finals.add(cid)
                if set(audio) <= finals:
                    break
    return audio, messages


def pcm(data: bytes) -> np.ndarray:
    return np.frombuffer(data, "<i2")


@pytest.fixture(scope="module")
def reference(server: ServerThread) -> np.ndarray:
    return engine_pcm(server.engine, TEXT)


async def test_stream_input_speaks_fragments_as_the_engine_does(server: ServerThread, reference: np.ndarray) -> None:
    async with websockets.connect(el_url(server, query="&output_format=pcm_24000")) as ws:
        await ws.send(json.dumps({"text": " ", "voice_settings": {"stability": 0.5}, "generation_config": {
            "chunk_length_schedule": [120, 160]}}))
        for word in WORDS:
            await ws.send(json.dumps({"text": word, "try_trigger_generation": True}))
        await ws.send(json.dumps({"text": ""}))
        audio, messages = await read_until_final(ws)
        with pytest.raises(ConnectionClosed) as closed:
            await asyncio.wait_for(ws.recv(), 10)
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 1000  # closed after its audio
    assert np.array_equal(pcm(audio[None]), reference)  # same audio however the text was cut
    assert messages[-1] == {"isFinal": True}
    assert all(m["isFinal"] is False and "alignment" in m for m in messages[:-1])


async def test_pcm_16000_is_the_engine_audio_resampled(server: ServerThread) -> None:
    stream = server.engine.open_stream(speaker="vivian", language="auto", seed=0)
    stream.push_text(TEXT)
    stream.finish()
    frames, _ = stream.collect()
    resampler = Resampler(24000, 16000)
    expected = np.concatenate([resampler.push(f.pcm) for f in frames] + [resampler.drain()])
    async with websockets.connect(el_url(server, query="&output_format=pcm_16000")) as ws:
        await ws.send(json.dumps({"text": " "}))
        await ws.send(json.dumps({"text": TEXT, "flush": True}))
        await ws.send(json.dumps({"text": ""}))
        audio, _ = await read_until_final(ws)
    assert np.array_equal(pcm(audio[None]), expected)


async def test_multi_stream_contexts_play_their_utterances_in_order(server: ServerThread) -> None:
    first, second, other = "One two three. ", "Four five. ", "Other voice here. "
    expected = {"a": np.concatenate([engine_pcm(server.engine, first), engine_pcm(server.engine, second)]),
                "b": engine_pcm(server.engine, other)}
    async with websockets.connect(el_url(server, multi=True)) as ws:
        await ws.send(json.dumps({"text": " ", "context_id": "a"}))
        await ws.send(json.dumps({"text": " ", "context_id": "b"}))
        for word in first.split(" "):
            await ws.send(json.dumps({"text": word + " " if word else "", "context_id": "a"}))
        await ws.send(json.dumps({"context_id": "a", "flush": True}))
        await ws.send(json.dumps({"text": other, "context_id": "b", "flush": True}))
        await ws.send(json.dumps({"text": second, "context_id": "a"}))  # after the flush: the next utterance
        await ws.send(json.dumps({"context_id": "a", "flush": True}))
        await ws.send(json.dumps({"context_id": "a", "close_context": True}))
        await ws.send(json.dumps({"context_id": "b", "close_context": True}))
        await ws.send(json.dumps({"text": ""}))  # a keepalive: nothing happens
        audio, messages = await read_until_final(ws)
    for cid in ("a", "b"):  # the contexts ran batched together: the codec's float rounding may move 1 LSB
        got = pcm(audio[cid]).astype(np.int32)
        assert len(got) == len(expected[cid]) and np.abs(got - expected[cid]).max() <= 1
    finals = [m for m in messages if m.get("isFinal")]
    assert sorted(m["contextId"] for m in finals) == ["a", "b"]
    for cid in ("a", "b"):  # each context's isFinal follows its last audio
        last_audio = max(i for i, m in enumerate(messages) if m.get("contextId") == cid and m.get("audio"))
        assert messages.index(next(m for m in finals if m["contextId"] == cid)) > last_audio


async def test_close_context_stops_unflushed_speech_at_once(server: ServerThread) -> None:
    engine = server.engine
    async with websockets.connect(el_url(server, multi=True)) as ws:
        await ws.send(json.dumps({"text": "This reply goes on and on, and it has not been flushed, so the "
                                          "listener may cut it off at any moment. ", "context_id": "x"}))
        while not json.loads(await asyncio.wait_for(ws.recv(), 20)).get("audio"):
            pass
        await ws.send(json.dumps({"context_id": "x", "close_context": True}))
        async with asyncio.timeout(5):
            while not (msg := json.loads(await ws.recv())).get("isFinal"):
                assert msg.get("contextId") == "x"
        assert msg == {"isFinal": True, "contextId": "x"}
        assert await asyncio.to_thread(wait_no_streams, engine) == 0
        # the id is free again once its context is done: a new context under it speaks
        await ws.send(json.dumps({"text": "Again. ", "context_id": "x", "flush": True}))
        await ws.send(json.dumps({"context_id": "x", "close_context": True}))
        audio, _ = await read_until_final(ws)
    assert len(audio["x"]) > 0


@pytest.mark.parametrize(("payload", "code"), [
    (b"\x00\x01binary", "invalid_message"),
    ("{not json", "invalid_message"),
    ("[1, 2]", "invalid_message"),
    ('{"text": 42, "context_id": "a"}', "invalid_message"),
    ('{"text": "hi", "context_id": 7}', "invalid_message"),
    ('{"context_id": "nope", "close_context": true}', "context_not_found"),
    ("x" * 70_000, "message_too_large"),
])
async def test_garbage_messages_get_errors_and_the_socket_lives_on(server: ServerThread, payload: str | bytes,
                                                                   code: str) -> None:
    async with websockets.connect(el_url(server, multi=True), max_size=2**22) as ws:
        await ws.send(payload)
        err = json.loads(await asyncio.wait_for(ws.recv(), 10))
        assert err["error"] == code and err["message"]
        await ws.send(json.dumps({"text": "Still fine. ", "context_id": "ok", "flush": True}))
        await ws.send(json.dumps({"context_id": "ok", "close_context": True}))
        audio, _ = await read_until_final(ws)
    assert len(audio["ok"]) > 0


async def test_too_many_contexts_are_refused(server: ServerThread) -> None:
    async with websockets.connect(el_url(server, multi=True)) as ws:
        for i in range(6):
            await ws.send(json.dumps({"text": " ", "context_id": f"c{i}"}))
        err = json.loads(await asyncio.wait_for(ws.recv(), 10))
        assert (err["error"], err["contextId"]) == ("max_active_conversations", "c5")


@pytest.mark.parametrize(("url", "status"), [
    ("nobody", 404),
    ("vivian?output_format=mp3_44100_7", 400),  # MP3 at 44.1 kHz is made now (issue 19); not at 7 kbit/s
    ("vivian?language_code=tlh", 400),
])
async def test_bad_handshakes_are_refused(server: ServerThread, url: str, status: int) -> None:
    voice, _, query = url.partition("?")
    with pytest.raises(InvalidStatus) as refused:
        async with websockets.connect(el_url(server, voice, query="&" + query if query else "")):
            pass
    assert refused.value.response.status_code == status


async def test_the_api_key_is_the_servers(limited_server: ServerThread) -> None:
    with pytest.raises(InvalidStatus) as refused:
        async with websockets.connect(el_url(limited_server), additional_headers={"xi-api-key": "wrong"}):
            pass
    assert refused.value.response.status_code == 401
    async with websockets.connect(el_url(limited_server)) as ws:  # no key yet: the init must bring it
        await ws.send(json.dumps({"text": " ", "xi_api_key": "wrong"}))
        err = json.loads(await asyncio.wait_for(ws.recv(), 10))
        with pytest.raises(ConnectionClosed) as closed:
            await asyncio.wait_for(ws.recv(), 10)
    assert err["error"] == "invalid_api_key" and closed.value.rcvd is not None and closed.value.rcvd.code == 1008
    for connect in ({"url": el_url(limited_server), "init": {"xi_api_key": API_KEY}},
                    {"url": el_url(limited_server, query=f"&xi_api_key={API_KEY}"), "init": {}},
                    {"url": el_url(limited_server), "headers": {"xi-api-key": API_KEY}, "init": {}}):
        async with websockets.connect(connect["url"], additional_headers=connect.get("headers")) as ws:
            await ws.send(json.dumps({"text": " ", **connect["init"]}))
            await ws.send(json.dumps({"text": "Yes. "}))
            await ws.send(json.dumps({"text": ""}))
            audio, _ = await read_until_final(ws)
        assert len(audio[None]) > 0


# ---- pipecat ---------------------------------------------------------------------------------------

async def test_pipecat_elevenlabs_service_in_a_pipeline(server: ServerThread, reference: np.ndarray) -> None:
    """LLM tokens in, audio frames out; an interruption mid-reply closes the context and the audio stops."""
    from pipecat.frames.frames import (
        EndFrame,
        InterruptionFrame,
        LLMFullResponseEndFrame,
        LLMFullResponseStartFrame,
        LLMTextFrame,
        TTSAudioRawFrame,
        TTSStoppedFrame,
    )
    from pipecat.pipeline.pipeline import Pipeline
    from pipecat.pipeline.worker import PipelineParams, PipelineWorker
    from pipecat.processors.frame_processor import FrameDirection
    from pipecat.services.elevenlabs.tts import ElevenLabsTTSService
    from pipecat.services.tts_service import TextAggregationMode
    from pipecat.tests.utils import QueuedFrameProcessor
    from pipecat.workers.runner import WorkerRunner

    received: asyncio.Queue[Any] = asyncio.Queue()
    # TOKEN: each LLM token goes to the server as it comes (no sentence aggregation in pipecat)
    tts = ElevenLabsTTSService(api_key="unused", url=f"ws://127.0.0.1:{server.port}", sample_rate=24000,
                               settings=ElevenLabsTTSService.Settings(voice="vivian"),
                               text_aggregation_mode=TextAggregationMode.TOKEN)
    sink = QueuedFrameProcessor(queue=received, queue_direction=FrameDirection.DOWNSTREAM)
    worker = PipelineWorker(Pipeline([tts, sink]), params=PipelineParams(audio_out_sample_rate=24000),
                            cancel_on_idle_timeout=False)
    started = asyncio.Event()

    @worker.event_handler("on_pipeline_started")
    async def _started(*_: Any) -> None:
        started.set()

    async def frames_until(kind: type, timeout: float = 30.0) -> list[Any]:
        got = []
        async with asyncio.timeout(timeout):
            while not isinstance(frame := await received.get(), kind):
                got.append(frame)
        return [*got, frame]

    runner = WorkerRunner()
    await runner.add_workers(worker)
    run = asyncio.create_task(runner.run())
    try:
        await asyncio.wait_for(started.wait(), 10)
        # a whole reply, token by token
        tokens = ["Hello", " there", ",", " how", " are", " you", " today", "?"]
        await worker.queue_frames([LLMFullResponseStartFrame(), *(LLMTextFrame(t) for t in tokens),
                                   LLMFullResponseEndFrame()])
        reply = await frames_until(TTSStoppedFrame)
        audio = [f for f in reply if isinstance(f, TTSAudioRawFrame)]
        assert audio and all(f.sample_rate == 24000 and f.num_channels == 1 for f in audio)
        # the whole reply, as the engine speaks that text however it was cut
        assert np.array_equal(pcm(b"".join(f.audio for f in audio)), reference)

        # a long reply, interrupted while it speaks
        long_tokens = ["This", " answer", " runs", " on", " and", " on", ",", " with", " many", " words",
                       " still", " to", " come", ",", " and", " no", " end", " in", " sight"]
        await worker.queue_frames([LLMFullResponseStartFrame(), *(LLMTextFrame(t) for t in long_tokens)])
        await frames_until(TTSAudioRawFrame)
        await worker.queue_frame(InterruptionFrame())
        # the server stopped the engine stream (long before the reply's text was spoken)
        assert await asyncio.to_thread(wait_no_streams, server.engine, 3.0) == 0
        await asyncio.sleep(0.5)
        late = []
        while not received.empty():
            late.append(received.get_nowait())
        assert not [f for f in late if isinstance(f, TTSAudioRawFrame)]  # and no audio after the interruption
    finally:
        await worker.queue_frame(EndFrame())
        await asyncio.wait_for(run, 20)


async def test_shutdown_closes_an_open_socket_going_away_and_stops_its_stream(start_server) -> None:  # type: ignore[no-untyped-def]
    srv = start_server()
    async with websockets.connect(el_url(srv, multi=True)) as ws:
        await ws.send(json.dumps({"context_id": "a", "text": "A long answer that goes on for a while. " * 4}))
        await ws.send(json.dumps({"context_id": "a", "flush": True}))
        first = json.loads(await asyncio.wait_for(ws.recv(), 30))
        assert first.get("audio")  # speaking
        stopping = asyncio.create_task(asyncio.to_thread(srv.shutdown))
        with pytest.raises(ConnectionClosed) as closed:
            while True:
                await asyncio.wait_for(ws.recv(), 30)
        await stopping
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 1001
    assert wait_no_streams(srv.engine) == 0
