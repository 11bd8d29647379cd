"""Voice in end to end, with real speech and a real recognizer: espeak-ng sentences -> VAD flags -> TurnCutter
-> UserTranscriber -> RecognizerService -> faster-whisper tiny.en (the pinned, hash-checked test model)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import numpy as np
import pytest

from agent.speech_in.faster_whisper import FasterWhisperRecognizer, FasterWhisperSettings
from agent.speech_in.recognizer import STT_FAILED, STT_UNAVAILABLE, Transcript
from agent.speech_in.service import RecognizerService
from agent.speech_in.transcriber import TranscriberSettings, UserTranscriber
from agent.speech_in.turns import TurnCutter, TurnEnded, TurnSettings
from tests.agent.speech_helpers import espeak, silence, test_model_dir, vad_frames, wer, words

SENTENCE = "Please open the kitchen window and turn on the lights"
LONG = ("Could you please tell me the weather forecast for tomorrow morning and remind me to call my sister "
        "after lunch")  # about 6 s


@pytest.fixture(scope="module")
def recognizer() -> FasterWhisperRecognizer:
    return FasterWhisperRecognizer(FasterWhisperSettings(model=str(test_model_dir()), cpu_threads=2))


@pytest.fixture(scope="module")
def long_speech() -> np.ndarray:
    return espeak(LONG)


@pytest.fixture
async def service(recognizer: FasterWhisperRecognizer) -> AsyncIterator[RecognizerService]:
    svc = RecognizerService(recognizer)
    yield svc
    await svc.close()


class Events:
    def __init__(self) -> None:
        self.items: list[dict[str, Any]] = []
        self._changed = asyncio.Event()

    def __call__(self, event: dict[str, Any]) -> None:
        self.items.append(event)
        self._changed.set()

    def of(self, kind: str) -> list[dict[str, Any]]:
        return [e for e in self.items if e["type"] == kind]

    async def wait_for(self, kind: str, n: int = 1, timeout: float = 30.0) -> list[dict[str, Any]]:
        async with asyncio.timeout(timeout):
            while len(self.of(kind)) < n:
                self._changed.clear()
                await self._changed.wait()
        return self.of(kind)


def push_all(transcriber: UserTranscriber, pcm: np.ndarray) -> list:
    events = []
    for frame, speech in vad_frames(pcm):
        events += transcriber.push(frame, speech)
    return events


def cut(pcm: np.ndarray, settings: TurnSettings | None = None) -> list[TurnEnded]:
    cutter = TurnCutter(settings)
    ends: list[TurnEnded] = []
    for frame, speech in vad_frames(pcm):
        ends += [e for e in cutter.push(frame, speech) if isinstance(e, TurnEnded)]
    return ends


async def test_a_spoken_sentence_becomes_one_final_transcript(service: RecognizerService) -> None:
    events = Events()
    transcriber = UserTranscriber(service, events, TranscriberSettings(partial_every_ms=0))
    push_all(transcriber, np.concatenate([silence(0.7), espeak(SENTENCE), silence(1.0)]))
    (final,) = await events.wait_for("user.transcript")
    assert wer(SENTENCE, final["text"]) <= 0.3, final["text"]
    assert final["turn_id"] == "turn_1" and final["language"] == "en" and not final["capped"]
    assert final["start_ms"] == pytest.approx(400, abs=40)  # speech at 700 ms, minus the 300 ms pre-roll
    assert events.of("user.transcript.delta") == [] and events.of("error") == []
    await transcriber.close()


async def test_partials_come_before_the_final(service: RecognizerService, long_speech: np.ndarray) -> None:
    events = Events()
    transcriber = UserTranscriber(service, events, TranscriberSettings(partial_every_ms=1000))
    frames = list(vad_frames(np.concatenate([silence(0.5), long_speech, silence(1.0)])))
    half = len(frames) // 2
    for frame, speech in frames[:half]:
        transcriber.push(frame, speech)
    (first,) = await events.wait_for("user.transcript.delta")  # the turn is still open here
    assert transcriber.cutter.in_turn
    for frame, speech in frames[half:]:
        transcriber.push(frame, speech)
    (final,) = await events.wait_for("user.transcript")
    kinds = [e["type"] for e in events.items]
    assert kinds[-1] == "user.transcript" and kinds.count("user.transcript") == 1
    assert all(e["turn_id"] == final["turn_id"] for e in events.items)
    # the first partial heard the beginning of the sentence, the final all of it
    head = words(first["text"])
    assert head and wer(" ".join(words(LONG)[:len(head)]), first["text"]) <= 0.4, first["text"]
    assert wer(LONG, final["text"]) <= 0.3, final["text"]
    await transcriber.close()


async def test_pre_roll_keeps_a_soft_first_word(service: RecognizerService) -> None:
    """"seven", quiet (espeak amplitude 20, about -38 dBFS), then the sentence at full level: the VAD's run
    starts inside the soft "s", so without a pre-roll the turn begins after it and the word is lost."""
    audio = np.concatenate([silence(0.5), espeak("seven", amplitude=20), espeak("apples are on the table"),
                            silence(1.0)])
    texts = {}
    for pre_roll_ms in (300, 0):
        (turn,) = cut(audio, TurnSettings(pre_roll_ms=pre_roll_ms))
        texts[pre_roll_ms] = (await service.transcribe(turn.pcm)).text
    assert {"seven", "7"} & set(words(texts[300])), texts
    assert not {"seven", "7"} & set(words(texts[0])), texts
    assert wer("apples are on the table", texts[300].lower().replace("seven", "").replace("7", "")) <= 0.4


async def test_a_turn_over_the_cap_is_cut_and_continues(service: RecognizerService,
                                                        long_speech: np.ndarray) -> None:
    events = Events()
    settings = TranscriberSettings(turns=TurnSettings(max_turn_ms=4000), partial_every_ms=0)
    transcriber = UserTranscriber(service, events, settings)
    turn_events = push_all(transcriber, np.concatenate([silence(0.5), long_speech, silence(1.0)]))
    ends = [e for e in turn_events if isinstance(e, TurnEnded)]
    assert len(ends) >= 2 and all(e.capped for e in ends[:-1]) and not ends[-1].capped
    assert all(e.duration_ms <= 4000 for e in ends)
    finals = await events.wait_for("user.transcript", len(ends))
    assert [f["capped"] for f in finals] == [e.capped for e in ends]
    joined = " ".join(f["text"] for f in finals)
    # a word may be split at a cut, so the pieces are held to a looser bound than a whole turn
    assert all(words(f["text"]) for f in finals) and wer(LONG, joined) <= 0.4, joined
    await transcriber.close()


async def test_silence_and_a_noise_burst_give_no_turn(service: RecognizerService) -> None:
    rng = np.random.default_rng(3)
    floor = (rng.standard_normal(32000 * 2) * 30).astype(np.int16)
    floor[40000:41600] += (rng.standard_normal(1600) * 8000).astype(np.int16)  # 100 ms knock
    events = Events()
    transcriber = UserTranscriber(service, events)
    assert push_all(transcriber, np.concatenate([silence(2.0), floor])) == []
    assert transcriber.end() == [] and events.items == []
    # and the recognizer itself makes up nothing from silence
    assert (await service.transcribe(silence(2.0))).text == ""
    await transcriber.close()


async def test_word_timings_fall_inside_the_turn() -> None:
    backend = FasterWhisperRecognizer(FasterWhisperSettings(model=str(test_model_dir()), cpu_threads=2,
                                                            word_timestamps=True))
    service = RecognizerService(backend)
    (turn,) = cut(np.concatenate([silence(0.5), espeak(SENTENCE), silence(1.0)]))
    transcript = await service.transcribe(turn.pcm)
    assert [w for w in words(" ".join(w.text for w in transcript.words))] == words(transcript.text)
    starts = [w.start_ms for w in transcript.words]
    assert starts == sorted(starts) and starts[0] >= 0 and transcript.words[-1].end_ms <= turn.duration_ms + 1
    await service.close()


class FailsOnce:
    name = "fails-once"

    def __init__(self, inner: FasterWhisperRecognizer) -> None:
        self.inner = inner
        self.calls = 0

    def transcribe(self, pcm16k: np.ndarray, language: str | None = None, *, partial: bool = False) -> Transcript:
        self.calls += 1
        if self.calls == 1:
            raise RuntimeError("CUDA out of memory (simulated)")
        return self.inner.transcribe(pcm16k, language, partial=partial)


async def test_a_failing_backend_is_reported_and_the_next_turn_is_transcribed(
        recognizer: FasterWhisperRecognizer) -> None:
    service = RecognizerService(FailsOnce(recognizer))
    events = Events()
    transcriber = UserTranscriber(service, events, TranscriberSettings(partial_every_ms=0))
    phrase = espeak("stop talking now")
    push_all(transcriber, np.concatenate([silence(0.5), phrase, silence(1.0), phrase, silence(1.0)]))
    (error,) = await events.wait_for("error")
    assert error["code"] == STT_FAILED and error["turn_id"] == "turn_1" and "out of memory" in error["message"]
    (final,) = await events.wait_for("user.transcript")
    assert final["turn_id"] == "turn_2" and wer("stop talking now", final["text"]) <= 0.34, final["text"]
    await transcriber.close()
    await service.close()


async def test_no_recognizer_reports_stt_unavailable_per_turn() -> None:
    events = Events()
    transcriber = UserTranscriber(RecognizerService(None), events)
    push_all(transcriber, np.concatenate([silence(0.5), espeak("hello"), silence(1.0)]))
    (error,) = await events.wait_for("error")
    assert error["code"] == STT_UNAVAILABLE and error["turn_id"] == "turn_1"
    await transcriber.close()
