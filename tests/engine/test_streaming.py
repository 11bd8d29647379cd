"""The dual-track streaming engine: incremental text in, frames out, batched, cancellable."""

from __future__ import annotations

import random
import threading
import time

import numpy as np
import pytest
import torch

from tts_engine import Engine, EngineSettings, load_model

TEXT = "Hello there, how are you doing today? Fine, thanks."


@pytest.fixture(scope="module")
def engine(tiny_checkpoint):  # type: ignore[no-untyped-def]
    # A model of its own: the engine's thread owns its KV caches while it runs.
    eng = Engine(load_model(tiny_checkpoint("custom_voice"), device="cpu"), EngineSettings(max_streams=8))
    yield eng
    eng.close()


def _codes(frames) -> torch.Tensor:  # type: ignore[no-untyped-def]
    return torch.from_numpy(np.stack([f.codes for f in frames]))


def _feed(stream, pieces: list[str], delays: list[float] | None = None) -> None:  # type: ignore[no-untyped-def]
    for i, piece in enumerate(pieces):
        stream.push_text(piece)
        if delays:
            time.sleep(delays[i % len(delays)])
    stream.finish()


def _words(text: str) -> list[str]:
    words = text.split(" ")
    return [w + " " for w in words[:-1]] + [words[-1]]


@pytest.mark.parametrize("greedy", [True, False])
def test_char_word_all_and_random_chunkings_give_identical_codes(engine, tiny_model, greedy: bool) -> None:  # type: ignore[no-untyped-def]
    whole = tiny_model("custom_voice").synthesize(TEXT, speaker="vivian", greedy=greedy, seed=7)
    rng = random.Random(0)
    feeds = {"all": [TEXT], "word": _words(TEXT), "char": list(TEXT)}
    for trial in range(3):
        cuts = sorted(rng.sample(range(1, len(TEXT)), rng.randint(1, 12)))
        feeds[f"random{trial}"] = [TEXT[a:b] for a, b in zip([0, *cuts], [*cuts, len(TEXT)], strict=True)]
    for name, pieces in feeds.items():
        stream = engine.open_stream(speaker="vivian", greedy=greedy, seed=7)
        delays = [rng.uniform(0, 0.02) for _ in range(5)] if name.startswith("random") else None
        threading.Thread(target=_feed, args=(stream, pieces, delays)).start()
        frames, end = stream.collect()
        assert end.reason == "eos", name
        assert torch.equal(_codes(frames), whole.codes), name
        assert [f.index for f in frames] == list(range(len(frames)))
    audio = np.concatenate([f.pcm for f in frames]).astype(np.float32) / 32767.0
    assert np.abs(audio - whole.audio).max() < 1e-4 + 1 / 32767  # exact decoder + int16 rounding


def test_streams_batched_together_equal_each_alone(engine) -> None:  # type: ignore[no-untyped-def]
    texts = ["Good morning to you all.", "A much longer sentence, which keeps going for a while longer.",
             "Short one."]
    solo = []
    for i, text in enumerate(texts):
        stream = engine.open_stream(speaker="ryan", seed=100 + i)
        _feed(stream, [text])
        solo.append(stream.collect()[0])
    streams = [engine.open_stream(speaker="ryan", seed=100 + i) for i in range(len(texts))]
    threads = [threading.Thread(target=_feed, args=(s, _words(t), [0.003])) for s, t in zip(streams, texts, strict=True)]
    for t in threads:
        t.start()
    together = [s.collect()[0] for s in streams]
    assert max(engine.scheduler.batch_sizes[-40:]) > 1, "the streams never shared a step"
    for alone, batched in zip(solo, together, strict=True):
        assert torch.equal(_codes(alone), _codes(batched))
        diff = np.abs(np.concatenate([f.pcm for f in alone]).astype(int) - np.concatenate([f.pcm for f in batched]))
        assert diff.max() <= 4  # int16 steps: float rounding of batched matmuls only


def test_cancel_stops_the_stream_and_others_keep_going(engine) -> None:  # type: ignore[no-untyped-def]
    victim = engine.open_stream(speaker="vivian", seed=1)
    other = engine.open_stream(speaker="serena", seed=2)
    victim.push_text("This utterance will be cut off after its first frame, well before it ends ")
    other.push_text("And this one carries on to the end.")
    other.finish()
    first = victim.next_frame(timeout=30)
    assert first is not None
    victim.cancel()
    assert victim.next_frame(timeout=1) is None and victim.end.reason == "cancelled"
    time.sleep(0.3)
    assert victim.next_frame(timeout=1) is None  # nothing was delivered after the cancel
    frames, end = other.collect()
    assert end.reason == "eos" and len(frames) > 3
    with pytest.raises(RuntimeError):
        victim.push_text("more")


def test_starved_stream_waits_and_resumes_within_a_step(engine) -> None:  # type: ignore[no-untyped-def]
    stream = engine.open_stream(speaker="vivian", greedy=True)
    stream.push_text("One two three ")  # commits "One", " two", " three"? the last piece is held back
    got = []
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            frame = stream.next_frame(timeout=0.5)
        except TimeoutError:
            break
        got.append(frame)
    committed = len(stream.snapshot()[0])
    # Frame f needs text token f + 1: with k tokens committed, at most k frames (never tts_pad early).
    assert 1 <= len(got) <= committed
    steps_before = engine.scheduler.steps
    t0 = time.monotonic()
    stream.push_text("four five six seven eight")
    frame = stream.next_frame(timeout=10)
    assert frame is not None and frame.index == len(got)
    assert engine.scheduler.steps - steps_before <= 2  # the very next talker step served it
    assert time.monotonic() - t0 < 5
    stream.finish()
    _, end = stream.collect()
    assert end.reason == "eos"


def test_lead_limits_how_far_a_stream_runs_ahead(tiny_model) -> None:  # type: ignore[no-untyped-def]
    with Engine(tiny_model("custom_voice"), EngineSettings(max_streams=2, max_lead_frames=3)) as eng:
        stream = eng.open_stream(speaker="vivian", greedy=True)
        _feed(stream, [TEXT])
        time.sleep(1.0)
        assert stream.lead() == 3  # produced 3 frames nobody consumed, then held
        frames, end = stream.collect()
        assert end.reason == "eos" and len(frames) > 3


def test_empty_utterance_and_bad_voice(engine) -> None:  # type: ignore[no-untyped-def]
    stream = engine.open_stream(speaker="vivian")
    stream.push_text("   ")
    stream.finish()
    frames, end = stream.collect()
    assert frames == [] and end.reason == "empty"
    with pytest.raises(ValueError, match="unknown speaker"):
        engine.open_stream(speaker="nobody")
    with pytest.raises(ValueError, match="unsupported language"):
        engine.open_stream(speaker="vivian", language="klingon")


def test_closing_the_engine_ends_open_streams(tiny_model) -> None:  # type: ignore[no-untyped-def]
    eng = Engine(tiny_model("custom_voice"), EngineSettings(max_streams=1))
    live = eng.open_stream(speaker="vivian")
    live.push_text("Waiting for more text that never comes ")
    queued = eng.open_stream(speaker="vivian")  # no free row: waits in the queue
    time.sleep(0.5)
    eng.close()
    for stream in (live, queued):
        _, end = stream.collect(timeout=5)
        assert end.reason == "cancelled" and end.error == "engine closed"


def test_one_running_engine_per_model(tiny_model) -> None:  # type: ignore[no-untyped-def]
    model = tiny_model("custom_voice")
    with Engine(model, EngineSettings(max_streams=1)):
        with pytest.raises(RuntimeError, match="already drives a running Engine"):
            Engine(model)
        with pytest.raises(RuntimeError, match="an Engine is running on this model"):
            model.synthesize("Hi.", speaker="vivian")
    assert model.synthesize("Hi.", speaker="vivian").ended_by == "eos"
