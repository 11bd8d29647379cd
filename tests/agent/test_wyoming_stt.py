"""Wyoming speech-to-text against the real `wyoming` client, with espeak-ng speech and the real recognizer
(faster-whisper tiny.en, the pinned test model) behind the same server that speaks (tiny TTS engine)."""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import tempfile
import threading
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from wyoming.asr import Transcribe, Transcript, TranscriptChunk
from wyoming.audio import AudioChunk, AudioStart, AudioStop
from wyoming.client import AsyncTcpClient
from wyoming.error import Error
from wyoming.event import Event
from wyoming.info import Describe, Info
from wyoming.ping import Ping
from wyoming.tts import Synthesize

from agent.cli.main import main
from agent.speech_in.faster_whisper import FasterWhisperRecognizer, FasterWhisperSettings
from agent.speech_in.recognizer import Transcript as SttTranscript
from agent.speech_in.service import RecognizerService, ServiceSettings
from agent.wyoming.asr import MAX_AUDIO_S, PARTIAL_SPEECH_S, Request, agreed_words
from agent.wyoming.audio_in import AudioFormat, AudioIn, BadAudio, format_of
from agent.wyoming.handler import WyomingService, WyomingSettings

from .speech_helpers import RATE, espeak, test_model_dir, wer, words
from .test_wyoming import pcm_of, read, read_until, wait_engine_idle

SENTENCE = "Please open the kitchen window and turn on the lights in the living room"  # about 4 s
CHUNK_MS = 100


@pytest.fixture(scope="module")
def recognizer() -> FasterWhisperRecognizer:
    return FasterWhisperRecognizer(FasterWhisperSettings(model=str(test_model_dir()), cpu_threads=2))


@pytest.fixture(scope="module")
def speech() -> np.ndarray:
    return espeak(SENTENCE)


@contextlib.asynccontextmanager
async def wyoming_server(engine: Any, recognizer: Any) -> AsyncIterator[WyomingService]:
    stt = RecognizerService(recognizer) if recognizer is not None else None
    svc = WyomingService(engine, WyomingSettings(uri="tcp://127.0.0.1:0"), model_name="tiny", recognizer=stt)
    await svc.start()
    try:
        yield svc
    finally:
        await svc.stop()
        if stt is not None:
            await stt.close()
        await wait_engine_idle(engine)


@pytest.fixture
async def service(engine: Any, recognizer: FasterWhisperRecognizer) -> AsyncIterator[WyomingService]:
    async with wyoming_server(engine, recognizer) as svc:
        yield svc


@contextlib.asynccontextmanager
async def client(svc: WyomingService) -> AsyncIterator[AsyncTcpClient]:
    assert svc.port
    async with AsyncTcpClient("127.0.0.1", svc.port) as c:
        yield c


def chunks_of(pcm: bytes, fmt: AudioFormat, ms: int = CHUNK_MS) -> list[AudioChunk]:
    step = fmt.rate * ms // 1000 * fmt.width * fmt.channels
    return [AudioChunk(rate=fmt.rate, width=fmt.width, channels=fmt.channels, audio=pcm[i:i + step])
            for i in range(0, len(pcm), step)]


MONO16K = AudioFormat(RATE, 2, 1)


async def send_audio(c: AsyncTcpClient, pcm: bytes, fmt: AudioFormat = MONO16K, pace: float = 0.0) -> None:
    """audio-start, the chunks (`pace`: seconds of wall time per second of audio; 0: at once), audio-stop."""
    await c.write_event(AudioStart(rate=fmt.rate, width=fmt.width, channels=fmt.channels).event())
    for chunk in chunks_of(pcm, fmt):
        await c.write_event(chunk.event())
        if pace:
            await asyncio.sleep(pace * CHUNK_MS / 1000)
    await c.write_event(AudioStop().event())


def sox(pcm16k: np.ndarray, *out_args: str) -> bytes:
    """`pcm16k` converted by sox (the raw little-endian samples of the output WAV)."""
    with tempfile.TemporaryDirectory() as tmp:
        src, dst = Path(tmp) / "in.raw", Path(tmp) / "out.raw"
        src.write_bytes(pcm16k.astype("<i2").tobytes())
        subprocess.run(["sox", "-D", "-t", "raw", "-r", str(RATE), "-e", "signed", "-b", "16", "-c", "1", str(src),
                        "-t", "raw", "-e", "signed", *out_args, str(dst)], check=True, capture_output=True)
        return dst.read_bytes()


async def test_describe_advertises_asr_next_to_the_unchanged_tts(service: WyomingService, engine: Any) -> None:
    async with client(service) as c:
        await c.write_event(Describe().event())
        info = Info.from_event(await read(c))
    assert len(info.asr) == 1
    program = info.asr[0]
    assert program.supports_transcript_streaming and program.installed and program.version
    assert program.attribution.name and program.attribution.url
    [model] = program.models
    assert model.installed and model.languages == ["en"] and model.name == "model"  # tiny.en's directory
    assert "faster-whisper" in (model.description or "")
    assert [v.name for v in info.tts[0].voices] == engine.model.speakers  # TTS as before
    assert info.tts[0].supports_synthesize_streaming


async def test_streamed_speech_gets_partials_while_it_arrives_then_the_final(service: WyomingService,
                                                                            speech: np.ndarray) -> None:
    """HA's order (transcribe, audio at real time): transcript-start, chunks before audio-stop, the final."""
    async with client(service) as c:
        events: list[tuple[float, Event]] = []

        async def collect() -> None:
            while True:
                event = await read(c, timeout=60)
                events.append((time.monotonic(), event))
                if event.type == "transcript-stop":
                    return

        reader = asyncio.create_task(collect())
        await c.write_event(Transcribe(language="en").event())
        await send_audio(c, speech.tobytes(), pace=1.0)
        stop_sent = time.monotonic()
        await asyncio.wait_for(reader, 60)
        types = [e.type for _, e in events]
        assert types[0] == "transcript-start" and types[-2:] == ["transcript", "transcript-stop"]
        assert set(types[1:-2]) == {"transcript-chunk"}, types
        early = [e for t, e in events if e.type == "transcript-chunk" and t < stop_sent]
        assert early, f"no transcript-chunk before audio-stop: {types}"
        final = Transcript.from_event(events[-2][1])
        assert final.language == "en"
        assert wer(SENTENCE, final.text) <= 0.3, final.text
        # Chunks are appended by clients: joined, they are the start of what was said.
        drafted = words("".join(TranscriptChunk.from_event(e).text for _, e in events[1:-2]))
        assert drafted and wer(" ".join(words(SENTENCE)[:len(drafted)]), " ".join(drafted)) <= 0.5, drafted

        # TTS on the same connection, after speech-to-text
        await c.write_event(Synthesize(text="Done.").event())
        assert pcm_of(await read_until(c, "audio-stop")).size >= 1920


async def test_a_legacy_client_gets_the_transcript_alone(service: WyomingService, speech: np.ndarray) -> None:
    """No `transcribe`: the one event after audio-stop is `transcript` (and nothing follows)."""
    async with client(service) as c:
        await send_audio(c, speech.tobytes())
        transcript = Transcript.from_event(await read(c, timeout=60))
        assert wer(SENTENCE, transcript.text) <= 0.3, transcript.text
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(c.read_event(), 0.5)


@pytest.mark.parametrize("out", [("44.1k stereo s16", 44100, 2, 2), ("8k mono s32", 8000, 4, 1),
                                 ("48k mono s8", 48000, 1, 1)], ids=lambda o: o[0])
async def test_other_rates_widths_and_channels_are_transcribed_the_same(service: WyomingService,
                                                                        speech: np.ndarray,
                                                                        out: tuple[str, int, int, int]) -> None:
    _, rate, width, channels = out
    fmt = AudioFormat(rate, width, channels)
    pcm = sox(speech, "-r", str(rate), "-b", str(width * 8), "-c", str(channels))
    assert len(pcm) == pytest.approx(len(speech) / RATE * rate * width * channels, rel=0.01)
    async with client(service) as c:
        await c.write_event(Transcribe().event())
        await send_audio(c, pcm, fmt)
        events = await read_until(c, "transcript-stop", timeout=60)
    text = Transcript.from_event(events[-2]).text
    assert wer(SENTENCE, text) <= 0.3, text


async def test_bad_audio_is_an_error_and_the_connection_still_serves(service: WyomingService,
                                                                    speech: np.ndarray) -> None:
    async with client(service) as c:
        async def error_then_empty_transcript(*expect_codes: str) -> None:
            events = await read_until(c, "transcript")
            codes = [Error.from_event(e).code for e in events if e.type == "error"]
            assert codes == list(expect_codes), events
            assert Transcript.from_event(events[-1]).text == ""

        # audio-chunk without audio-start: one error for the run; its audio-stop still gets a transcript
        for chunk in chunks_of(speech[:RATE].tobytes(), MONO16K):
            await c.write_event(chunk.event())
        await c.write_event(AudioStop().event())
        await error_then_empty_transcript("no_audio_start")
        await c.write_event(AudioStop().event())  # a second stop: nothing is open
        await error_then_empty_transcript("no_audio_start")

        # a huge chunk: over the cap in one piece (8 kHz s16: 31 s is 496 000 bytes, under the frame limit)
        await c.write_event(AudioStart(rate=8000, width=2, channels=1).event())
        huge = np.zeros(int((MAX_AUDIO_S + 1) * 8000), np.int16).tobytes()
        await c.write_event(AudioChunk(rate=8000, width=2, channels=1, audio=huge).event())
        assert Error.from_event(await read(c)).code == "audio_too_long"
        await c.write_event(AudioChunk(rate=8000, width=2, channels=1, audio=huge[:1600]).event())  # dropped
        await c.write_event(AudioStop().event())
        await error_then_empty_transcript()

        # a width no PCM has, and a chunk whose format is not its audio-start's
        await c.write_event(AudioStart(rate=16000, width=5, channels=1).event())
        err = Error.from_event(await read(c))
        assert err.code == "bad_audio_format" and "width" in err.text
        await c.write_event(AudioStop().event())
        await error_then_empty_transcript()
        await c.write_event(Transcribe().event())
        await c.write_event(AudioStart(rate=16000, width=2, channels=1).event())
        assert (await read(c)).type == "transcript-start"
        await c.write_event(AudioChunk(rate=16000, width=4, channels=1, audio=bytes(3200)).event())
        assert Error.from_event(await read(c)).code == "bad_audio_format"
        await c.write_event(AudioStop().event())
        events = await read_until(c, "transcript-stop")
        assert [e.type for e in events] == ["transcript", "transcript-stop"] and events[0].data["text"] == ""

        # a language tiny.en does not have
        await c.write_event(Transcribe(language="de").event())
        assert Error.from_event(await read(c)).code == "unsupported_language"
        await send_audio(c, speech[:RATE].tobytes())
        await error_then_empty_transcript()

        # and the same connection still transcribes, and speaks
        await c.write_event(Transcribe(language="en-US").event())
        await send_audio(c, speech.tobytes())
        events = await read_until(c, "transcript-stop", timeout=60)
        assert wer(SENTENCE, Transcript.from_event(events[-2]).text) <= 0.3
        await c.write_event(Synthesize(text="Still here.").event())
        assert pcm_of(await read_until(c, "audio-stop")).size >= 1920


async def test_without_a_recognizer_stt_is_unavailable_and_tts_still_works(engine: Any) -> None:
    async with wyoming_server(engine, None) as svc, client(svc) as c:
        await c.write_event(Describe().event())
        info = Info.from_event(await read(c))
        assert info.asr == [] and info.tts[0].voices
        await c.write_event(Transcribe(language="en").event())
        await c.write_event(AudioStart(rate=16000, width=2, channels=1).event())
        err = Error.from_event(await read(c))
        assert err.code == "stt_unavailable" and "--stt" in err.text
        await c.write_event(AudioChunk(rate=16000, width=2, channels=1, audio=bytes(3200)).event())
        await c.write_event(AudioStop().event())
        assert Transcript.from_event(await read(c)).text == ""
        await c.write_event(Synthesize(text="Speaking still works.").event())
        assert pcm_of(await read_until(c, "audio-stop")).size >= 1920


class Exploding:
    """A backend that fails every request (a corrupt model, a CUDA error): what the service turns into
    stt_failed. The real recognizer does not fail on demand."""

    name = "exploding"
    languages = ("en",)

    def transcribe(self, pcm16k: np.ndarray, language: str | None = None, *,
                   partial: bool = False) -> SttTranscript:
        raise RuntimeError("decoder exploded")


async def test_a_failing_recognizer_is_stt_failed_and_the_request_still_ends(engine: Any) -> None:
    async with wyoming_server(engine, Exploding()) as svc, client(svc) as c:
        await c.write_event(Transcribe().event())
        await send_audio(c, bytes(RATE * 2))
        events = await read_until(c, "transcript-stop")
        assert [e.type for e in events] == ["transcript-start", "error", "transcript", "transcript-stop"]
        assert Error.from_event(events[1]).code == "stt_failed" and "decoder exploded" in events[1].data["text"]
        await c.write_event(Ping(text="ok").event())
        assert (await read(c)).type == "pong"


class Held:
    """A backend that holds each request until `gate` opens (a real decode cannot be held at will)."""

    name = "held"
    languages = ("en",)

    def __init__(self) -> None:
        self.gate = threading.Event()
        self.entered = threading.Event()

    def transcribe(self, pcm16k: np.ndarray, language: str | None = None, *,
                   partial: bool = False) -> SttTranscript:
        self.entered.set()
        self.gate.wait(20)
        return SttTranscript(text=f"{len(pcm16k)} samples", language="en")


async def test_a_full_recognizer_queue_is_stt_busy_and_the_others_are_answered(engine: Any) -> None:
    """One final decoding, one waiting (--stt-max-pending 1): a third is refused at once, not queued."""
    backend = Held()
    stt = RecognizerService(backend, ServiceSettings(max_pending=1))
    svc = WyomingService(engine, WyomingSettings(uri="tcp://127.0.0.1:0"), model_name="tiny", recognizer=stt)
    await svc.start()
    try:
        async with client(svc) as a, client(svc) as b, client(svc) as c:
            await send_audio(a, bytes(3200))
            await asyncio.to_thread(backend.entered.wait, 10)
            await send_audio(b, bytes(6400))
            async with asyncio.timeout(10):
                while not stt.pending:
                    await asyncio.sleep(0.01)
            await send_audio(c, bytes(9600))
            err = Error.from_event(await read(c))
            assert err.code == "stt_busy"
            assert Transcript.from_event(await read(c)).text == ""
            backend.gate.set()
            assert Transcript.from_event(await read(a)).text == "1600 samples"
            assert Transcript.from_event(await read(b)).text == "3200 samples"
            await send_audio(c, bytes(9600))  # the refused client goes on
            assert Transcript.from_event(await read(c)).text == "4800 samples"
    finally:
        backend.gate.set()
        await svc.stop()
        await stt.close()


def test_chunks_carry_only_words_that_followed_what_was_sent() -> None:
    assert agreed_words([], "Please open") == ["Please"]  # the last word may be cut: held back
    assert agreed_words(["Please"], "please open the kitchen") == ["open", "the"]
    assert agreed_words(["Please", "open"], "Please, open the kitchen") == ["the"]  # punctuation and case aside
    assert agreed_words(["Please", "open"], "Peas open the kitchen") == []  # revised: wait for the final
    assert agreed_words(["Please", "open"], "Please open") == []
    assert agreed_words([], "") == []


def test_audio_conversion_reads_every_width_and_averages_channels(speech: np.ndarray) -> None:
    ref = AudioIn(MONO16K).convert(speech.tobytes())
    assert np.array_equal(ref, speech)  # 16 kHz s16 mono passes through untouched
    wide = (speech.astype("<i4") << 16).tobytes()
    assert np.array_equal(AudioIn(AudioFormat(RATE, 4, 1)).convert(wide), speech)
    s24 = (speech.astype("<i4") << 8).view(np.uint8).reshape(-1, 4)[:, :3].tobytes()
    assert np.array_equal(AudioIn(AudioFormat(RATE, 3, 1)).convert(s24), speech)
    stereo = np.stack([speech, np.zeros_like(speech)], axis=1).tobytes()  # one channel silent: half level
    half = AudioIn(AudioFormat(RATE, 2, 2)).convert(stereo)
    assert np.abs(half.astype(np.int32) - speech.astype(np.int32) // 2).max() <= 1
    with pytest.raises(BadAudio, match="whole number"):
        AudioIn(AudioFormat(RATE, 2, 2)).convert(b"\x00" * 6)
    for bad in ({"rate": 0, "width": 2, "channels": 1}, {"rate": 16000, "width": "2", "channels": 1},
                {"rate": 16000, "width": 2, "channels": 0}, {"rate": 16000, "width": 2}, {}):
        with pytest.raises(BadAudio):
            format_of(bad, "audio-start")


def test_cli_refuses_a_missing_stt_model_before_loading_anything(capsys: pytest.CaptureFixture[str]) -> None:
    started = time.monotonic()
    assert main(["wyoming", "--model", "/nonexistent-tts", "--stt", "faster-whisper:/nonexistent"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: --stt faster-whisper:") and "/nonexistent" in err[0], err
    assert "nonexistent-tts" not in err[0]  # the recognizer is checked first
    assert time.monotonic() - started < 10


def test_a_request_knows_whether_the_user_is_still_speaking(speech: np.ndarray) -> None:
    """The VAD over 100 ms chunks: speaking through the sentence, not once PARTIAL_SPEECH_S of silence follows."""
    req = Request(id=1, language="en", streaming=True)
    heard: list[bool] = []
    for chunk in np.array_split(np.concatenate([speech, np.zeros(RATE, np.int16)]),
                                (len(speech) + RATE) // (RATE // 10)):
        req.samples += len(chunk)
        req.hear(chunk)
        heard.append(req.speaking())
    spoken = len(speech) // (RATE // 10)
    assert sum(heard[:spoken]) >= 0.7 * spoken  # (the pauses between words may be quiet)
    silent_after = int(PARTIAL_SPEECH_S * 10) + 1
    assert not any(heard[spoken + silent_after:]), heard[spoken:]


async def test_no_partial_starts_in_the_silence_that_ends_a_command(service: WyomingService,
                                                                   speech: np.ndarray) -> None:
    """A partial decode cannot be interrupted: one started in the closing silence would delay the final."""
    assert service.recognizer is not None
    stats = service.recognizer.stats
    async with client(service) as c:
        await c.write_event(Transcribe(language="en").event())
        await c.write_event(AudioStart(rate=RATE, width=2, channels=1).event())
        for chunk in chunks_of(speech.tobytes(), MONO16K):
            await c.write_event(chunk.event())
        async with asyncio.timeout(30):  # the partial started at 1 s of speech has finished
            while stats.done < 1:
                await asyncio.sleep(0.02)
        before = stats.done
        # over 1 s of new audio since that partial, the service idle: only the silence keeps a partial from starting
        await c.write_event(AudioChunk(rate=RATE, width=2, channels=1, audio=bytes(2 * 3 * RATE)).event())
        await c.write_event(AudioStop().event())
        events = await read_until(c, "transcript-stop", timeout=60)
        final = next(Transcript.from_event(e) for e in events if e.type == "transcript")
        assert wer(SENTENCE, final.text) <= 0.3, final.text
        assert stats.done == before + 1, (before, stats.done)  # the final alone
