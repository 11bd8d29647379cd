"""Drop-in for the clients users already run (third-party SDKs, unmodified): pipecat's OpenAITTSService with
OpenAI's stock voice names, the openai SDK's `speed` and `x-request-id`, LiveKit's ElevenLabs plugin with its
default MP3 encoding over the stream-input socket and over REST (`synthesize()`), and ElevenLabs' alignment."""

from __future__ import annotations

import asyncio
import base64
import io
import json
from typing import Any

import aiohttp
import av
import numpy as np
import openai
import pytest
import websockets

from agent.media.audio import Resampler

from .audio_compare import engine_pcm
from .conftest import ServerThread, wait_no_streams

TEXT = "Hello there, how are you today?"


def client(srv: ServerThread) -> openai.OpenAI:
    return openai.OpenAI(base_url=srv.url + "/v1", api_key="unused", max_retries=0, timeout=60)


def decoded(data: bytes) -> tuple[np.ndarray, int]:
    """Any container PyAV reads -> (float samples in int16 units, sample rate)."""
    with av.open(io.BytesIO(data)) as container:
        stream = container.streams.audio[0]
        rate = stream.rate
        parts = []
        for frame in container.decode(stream):
            samples = frame.to_ndarray().reshape(-1).astype(np.float32)
            parts.append(samples * 32767 if frame.format.name.startswith("flt") else samples)
    return np.concatenate(parts), rate


def at_rate(pcm: np.ndarray, rate: int) -> np.ndarray:
    """The engine's 24 kHz PCM as the server resamples it (a lower rate drops the band above its Nyquist)."""
    return Resampler(24000, rate).push(pcm.astype(np.int16)).astype(np.float32)


def level_db(pcm: np.ndarray, rate: int = 24000, below_hz: float | None = None) -> float:
    """RMS level in dB (of the band under `below_hz` only, when given: low-bitrate MP3 drops the band above
    ~7 kHz, and a random model's audio has much energy there)."""
    x = pcm.astype(np.float64)
    if below_hz is not None:
        spectrum = np.fft.rfft(x)
        spectrum[np.fft.rfftfreq(len(x), 1 / rate) > below_hz] = 0
        x = np.fft.irfft(spectrum, len(x))
    return float(20 * np.log10(np.sqrt(np.mean(np.square(x))) + 1e-9))


def centroid_hz(pcm: np.ndarray, rate: int) -> float:
    spectrum = np.abs(np.fft.rfft(pcm.astype(np.float64)))
    freqs = np.fft.rfftfreq(len(pcm), 1 / rate)
    return float((spectrum * freqs).sum() / spectrum.sum())


# ---- OpenAI ------------------------------------------------------------------------------------------
async def test_pipecat_openai_tts_service_with_a_stock_voice_name(server: ServerThread) -> None:
    """pipecat refuses voices outside OpenAI's list before sending: "alloy" must be served."""
    from pipecat.frames.frames import EndFrame, TTSAudioRawFrame, TTSSpeakFrame, TTSStoppedFrame
    from pipecat.pipeline.pipeline import Pipeline
    from pipecat.pipeline.worker import PipelineParams, PipelineWorker
    from pipecat.processors.frame_processor import FrameDirection
    from pipecat.services.openai.tts import OpenAITTSService
    from pipecat.tests.utils import QueuedFrameProcessor
    from pipecat.workers.runner import WorkerRunner

    received: asyncio.Queue[Any] = asyncio.Queue()
    tts = OpenAITTSService(api_key="unused", base_url=server.url + "/v1", sample_rate=24000,
                           settings=OpenAITTSService.Settings(voice="alloy", model="tiny"))
    sink = QueuedFrameProcessor(queue=received, queue_direction=FrameDirection.DOWNSTREAM)
    worker = PipelineWorker(Pipeline([tts, sink]), params=PipelineParams(audio_out_sample_rate=24000),
                            cancel_on_idle_timeout=False)
    runner = WorkerRunner()
    await runner.add_workers(worker)
    run = asyncio.create_task(runner.run())
    try:
        await worker.queue_frames([TTSSpeakFrame(TEXT)])
        audio = b""
        async with asyncio.timeout(60):
            while not isinstance(frame := await received.get(), TTSStoppedFrame):
                if isinstance(frame, TTSAudioRawFrame):
                    audio += frame.audio
    finally:
        await worker.queue_frame(EndFrame())
        await asyncio.wait_for(run, 20)
    got = np.frombuffer(audio, "<i2")
    want = engine_pcm(server.engine, TEXT, speaker="vivian")  # "alloy" is vivian on a CustomVoice model
    assert len(got) == len(want) and np.abs(got.astype(np.int32) - want).max() <= 8


def test_every_response_carries_a_request_id(server: ServerThread) -> None:
    raw = client(server).audio.speech.with_raw_response.create(model="tiny", voice="ryan", input="Hi.",
                                                                response_format="pcm")
    first = raw.headers.get("x-request-id")
    assert first and raw.http_response.status_code == 200
    again = client(server).audio.speech.with_raw_response.create(model="tiny", voice="ryan", input="Hi.",
                                                                response_format="pcm")
    assert again.headers.get("x-request-id") not in (None, first)
    with pytest.raises(openai.BadRequestError) as err:
        client(server).audio.speech.create(model="tiny", voice="nobody", input="Hi.")
    assert err.value.response.headers.get("x-request-id")
    models = client(server).models.with_raw_response.list()
    assert models.headers.get("x-request-id")


def test_voices_listing_names_the_aliases(server: ServerThread) -> None:
    listing = client(server).get("/audio/voices", cast_to=object)
    voices = {v["id"]: v for v in listing["data"]}  # type: ignore[index]
    assert "alloy" in voices["vivian"]["aliases"] and "ash" in voices["ryan"]["aliases"]


@pytest.mark.parametrize("speed", [0.5, 1.5, 2.0])
def test_speed_stretches_time_and_keeps_the_pitch(server: ServerThread, speed: float) -> None:
    text = "One two three four five six seven eight nine ten."
    normal = np.frombuffer(client(server).audio.speech.create(model="tiny", voice="ryan", input=text,
                                                              response_format="pcm").content, "<i2")
    fast = np.frombuffer(client(server).audio.speech.create(model="tiny", voice="ryan", input=text,
                                                            response_format="pcm", speed=speed).content, "<i2")
    assert abs(len(fast) - len(normal) / speed) <= 0.05 * len(normal) / speed, (len(fast), len(normal) / speed)
    ratio = centroid_hz(fast, 24000) / centroid_hz(normal, 24000)
    assert 0.8 <= ratio <= 1.25, ratio  # a resample would move the spectrum by the speed factor


@pytest.mark.parametrize(("body", "param"), [
    ({"voice": "nobody"}, "voice"), ({"speed": 4.5}, "speed"), ({"speed": 0.1}, "speed"),
    ({"speed": "fast"}, "speed"), ({"response_format": "ogg"}, "response_format")])
def test_bad_choices_are_400s_and_the_server_lives_on(server: ServerThread, body: dict[str, Any],
                                                      param: str) -> None:
    with pytest.raises(openai.BadRequestError) as err:
        client(server).audio.speech.create(**{"model": "tiny", "voice": "ryan", "input": "Hi.", **body})
    assert err.value.body["param"] == param  # type: ignore[index]
    assert client(server).audio.speech.create(model="tiny", voice="alloy", input="Hi.", response_format="pcm")


# ---- ElevenLabs --------------------------------------------------------------------------------------
async def test_stream_input_alignment_concatenates_to_the_text(server: ServerThread) -> None:
    url = f"ws://127.0.0.1:{server.port}/v1/text-to-speech/vivian/stream-input?sync_alignment=true"
    words = ["Hello ", "there, ", "how ", "are ", "you ", "today?"]
    async with websockets.connect(url) as ws:
        await ws.send(json.dumps({"text": " "}))
        for word in words:
            await ws.send(json.dumps({"text": word}))
        await ws.send(json.dumps({"text": ""}))
        chars: list[str] = []
        starts: list[int] = []
        audio = 0
        async for raw in ws:
            msg = json.loads(raw)
            assert "error" not in msg, msg
            if msg.get("alignment"):
                align = msg["alignment"]
                assert len(align["chars"]) == len(align["charStartTimesMs"]) == len(align["charDurationsMs"])
                chars += align["chars"]
                starts += align["charStartTimesMs"]
            audio += len(base64.b64decode(msg.get("audio") or ""))
            if msg.get("isFinal"):
                break
    assert "".join(chars) == "".join(words) and starts == sorted(starts)
    assert starts[-1] <= audio / 2 / 24000 * 1000  # (pcm_24000: 2 bytes a sample)


@pytest.mark.parametrize("fmt", ["mp3_22050_32", "mp3_44100_128", "opus_48000_64", "ulaw_8000", "pcm_16000"])
async def test_stream_input_output_formats(server: ServerThread, fmt: str) -> None:
    url = f"ws://127.0.0.1:{server.port}/v1/text-to-speech/vivian/stream-input?output_format={fmt}"
    async with websockets.connect(url) as ws:
        for text in (" ", TEXT, ""):
            await ws.send(json.dumps({"text": text}))
        data = b""
        async for raw in ws:
            msg = json.loads(raw)
            assert "error" not in msg, msg
            data += base64.b64decode(msg.get("audio") or "")
            if msg.get("isFinal"):
                break
    want = engine_pcm(server.engine, TEXT, speaker="vivian")
    if fmt == "ulaw_8000":
        assert abs(len(data) - len(want) / 3) <= 400  # one byte per 8 kHz sample
        return
    if fmt.startswith("pcm_"):
        got, rate = np.frombuffer(data, "<i2").astype(np.float32), 16000
    else:
        got, rate = decoded(data)
        assert rate == int(fmt.split("_")[1])
    assert abs(len(got) / rate - len(want) / 24000) <= 0.1
    band = 5000.0 if fmt.startswith("mp3") else None
    assert abs(level_db(got, rate, band) - level_db(at_rate(want, rate), rate, band)) <= 2.0


async def test_elevenlabs_rest_whole_and_streamed(server: ServerThread) -> None:
    async with aiohttp.ClientSession(server.url) as http:
        for path in ("/v1/text-to-speech/vivian", "/v1/text-to-speech/vivian/stream"):
            async with http.post(path + "?output_format=pcm_24000", json={"text": TEXT, "model_id": "any"},
                                 headers={"xi-api-key": "unused"}) as resp:
                assert resp.status == 200 and resp.content_type.startswith("audio/"), await resp.text()
                assert resp.headers.get("x-request-id")
                got = np.frombuffer(await resp.read(), "<i2")
            want = engine_pcm(server.engine, TEXT, speaker="vivian")
            assert len(got) == len(want) and np.abs(got.astype(np.int32) - want).max() <= 8
        async with http.post("/v1/text-to-speech/nobody/stream", json={"text": TEXT}) as resp:
            assert resp.status == 404
        async with http.post("/v1/text-to-speech/vivian/stream?output_format=wav_1", json={"text": TEXT}) as resp:
            assert resp.status == 400
        async with http.get("/v1/voices") as resp:
            voices = (await resp.json())["voices"]
            assert {"voice_id", "name", "category", "labels"} <= set(voices[0])
    assert wait_no_streams(server.engine) == 0


async def test_livekit_elevenlabs_plugin_streams_its_default_mp3_and_synthesizes_over_rest(
        server: ServerThread) -> None:
    from livekit.plugins import elevenlabs

    want = engine_pcm(server.engine, TEXT, speaker="vivian")
    async with aiohttp.ClientSession() as http:
        tts = elevenlabs.TTS(voice_id="vivian", api_key="unused", base_url=f"{server.url}/v1", http_session=http)
        assert tts._opts.encoding == "mp3_22050_32"  # the plugin's default: the server must make MP3

        stream = tts.stream()
        for word in TEXT.split(" "):
            stream.push_text(word + " ")
        stream.end_input()
        pcm: list[np.ndarray] = []
        rate = 0
        async with asyncio.timeout(60):
            async for event in stream:
                pcm.append(np.frombuffer(event.frame.data, np.int16).astype(np.float32))
                rate = event.frame.sample_rate
        await stream.aclose()
        got = np.concatenate(pcm)
        assert rate == 22050
        assert abs(len(got) / rate - len(want) / 24000) <= 0.15
        assert abs(level_db(got, rate, 5000.0) - level_db(at_rate(want, rate), rate, 5000.0)) <= 2.0

        whole: list[np.ndarray] = []
        async with asyncio.timeout(60):
            async for event in tts.synthesize(TEXT):  # POST /v1/text-to-speech/{voice}/stream
                whole.append(np.frombuffer(event.frame.data, np.int16).astype(np.float32))
        rest = np.concatenate(whole)
        assert abs(len(rest) / 22050 - len(want) / 24000) <= 0.15
        await tts.aclose()
    assert wait_no_streams(server.engine) == 0


async def test_request_id_reaches_the_log_lines_of_its_request() -> None:
    """The middleware's id is what RequestIdFormatter appends to a record logged while the request runs."""
    import logging

    from agent.server.middleware import RequestIdFormatter, RequestIdMiddleware, current

    formatter = RequestIdFormatter("%(message)s")
    lines: list[str] = []
    sent: list[dict[str, Any]] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        lines.append(formatter.format(logging.LogRecord("t", logging.INFO, __file__, 1, "inside", None, None)))
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    await RequestIdMiddleware(app)({"type": "http", "headers": [(b"x-request-id", b"abc-123")]}, None, send)
    assert lines == ["inside request_id=abc-123"] and (b"x-request-id", b"abc-123") in sent[0]["headers"]
    assert current.get() is None
    assert formatter.format(logging.LogRecord("t", logging.INFO, __file__, 1, "outside", None, None)) == "outside"
    sent.clear()
    await RequestIdMiddleware(app)({"type": "http", "headers": [(b"x-request-id", b"bad id\xff")]}, None, send)
    made = dict(sent[0]["headers"])[b"x-request-id"]
    assert made.startswith(b"req_") and lines[-1].endswith(made.decode())  # an unsafe id is replaced
