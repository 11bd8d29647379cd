"""One utterance as seen by its producer and its consumer: text in (any fragments), 80 ms frames out.

The producer side (`push_text`, `finish`, `cancel`) may be called from any thread; the scheduler
thread reads the committed token ids and emits frames. Frames are consumed with blocking calls
(`next_frame`, iteration) or without blocking: `set_notify(callback)` is called whenever a frame or the
end is queued and `poll()` takes what is ready, so an event loop wakes itself (agent's `frames()`
adapter does that with `call_soon_threadsafe`); this package has no asyncio.
"""

from __future__ import annotations

import collections
import logging
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # types only: a consumer importing Frame, StreamEnd or StreamFailed pulls no torch
    from ..sampling.processors import SamplingParams
    from ..synthesis.prompt import Voice
    from ..text.incremental import IncrementalTokenizer

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Frame:
    index: int  # frame number within the utterance (0-based)
    pcm: np.ndarray  # (1920,) int16, 24 kHz mono
    codes: np.ndarray  # (16,) int64
    text_tokens_consumed: int  # target text tokens the model had read when it produced this frame


@dataclass(frozen=True)
class StreamEnd:
    reason: str  # "eos" | "cap" | "cancelled" | "error" | "empty"
    frames: int
    error: str | None = None


class StreamFailed(RuntimeError):
    """The engine failed this stream (reason "error"); `end` says how far it got and why."""

    def __init__(self, end: StreamEnd) -> None:
        super().__init__(f"stream failed after {end.frames} frames: {end.error}")
        self.end = end


class Stream:
    """An utterance being synthesized. Create with `Engine.open_stream`."""

    def __init__(self, stream_id: int, voice: Voice, sampling: SamplingParams, eos_policy: str,
                 tokenizer: IncrementalTokenizer, wake: Callable[[], None], max_text_chars: int) -> None:
        self.id, self.voice, self.sampling, self.eos_policy = stream_id, voice, sampling, eos_policy
        self._tokenizer = tokenizer
        self._wake = wake
        self._max_text_chars = max_text_chars
        self._lock = threading.Lock()
        self._token_ids: list[int] = []
        self._finished = False
        self._cancelled = False
        self._frames: collections.deque[Frame | StreamEnd] = collections.deque()
        self._ready = threading.Condition(self._lock)
        self._consumed = 0
        self._emitted = 0
        self._end: StreamEnd | None = None
        self._notify: Callable[[], None] | None = None

    # ---- producer side -------------------------------------------------------------------------
    def push_text(self, fragment: str) -> None:
        if not isinstance(fragment, str):
            raise TypeError("push_text takes str")
        if not fragment.isascii():
            try:
                fragment.encode("utf-8")
            except UnicodeEncodeError:  # checked before any state changes: the stream stays usable
                raise ValueError("text holds a lone surrogate (not valid Unicode)") from None
        with self._lock:
            if self._finished or self._cancelled:
                raise RuntimeError("stream is finished or cancelled: open a new one")
            if len(self._tokenizer.text) + len(fragment) > self._max_text_chars:
                raise ValueError(f"utterance text over {self._max_text_chars} characters")
            self._token_ids += self._tokenizer.push(fragment)
        self._wake()

    def finish(self) -> None:
        """End of input: the remaining text is committed and tts_eos follows it."""
        with self._lock:
            if self._finished or self._cancelled:
                return
            self._token_ids += self._tokenizer.finish()
            self._finished = True
        self._wake()

    def cancel(self) -> None:
        """Stop now: takes effect before the next engine step; no frame is delivered after this call."""
        with self._lock:
            if self._end is not None or self._cancelled:
                return
            self._cancelled = True
            self._frames.clear()
            self._close_locked(StreamEnd("cancelled", self._emitted))
        self._call_notify()
        self._wake()

    def __enter__(self) -> Stream:
        return self

    def __exit__(self, *exc: object) -> None:
        """Leaving the block stops the stream (a no-op once it ended): its engine row is never left behind."""
        self.cancel()

    @property
    def text(self) -> str:
        """Every character accepted so far (leading whitespace of the utterance dropped)."""
        return self._tokenizer.text

    # ---- scheduler side (engine thread) --------------------------------------------------------
    def snapshot(self) -> tuple[list[int], bool, bool]:
        """(committed token ids, finished, cancelled) — a consistent view for one step."""
        with self._lock:
            return list(self._token_ids), self._finished, self._cancelled

    def lead(self) -> int:
        with self._lock:
            return self._emitted - self._consumed

    def deliver(self, frame: Frame) -> bool:
        """Queue a frame for the consumer; False (and dropped) if the stream was cancelled meanwhile."""
        with self._lock:
            if self._cancelled or self._end is not None:
                return False
            self._frames.append(frame)
            self._emitted += 1
            self._ready.notify_all()
        self._call_notify()
        return True

    def close(self, end: StreamEnd) -> None:
        with self._lock:
            if self._end is not None:
                return
            self._close_locked(end)
        self._call_notify()

    def _close_locked(self, end: StreamEnd) -> None:
        self._end = end
        self._frames.append(end)
        self._ready.notify_all()

    def _call_notify(self) -> None:
        # Outside the lock, so the callback may call back into the stream (poll, cancel).
        notify = self._notify
        if notify is None:
            return
        try:
            notify()
        except Exception:  # a consumer's bug must not kill the engine thread that delivers for every stream
            log.exception("stream %d: notify callback failed", self.id)

    # ---- consumer side -------------------------------------------------------------------------
    @property
    def end(self) -> StreamEnd | None:
        return self._end

    def set_notify(self, callback: Callable[[], None] | None) -> None:
        """Call `callback()` (no arguments) whenever a frame or the end is queued; None removes it.

        It runs on the thread that queued the item (the engine thread, or the one that called `cancel`),
        so it must be quick and thread-safe: wake the consumer, then let it `poll()`. Items queued
        before the callback was set do not call it: poll once after setting it."""
        self._notify = callback

    def poll(self) -> Frame | StreamEnd | None:
        """Without blocking: the next frame, the end (repeated on later calls), or None when nothing is
        ready yet."""
        with self._lock:
            if not self._frames:
                return None
            frame = self._take_locked()
            return self._end if frame is None else frame

    def next_frame(self, timeout: float | None = None) -> Frame | None:
        """Block until the next frame; None at the end of the stream (see `.end`)."""
        with self._ready:
            if not self._ready.wait_for(lambda: bool(self._frames), timeout):
                raise TimeoutError("no frame within the timeout")
            return self._take_locked()

    def _take_locked(self) -> Frame | None:
        item = self._frames[0]
        if isinstance(item, StreamEnd):
            return None  # the end marker stays: later calls also see the end
        self._frames.popleft()
        self._consumed += 1
        self._wake()  # the scheduler may be holding this stream back on its lead
        return item

    def __iter__(self) -> Iterator[Frame]:
        """Every frame until the end; raises StreamFailed at the end if the engine failed the stream."""
        while (frame := self.next_frame()) is not None:
            yield frame
        assert self._end is not None
        if self._end.reason == "error":
            raise StreamFailed(self._end)

    def collect(self, timeout: float | None = 60.0) -> tuple[list[Frame], StreamEnd]:
        """All frames until the end (for scripts and tests)."""
        frames = []
        while (frame := self.next_frame(timeout)) is not None:
            frames.append(frame)
        assert self._end is not None
        return frames, self._end
