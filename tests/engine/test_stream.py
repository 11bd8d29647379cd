"""A stream's consumer side without an engine: the notify hook, poll, and failure on iteration."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from tts_engine import Frame, Stream, StreamEnd, StreamFailed


def _stream() -> Stream:
    # Voice, sampling and tokenizer are only read by the producer side and the scheduler.
    return Stream(1, None, None, "default", None, lambda: None, 100)  # type: ignore[arg-type]


def _frame(index: int) -> Frame:
    return Frame(index=index, pcm=np.full(1920, index, dtype=np.int16), codes=np.zeros(16, dtype=np.int64),
                 text_tokens_consumed=index)


def test_notify_on_every_frame_and_the_end_and_poll_takes_them_in_order() -> None:
    stream = _stream()
    calls: list[int] = []
    stream.set_notify(lambda: calls.append(1))
    assert stream.poll() is None  # nothing queued yet
    assert stream.deliver(_frame(0)) and stream.deliver(_frame(1))
    assert len(calls) == 2
    stream.close(StreamEnd("eos", 2))
    assert len(calls) == 3
    stream.close(StreamEnd("cap", 2))  # a second close changes nothing and notifies nobody
    assert len(calls) == 3
    first, second = stream.poll(), stream.poll()
    assert isinstance(first, Frame) and isinstance(second, Frame)
    assert (first.index, second.index) == (0, 1)
    assert stream.poll() == StreamEnd("eos", 2) and stream.poll() == StreamEnd("eos", 2)  # the end stays


def test_cancel_notifies_and_drops_queued_frames() -> None:
    stream = _stream()
    stream.deliver(_frame(0))
    calls: list[int] = []
    stream.set_notify(lambda: calls.append(1))
    stream.cancel()
    assert calls == [1]
    assert stream.poll() == StreamEnd("cancelled", 1)
    assert not stream.deliver(_frame(1))  # nothing after a cancel
    assert calls == [1]


def test_removed_hook_is_not_called() -> None:
    stream = _stream()
    calls: list[int] = []
    stream.set_notify(lambda: calls.append(1))
    stream.set_notify(None)
    stream.deliver(_frame(0))
    assert calls == []


def test_hook_runs_outside_the_lock_and_its_errors_stay_with_it() -> None:
    stream = _stream()
    seen: list[Frame | StreamEnd | None] = []
    stream.set_notify(lambda: seen.append(stream.poll()))  # re-enters the stream: a deadlock under the lock
    worker = threading.Thread(target=stream.deliver, args=(_frame(0),), daemon=True)
    worker.start()
    worker.join(5)
    assert not worker.is_alive()
    assert len(seen) == 1 and isinstance(seen[0], Frame) and seen[0].index == 0

    def broken() -> None:
        raise RuntimeError("consumer bug")

    stream.set_notify(broken)
    assert stream.deliver(_frame(1))  # the engine thread goes on; the frame is queued
    assert isinstance(stream.poll(), Frame)


def test_iteration_raises_stream_failed_after_the_frames() -> None:
    stream = _stream()
    stream.deliver(_frame(0))
    end = StreamEnd("error", 1, error="RuntimeError: boom")
    stream.close(end)
    got: list[int] = []
    with pytest.raises(StreamFailed, match="boom") as info:
        for frame in stream:
            got.append(frame.index)
    assert got == [0]
    assert info.value.end == end
    frames, collected_end = stream.collect(timeout=1)  # collect reports the end instead of raising
    assert frames == [] and collected_end == end


@pytest.mark.parametrize("reason", ["eos", "cap", "cancelled", "empty"])
def test_iteration_ends_normally_for_other_reasons(reason: str) -> None:
    stream = _stream()
    stream.deliver(_frame(0))
    stream.close(StreamEnd(reason, 1))
    assert [f.index for f in stream] == [0]
