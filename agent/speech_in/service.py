"""One recognizer per server, shared by every session: a worker thread, a bounded queue, an asyncio API.

Why a thread and not a process: the model is loaded once and CTranslate2 (like torch) releases the GIL
while it decodes, so the event loop keeps running; a process would copy every turn's PCM across and hold a
second copy of the runtime for no gain at one request at a time.

Requests run one at a time (the backend is not reentrant and one decode uses every thread it is given).
Queue policy (`max_pending` waiting requests, the running one not counted):
- finals are served before partials, each kind in arrival order;
- when the queue is full, the oldest waiting partial is dropped (its caller gets None) to make room;
- with no partial to drop, a new partial is skipped (None) and a new final is refused: SttError(stt_busy).
  Finals are never dropped once queued.
Cancelling the awaiting coroutine takes a waiting request out of the queue; a running one finishes on the
thread and its result is discarded (a decode cannot be interrupted).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import threading
import time
from dataclasses import dataclass

import numpy as np

from agent.speech_in.recognizer import STT_BUSY, STT_FAILED, STT_UNAVAILABLE, Recognizer, SttError, Transcript

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ServiceSettings:
    max_pending: int = 16  # waiting requests, all sessions together (the running one not counted)

    def __post_init__(self) -> None:
        if self.max_pending < 1:
            raise ValueError("max_pending must be >= 1")


@dataclass
class ServiceStats:
    done: int = 0
    failed: int = 0
    partials_dropped: int = 0  # pushed out of a full queue, or skipped on arrival
    finals_refused: int = 0  # stt_busy
    cancelled: int = 0
    decode_s: float = 0.0  # time spent in the backend, all requests together


class _Job:
    __slots__ = ("cancelled", "future", "language", "loop", "partial", "pcm")

    def __init__(self, pcm: np.ndarray, language: str | None, partial: bool, loop: asyncio.AbstractEventLoop) -> None:
        self.pcm = pcm
        self.language = language
        self.partial = partial
        self.loop = loop
        self.future: asyncio.Future[Transcript | None] = loop.create_future()
        self.cancelled = False


def _settle(future: asyncio.Future[Transcript | None], result: Transcript | None,
            error: BaseException | None) -> None:
    if future.done():  # the caller was cancelled meanwhile
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)


class RecognizerService:
    """`await transcribe(pcm)` (final) / `await partial(pcm)` (may be None); SttError with a stable code."""

    def __init__(self, recognizer: Recognizer | None, settings: ServiceSettings | None = None) -> None:
        self.recognizer = recognizer
        self.settings = settings or ServiceSettings()
        self.stats = ServiceStats()
        self._finals: collections.deque[_Job] = collections.deque()
        self._partials: collections.deque[_Job] = collections.deque()
        self._cond = threading.Condition()
        self._closed = False
        self._thread: threading.Thread | None = None

    @property
    def available(self) -> bool:
        return self.recognizer is not None and not self._closed

    @property
    def pending(self) -> int:
        with self._cond:
            return len(self._finals) + len(self._partials)

    async def transcribe(self, pcm16k: np.ndarray, language: str | None = None) -> Transcript:
        """The final transcript of a turn. Raises SttError (stt_unavailable, stt_failed, stt_busy)."""
        result = await self._request(pcm16k, language, partial=False)
        assert result is not None
        return result

    async def partial(self, pcm16k: np.ndarray, language: str | None = None) -> Transcript | None:
        """A hypothesis of a turn still growing; None when the queue had no room for it (finals first)."""
        return await self._request(pcm16k, language, partial=True)

    async def close(self) -> None:
        """Stop the worker: waiting requests fail with stt_unavailable; the running one is awaited."""
        with self._cond:
            self._closed = True
            waiting = [*self._finals, *self._partials]
            self._finals.clear()
            self._partials.clear()
            self._cond.notify_all()
        for job in waiting:
            job.loop.call_soon_threadsafe(_settle, job.future, None,
                                          SttError(STT_UNAVAILABLE, "the recognizer service closed"))
        if self._thread is not None:
            await asyncio.to_thread(self._thread.join)

    async def _request(self, pcm16k: np.ndarray, language: str | None, partial: bool) -> Transcript | None:
        if self.recognizer is None:
            raise SttError(STT_UNAVAILABLE, "no speech recognizer is configured (--stt)")
        if self._closed:
            raise SttError(STT_UNAVAILABLE, "the recognizer service is closed")
        job = _Job(np.array(pcm16k, copy=True), language, partial, asyncio.get_running_loop())
        if not self._enqueue(job):
            self.stats.partials_dropped += 1
            return None
        try:
            return await job.future
        except asyncio.CancelledError:
            job.cancelled = True
            with self._cond:
                queue = self._partials if partial else self._finals
                if job in queue:
                    queue.remove(job)
            self.stats.cancelled += 1
            raise

    def _enqueue(self, job: _Job) -> bool:
        """Queue `job` under the policy above; False when a partial is skipped."""
        dropped: _Job | None = None
        with self._cond:
            if len(self._finals) + len(self._partials) >= self.settings.max_pending:
                if self._partials:
                    dropped = self._partials.popleft()
                elif job.partial:
                    return False
                else:
                    self.stats.finals_refused += 1
                    raise SttError(STT_BUSY, f"the recognizer has {self.settings.max_pending} requests waiting")
            (self._partials if job.partial else self._finals).append(job)
            if self._thread is None:
                self._thread = threading.Thread(target=self._work, name="stt-worker", daemon=True)
                self._thread.start()
            self._cond.notify()
        if dropped is not None:
            self.stats.partials_dropped += 1
            dropped.loop.call_soon_threadsafe(_settle, dropped.future, None, None)
        return True

    def _work(self) -> None:
        assert self.recognizer is not None
        while True:
            with self._cond:
                while not (self._finals or self._partials or self._closed):
                    self._cond.wait()
                if self._closed:
                    return
                job = self._finals.popleft() if self._finals else self._partials.popleft()
            if job.cancelled:
                continue
            result: Transcript | None = None
            error: BaseException | None = None
            began = time.perf_counter()
            try:
                result = self.recognizer.transcribe(job.pcm, job.language, partial=job.partial)
                self.stats.done += 1
            except Exception as exc:  # the service lives on; the caller gets a stable code
                logger.exception("speech recognizer failed")
                self.stats.failed += 1
                error = SttError(STT_FAILED, f"{type(exc).__name__}: {exc}")
            self.stats.decode_s += time.perf_counter() - began
            with contextlib.suppress(RuntimeError):  # RuntimeError: the caller's loop is gone
                job.loop.call_soon_threadsafe(_settle, job.future, result, error)
