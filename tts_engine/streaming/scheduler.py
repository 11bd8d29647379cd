"""The engine thread: owns the device and steps every live stream together (continuous batching).

Each iteration:
  1. admit waiting streams into free cache rows and prefill their voice prefix (no text needed);
  2. decide, per row, the next talker input's text-track row (the first target token, then t_{k+1} /
     tts_eos once / tts_pad) and whether the row advances: its text row has arrived and its consumer is
     within the lead;
  3. one `FrameStep` for all rows (frame_step.py): talker forward, code 0, the 15 residual codes and one
     exact incremental codec frame, with one device-to-host copy; frames delivered, EOS rows retired.
A stream whose next text token has not arrived simply waits: tts_pad is never fed early.

ICL cloning (synthesis/prompt.py): admission prefills the prefix and the ICL block rows that hold only the
reference transcript; the rest of the block holds target rows, so the stream waits there until it has
min(N + 1, T2 - R) of them (T2 - R tokens, or the whole text and its E when it is shorter), then
prefills the rest of the block but its last row, which is the input of the stream's first frame step
(the codec half of that input is the last reference frame). Afterwards decode step k adds text-track
row T2 + k, as in the official streaming-text ICL mode. The stream's codec decoder state starts primed
on the reference codes (their audio is never emitted).
Per voice, the prefix rows and KV, the ICL rows and the primed codec state are built once
(voice_cache.py).
Live rows stay packed in cache rows [0, n): a leaving stream's row is refilled by the last one.
Rows that do not advance still ride along in the frame step; their state is kept and the cache slot
they wrote is overwritten when they really take that position.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

from ..synthesis.prompt import IclRows, icl_block, icl_target_rows
from ..synthesis.tts_model import TTSModel, runaway_cap
from .frame_step import BUCKETS, TEXT_EOS, TEXT_PAD, TEXT_TOKEN, FrameStep, StepInputs
from .stream import Frame, Stream, StreamEnd
from .voice_cache import VoiceCache

log = logging.getLogger(__name__)


@dataclass
class EngineSettings:
    max_streams: int = 8  # cache rows: streams beyond this wait for a free row
    max_lead_frames: int = 25  # a stream runs at most 2 s of audio ahead of its consumer
    max_positions: int = 1024  # talker cache per stream (prompt + frames; ~75 s of speech)
    frames_per_token: float = 8.0  # runaway guard: frames allowed per text token ...
    cap_slack: int = 40  # ... plus this many
    max_text_chars: int = 20000  # per utterance
    voice_cache_size: int = 32  # voices whose prompt rows, primed codec state and prefix KV are kept
    cache_prefix_kv: bool = True  # per voice: ~112 KiB per prefix position at 0.6B/1.7B in bf16
    # torch.compile the frame step (see frame_step.py for its graphs); None: on for CUDA, off on a CPU
    compile: bool | None = None
    kv_windows: tuple[int, ...] | None = None  # attention windows; default: powers of two up to max_positions
    warm_up: bool = True  # compiled: build every bucket and window's graph before serving
    # torch.compile backend: "inductor" (generated kernels); "eager" captures the same graphs without
    # code generation (tests of graph breaks and recompiles in seconds).
    compile_backend: str = "inductor"
    buckets: tuple[int, ...] = BUCKETS  # batch sizes the step is padded to (one graph each when compiled)


@dataclass
class _Row:
    """Scheduler-thread state of one live stream."""

    stream: Stream
    row: int
    position: int  # next talker position
    frames: int = 0
    started: bool = False  # the prefill is complete (ICL: the block was fed); plain voices start at once
    icl: IclRows | None = None
    icl_start: int = 0
    text_offset: int = 1  # text-track rows the prefill consumes: 1 (first target token), ICL: T2
    ref_ids: tuple[int, ...] = ()  # ICL: the reference transcript's ids (text-track rows [0, R))

    @property
    def ref_len(self) -> int:
        """Reference-transcript rows in front of the target text on the text track (ICL), else 0."""
        return self.icl.ref_len if self.icl is not None else 0


class Scheduler:
    def __init__(self, model: TTSModel, settings: EngineSettings,
                 progress: Callable[[str], None] | None = None) -> None:
        # The KV caches live in the model's modules: one running engine per loaded model.
        if model.engine_active:
            raise RuntimeError("this model already drives a running Engine: close it, or load the model again")
        model.engine_active = True
        self.model, self.settings = model, settings
        self.talker = model.talker
        self.eos_id = model.config.talker_config.codec_eos_token_id
        compiled = settings.compile if settings.compile is not None else model.device.type == "cuda"
        try:
            self.frame_step = FrameStep(model, settings.max_streams, settings.max_positions,
                                        compile=compiled, windows=settings.kv_windows,
                                        buckets=settings.buckets, backend=settings.compile_backend)
        except BaseException:
            model.engine_active = False
            raise
        self._rows: list[_Row] = []
        self._waiting: list[Stream] = []
        self._lock = threading.Lock()  # guards _waiting only
        self._wake = threading.Event()
        self._stop = False
        self.voices = VoiceCache(model, settings.voice_cache_size, settings.cache_prefix_kv)
        self.steps = 0
        self.batch_sizes: list[int] = []  # rows that advanced, one entry per step; trimmed to the last 10k
        # Per-step timings, filled only when `profile` is set (benchmarks).
        self.profile = False
        self.timings: collections.deque[dict[str, float]] = collections.deque(maxlen=100_000)
        # Warm-up runs on the engine thread, where every live step runs: compiled graphs are guarded on thread-
        # local state and CUDA graph trees are per thread, so graphs warmed up (recorded) on another thread would
        # be traced or recorded again in live traffic. The constructor returns once it is done (or has failed).
        self.warm_up_s = 0.0
        self._ready = threading.Event()
        self._start_error: BaseException | None = None
        warm = progress if settings.warm_up and compiled else None
        self._thread = threading.Thread(target=self._run, args=(settings.warm_up and compiled, warm),
                                        name="voicegate-engine", daemon=True)
        self._thread.start()
        self._ready.wait()
        if self._start_error is not None:
            self._thread.join()
            model.engine_active = False
            raise self._start_error

    # ---- called from any thread ----------------------------------------------------------------
    def submit(self, stream: Stream) -> None:
        with self._lock:
            self._waiting.append(stream)
        self.wake()

    def wake(self) -> None:
        self._wake.set()

    def stop(self) -> None:
        self._stop = True
        self.wake()
        self._thread.join(timeout=10)
        self.model.engine_active = False

    @property
    def thread(self) -> threading.Thread:
        """The engine thread (e.g. for a server to lower its scheduling priority)."""
        return self._thread

    @property
    def live_streams(self) -> int:
        return len(self._rows)

    # ---- engine thread -------------------------------------------------------------------------
    def _run(self, warm_up: bool, progress: Callable[[str], None] | None) -> None:
        torch.set_grad_enabled(False)
        try:
            if warm_up:
                self.warm_up_s = self.frame_step.warm_up(progress)
        except BaseException as exc:  # raised by the constructor, in the caller's thread
            self._start_error = exc
            return
        finally:
            self._ready.set()
        while not self._stop:
            self._wake.wait(timeout=0.5)
            self._wake.clear()
            try:
                while not self._stop and self._step():
                    pass
            except Exception as exc:  # keep serving: fail the live streams, not the engine
                log.exception("engine step failed")
                for row in list(self._rows):
                    row.stream.close(StreamEnd("error", row.frames, error=f"{type(exc).__name__}: {exc}"))
                    self._release(row)
        # Shutting down: nobody may wait forever on a stream of a stopped engine.
        with self._lock:
            waiting, self._waiting = self._waiting, []
        for stream in waiting:
            stream.close(StreamEnd("cancelled", 0, error="engine closed"))
        for row in list(self._rows):
            row.stream.close(StreamEnd("cancelled", row.frames, error="engine closed"))
            self._release(row)

    def _step(self) -> bool:
        """One iteration; True when it did work (so the loop tries again without sleeping)."""
        admitted = self._admit()
        self._retire_finished_rows()
        prefilled = self._icl_prefill()
        ran = self._frame_step()
        return admitted or prefilled or ran

    def _admit(self) -> bool:
        admitted = False
        while len(self._rows) < self.settings.max_streams:
            with self._lock:
                if not self._waiting:
                    break
                stream = self._waiting.pop(0)
            if stream.end is not None:  # cancelled before it got a row
                continue
            self._prefill_prefix(stream)
            admitted = True
        return admitted

    def _prefill_prefix(self, stream: Stream) -> None:
        voice = self.voices.get(stream.voice)
        row_index = len(self._rows)
        self.voices.prefill(voice, row_index)
        # The codec half of the first talker input: codec_bos beside the first target token; for ICL
        # the last block row's (set at the ICL prefill).
        self.frame_step.reset_row(row_index, voice.codec, self.model.rows.codec_bos)
        row = _Row(stream=stream, row=row_index, position=voice.prefix.shape[0], started=voice.icl is None,
                   icl=voice.icl, icl_start=voice.icl_start, text_offset=voice.text_offset,
                   ref_ids=stream.voice.ref_ids or ())
        self._rows.append(row)

    def _release(self, row: _Row) -> None:
        last = self._rows[-1]
        if last is not row:  # keep rows packed: the last row moves into the freed one
            self.frame_step.move_row(last.row, row.row)
            last.row = row.row
            self._rows[row.row] = last
        self._rows.pop()

    def _text_row(self, row: _Row, j: int, ids: list[int], finished: bool) -> tuple[int, int] | None:
        """Text-track row j as (kind, token id) of [reference transcript (ICL)] ++ target tokens ++ E ++
        P..., None while it has not arrived."""
        if j < row.ref_len:
            return TEXT_TOKEN, row.ref_ids[j]
        token = j - row.ref_len
        if token < len(ids):
            return TEXT_TOKEN, ids[token]
        if not finished or not ids:
            return None
        return (TEXT_EOS, 0) if token == len(ids) else (TEXT_PAD, 0)

    def _icl_prefill(self) -> bool:
        """Prefill the target part of waiting ICL blocks whose rows have all arrived (the ICL wait), but
        the block's last row: it is the input of the stream's first frame step."""
        ran = False
        device = self.model.device
        for r in self._rows:
            if r.icl is None or r.started:
                continue
            ids, finished, _ = r.stream.snapshot()
            if finished and not ids:
                continue  # nothing to say: retired as "empty"
            wanted = icl_target_rows(r.icl.ref_len, r.icl.block_len, None)  # T2 - R
            if not finished and len(ids) < wanted:
                continue  # the wait: the block holds min(N + 1, T2 - R) target rows (E counts)
            # Text-track rows from icl_start (<= R) on: the rest of the reference transcript, the target
            # tokens the block holds, E if the whole text is in; icl_block cuts at T2 and pads with P.
            n_tokens = min(len(ids), wanted)
            tokens = torch.tensor(ids[:n_tokens], dtype=torch.long, device=device)
            parts = [r.icl.ref_text[r.icl_start:], self.talker.embed_text(tokens)]
            if finished and n_tokens == len(ids):
                parts.append(self.model.rows.eos[None])
            block = icl_block(torch.cat(parts), r.icl, self.model.rows, r.icl_start)  # (T2 - icl_start, H)
            if block.shape[0] > 1:
                positions = torch.arange(r.position, r.position + block.shape[0] - 1, device=device)[None]
                self.talker(block[None, :-1], positions, rows=slice(r.row, r.row + 1),
                            kv_len=r.position + block.shape[0] - 1)  # explicit: no host sync on positions
                r.position += block.shape[0] - 1
            self.frame_step.set_codec_part(r.row, r.icl.codec[-1])
            r.started = True
            ran = True
        return ran

    def _retire_finished_rows(self) -> None:
        """Release rows that were cancelled, had nothing to say, or ran out of positions."""
        for r in list(self._rows):
            ids, finished, cancelled = r.stream.snapshot()
            if cancelled or r.stream.end is not None:
                self._release(r)
            elif finished and not ids:  # no frame can come (an ICL stream never started)
                r.stream.close(StreamEnd("empty", 0))
                self._release(r)
            elif r.position >= self.settings.max_positions:
                r.stream.close(StreamEnd("cap", r.frames))
                self._release(r)

    def _eos_allowed(self, r: _Row, ids: list[int], finished: bool) -> bool:
        if r.frames < r.stream.sampling.min_new_tokens:
            return False
        if r.stream.eos_policy == "official":
            return True
        # E sits on text-track row R + N, fed by decode step R + N - offset: frame R + N + 1 - offset.
        return finished and r.frames >= r.ref_len + len(ids) + 1 - r.text_offset

    def _frame_step(self) -> bool:
        n = len(self._rows)
        if n == 0:
            return False
        inputs = StepInputs.empty(n)
        states = [r.stream.snapshot() for r in self._rows]
        ready: list[int] = []
        for i, (r, (ids, finished, _)) in enumerate(zip(self._rows, states, strict=True)):
            # Frame f's input carries text-track row offset - 1 + f: the first target token for frame 0
            # (ICL: the block's last row, T2 - 1), then t_{f} / E / P.
            text = self._text_row(r, r.text_offset - 1 + r.frames, ids, finished) if r.started else None
            active = text is not None and r.stream.lead() < self.settings.max_lead_frames
            kind, token = text if text is not None else (TEXT_PAD, 0)
            inputs.set_row(i, text_id=token, text_kind=kind, position=r.position, active=active,
                           eos_ok=self._eos_allowed(r, ids, finished), frame=r.frames, sampling=r.stream.sampling)
            if active:
                ready.append(i)
        if not ready:
            return False
        started = time.perf_counter()
        out = self.frame_step.run(inputs)
        if self.profile:
            self.timings.append({"batch": len(ready), "rows": n, "ms": (time.perf_counter() - started) * 1e3})
        self.steps += 1
        self.batch_sizes.append(len(ready))
        if len(self.batch_sizes) > 20_000:  # bounded on a long-running server
            del self.batch_sizes[:10_000]
        rows = [self._rows[i] for i in ready]  # before any release reorders them
        for i, r in zip(ready, rows, strict=True):
            ids, finished, _ = states[i]
            r.position += 1
            if out.codes[i, 0] == self.eos_id:
                r.stream.close(StreamEnd("eos", r.frames))
                self._release(r)
                continue
            r.stream.deliver(Frame(index=r.frames, pcm=out.pcm[i], codes=out.codes[i],
                                   text_tokens_consumed=self._tokens_consumed(r, len(ids))))
            r.frames += 1
            if finished and r.frames >= runaway_cap(len(ids), self.settings.frames_per_token,
                                                    self.settings.cap_slack):
                r.stream.close(StreamEnd("cap", r.frames))
                self._release(r)
        return True

    @staticmethod
    def _tokens_consumed(r: _Row, n_ids: int) -> int:
        """Target tokens among the text-track rows read up to frame `r.frames` (rows 0..offset+f-1)."""
        return min(max(r.text_offset + r.frames - r.ref_len, 0), n_ids)
