"""agent.media.frames: an engine stream's frames on the event loop, and a failed stream raising there."""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

import numpy as np
import pytest

from agent.media.frames import frames
from tts_engine import Engine, EngineSettings, Frame, Stream, StreamEnd, StreamFailed, load_model

TEXT = "Hello there, how are you doing today? Fine, thanks."


def _stream() -> Stream:
    # Voice, sampling and tokenizer are only read by the producer side and the scheduler.
    return Stream(1, None, None, "default", None, lambda: None, 100)  # type: ignore[arg-type]


def _frame(index: int) -> Frame:
    return Frame(index=index, pcm=np.zeros(1920, dtype=np.int16), codes=np.zeros(16, dtype=np.int64),
                 text_tokens_consumed=index)


def _produce(stream: Stream, n: int, end: StreamEnd, delay_s: float = 0.01, first: int = 0) -> threading.Thread:
    """Deliver frames first..first+n-1, then the end, from another thread (as the engine thread does)."""

    def run() -> None:
        for i in range(first, first + n):
            time.sleep(delay_s)
            stream.deliver(_frame(i))
        stream.close(end)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


async def _collect(stream: Stream) -> list[int]:
    return [frame.index async for frame in frames(stream)]


def test_frames_from_another_thread_in_order_until_the_end() -> None:
    stream = _stream()
    stream.deliver(_frame(0))  # queued before the consumer starts: taken without any notification

    async def main() -> list[int]:
        _produce(stream, 5, StreamEnd("eos", 6), first=1)
        return await asyncio.wait_for(_collect(stream), 10)

    assert asyncio.run(main()) == list(range(6))


def test_failed_stream_raises_after_its_frames() -> None:
    stream = _stream()
    end = StreamEnd("error", 3, error="RuntimeError: step failed")

    async def main() -> list[int]:
        got: list[int] = []
        _produce(stream, 3, end)
        with pytest.raises(StreamFailed, match="step failed") as info:
            async for frame in frames(stream):
                got.append(frame.index)
        assert info.value.end == end
        return got

    assert asyncio.run(asyncio.wait_for(main(), 10)) == [0, 1, 2]


@pytest.mark.parametrize("reason", ["eos", "cap", "empty"])
def test_other_ends_finish_quietly(reason: str) -> None:
    stream = _stream()

    async def main() -> list[int]:
        _produce(stream, 2, StreamEnd(reason, 2))
        return await asyncio.wait_for(_collect(stream), 10)

    assert asyncio.run(main()) == [0, 1]


def test_cancel_from_the_loop_ends_the_iteration() -> None:
    stream = _stream()

    async def main() -> list[int]:
        got: list[int] = []
        _produce(stream, 50, StreamEnd("eos", 50), delay_s=0.02)
        async for frame in frames(stream):
            got.append(frame.index)
            if frame.index == 2:
                stream.cancel()
        return got

    assert asyncio.run(asyncio.wait_for(main(), 10)) == [0, 1, 2]
    assert stream.end is not None and stream.end.reason == "cancelled"


def test_async_iteration_does_not_block_the_loop(engine: Any) -> None:
    async def main() -> tuple[int, int]:
        stream = engine.open_stream(speaker="vivian", greedy=True)
        ticks = 0

        async def ticker() -> None:
            nonlocal ticks
            while True:
                ticks += 1
                await asyncio.sleep(0.005)

        task = asyncio.create_task(ticker())
        words = TEXT.split(" ")
        for word in [w + " " for w in words[:-1]] + [words[-1]]:
            stream.push_text(word)
        stream.finish()
        n = 0
        async for _frame in frames(stream):
            n += 1
        task.cancel()
        return n, ticks

    n, ticks = asyncio.run(main())
    assert n > 5 and ticks > n


def test_an_engine_step_failure_reaches_the_consumer_as_stream_failed(tiny_checkpoint: Any) -> None:
    eng = Engine(load_model(tiny_checkpoint("custom_voice"), device="cpu"), EngineSettings(max_streams=2))
    try:
        step = eng.scheduler._step
        steps = 0

        def failing_step() -> bool:
            nonlocal steps
            steps += 1
            if steps == 4:
                raise RuntimeError("injected step failure")
            return step()

        eng.scheduler._step = failing_step  # type: ignore[method-assign]

        async def main() -> None:
            stream = eng.open_stream(speaker="vivian", text=TEXT, greedy=True)
            with pytest.raises(StreamFailed, match="injected step failure") as info:
                async for _frame in frames(stream):
                    pass
            assert info.value.end.reason == "error"

        asyncio.run(asyncio.wait_for(main(), 60))
    finally:
        eng.close()
