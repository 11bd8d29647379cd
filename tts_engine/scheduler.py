"""The engine thread: owns the device and steps every live stream together (continuous batching).

Each iteration:
  1. admit waiting streams into free cache rows and prefill their voice prefix (no text needed);
  2. one batched talker forward for every row whose next text row is available (the first target token
     with codec_bos, then t_{k+1} / tts_eos once / tts_pad) and whose consumer is within the lead;
  3. for the rows that just ran: code 0 (official processors, per-row RNG), the 15 residual codes
     (one batched predictor run), one exact incremental codec step, frames delivered.
A stream whose next text token has not arrived simply waits: tts_pad is never fed early.

ICL cloning (prompt.py): admission prefills the prefix and the ICL block rows that hold only the
reference transcript; the rest of the block holds target rows, so the stream waits there until it has
min(N + 1, T2 - R) of them (T2 - R tokens, or the whole text and its E when it is shorter), then
prefills the rest of the block in one forward, whose last hidden gives frame 0. Afterwards decode step
k adds text-track row T2 + k, as in the official streaming-text ICL mode. The stream's codec decoder
state starts primed on the reference codes (their audio is never emitted).
Per voice, the prefix rows and KV, the ICL rows and the primed codec state are built once
(voice_cache.py).
Live rows stay packed in cache rows [0, n): a leaving stream's row is refilled by the last one.
Rows that are not ready still ride along in the talker batch with a zero input; their output is
ignored and the cache slot they wrote is overwritten when they really take that position.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from dataclasses import dataclass, field

import numpy as np
import torch

from .codec_stream import CodecStreamState, StreamingCodecDecoder
from .prompt import IclRows, icl_block, icl_target_rows
from .sampling import NEG_INF, draw
from .stream import Frame, Stream, StreamEnd
from .tts import TTSModel, runaway_cap
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


@dataclass
class _Row:
    """Scheduler-thread state of one live stream."""

    stream: Stream
    row: int
    position: int  # next talker position
    generator: torch.Generator
    seen: torch.Tensor  # (V,) bool: codes 0 generated so far (repetition penalty)
    codec: CodecStreamState
    frames: int = 0
    started: bool = False  # the prefill is complete (the first target token / the ICL block was fed)
    icl: IclRows | None = None
    icl_start: int = 0
    text_offset: int = 1  # text-track rows the prefill consumes: 1 (first target token), ICL: T2
    hidden: torch.Tensor | None = None  # (H,) last post-norm hidden, awaiting its frame
    frame_embed: torch.Tensor | None = None  # (H,) sum of the last frame's 16 code embeddings
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def ref_len(self) -> int:
        """Reference-transcript rows in front of the target text on the text track (ICL), else 0."""
        return self.icl.ref_len if self.icl is not None else 0


class Scheduler:
    def __init__(self, model: TTSModel, settings: EngineSettings) -> None:
        # The KV caches live in the model's modules: one running engine per loaded model.
        if model.engine_active:
            raise RuntimeError("this model already drives a running Engine: close it, or load the model again")
        model.engine_active = True
        self.model, self.settings = model, settings
        self.talker = model.talker
        self.codec = StreamingCodecDecoder(model.codec)
        self.eos_id = model.config.talker_config.codec_eos_token_id
        self.vocab = model.config.talker_config.vocab_size
        device = model.device
        suppress = torch.zeros(self.vocab, dtype=torch.bool, device=device)
        suppress[self.vocab - 1024:] = True
        suppress[self.eos_id] = False
        self.suppress = suppress
        self.talker.setup_cache(settings.max_streams, settings.max_positions)
        self._rows: list[_Row] = []
        self._waiting: list[Stream] = []
        self._lock = threading.Lock()  # guards _waiting only
        self._wake = threading.Event()
        self._stop = False
        self.voices = VoiceCache(model, settings.voice_cache_size, settings.cache_prefix_kv)
        self.steps = 0
        self.batch_sizes: list[int] = []  # one entry per talker step; trimmed to the last 10k
        # Per-phase timings, filled only when `profile` is set (benchmarks): synchronising costs time.
        self.profile = False
        self.timings: collections.deque[dict[str, float]] = collections.deque(maxlen=100_000)
        self._thread = threading.Thread(target=self._run, name="voicegate-engine", daemon=True)
        self._thread.start()

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
    def _run(self) -> None:
        torch.set_grad_enabled(False)
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
        ran = self._talker_step()
        emitted = self._frame_step()
        return admitted or ran or emitted

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
        device = self.model.device
        row_index = len(self._rows)
        self.voices.prefill(voice, row_index)
        row = _Row(stream=stream, row=row_index, position=voice.prefix.shape[0],
                   generator=torch.Generator(device=device).manual_seed(stream.sampling.seed),
                   seen=torch.zeros(self.vocab, dtype=torch.bool, device=device),
                   codec=voice.codec.clone() if voice.codec is not None else self.codec.new_state(),
                   icl=voice.icl, icl_start=voice.icl_start,
                   text_offset=voice.text_offset)
        self._rows.append(row)

    def _release(self, row: _Row) -> None:
        last = self._rows[-1]
        if last is not row:  # keep rows packed: move the last row's cache into the freed one
            for layer in self.talker.model.layers:
                cache = layer.self_attn.kv_cache
                assert cache is not None
                cache.k[row.row].copy_(cache.k[last.row])
                cache.v[row.row].copy_(cache.v[last.row])
            last.row = row.row
            self._rows[row.row] = last
        self._rows.pop()

    def _next_text_row(self, row: _Row, ids: list[int], finished: bool) -> torch.Tensor | None:
        """The text-track row of the next talker input, or None while it has not arrived."""
        # Before the first frame: the first target token (it rides with codec_bos); after frame f
        # (frames = f + 1) the input carries text-track row f + 1 (ICL: T2 + f).
        return self._text_track(row, row.text_offset + row.frames - 1 if row.started else 0, ids, finished)

    def _text_track(self, row: _Row, j: int, ids: list[int], finished: bool) -> torch.Tensor | None:
        """Row j (H,) of [reference transcript (ICL)] ++ target tokens ++ E ++ P..., None if not there yet."""
        if j < row.ref_len:
            assert row.icl is not None
            return row.icl.ref_text[j]
        token = j - row.ref_len
        if token < len(ids):
            return self.talker.embed_text(torch.tensor([ids[token]], device=self.model.device))[0]
        if not finished or not ids:
            return None
        return self.model.rows.eos if token == len(ids) else self.model.rows.pad

    def _icl_prefill(self) -> bool:
        """Prefill the target part of waiting ICL blocks whose rows have all arrived (the ICL wait)."""
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
            positions = torch.arange(r.position, r.position + block.shape[0], device=device)[None]
            r.hidden = self.talker(block[None], positions, rows=slice(r.row, r.row + 1))[0, -1]
            r.position += block.shape[0]
            r.started = True
            ran = True
        return ran

    def _retire_finished_rows(self) -> None:
        """Release rows that were cancelled, had nothing to say, or ran out of positions."""
        for r in list(self._rows):
            ids, finished, cancelled = r.stream.snapshot()
            if cancelled or r.stream.end is not None:
                self._release(r)
            elif not r.started and finished and not ids:
                r.stream.close(StreamEnd("empty", 0))
                self._release(r)
            elif r.position >= self.settings.max_positions:
                r.stream.close(StreamEnd("cap", r.frames))
                self._release(r)

    def _talker_step(self) -> bool:
        self._retire_finished_rows()
        n = len(self._rows)
        if n == 0:
            return False
        prefilled = self._icl_prefill()
        device = self.model.device
        inputs = torch.zeros(n, 1, self.talker.config.hidden_size, device=device,
                             dtype=self.talker.codec_head.weight.dtype)
        ready: list[_Row] = []
        for r in self._rows:
            if r.hidden is not None or r.stream.lead() >= self.settings.max_lead_frames:
                continue
            if r.icl is not None and not r.started:
                continue  # the ICL wait (above)
            ids, finished, _ = r.stream.snapshot()
            text = self._next_text_row(r, ids, finished)
            if text is None:
                continue  # waits for its next text token: never tts_pad early
            codec_part = r.frame_embed if r.started else self.model.rows.codec_bos
            assert codec_part is not None
            inputs[r.row, 0] = text + codec_part
            ready.append(r)
        if not ready:
            return prefilled
        positions = torch.tensor([[r.position] for r in self._rows], device=device)
        started = self._clock()
        hidden = self.talker(inputs, positions, rows=slice(0, n))[:, 0]
        if self.profile:
            self.timings.append({"phase": "talker", "batch": len(ready), "rows": n,
                                 "ms": (self._clock() - started) * 1e3})
        self.steps += 1
        self.batch_sizes.append(len(ready))
        if len(self.batch_sizes) > 20_000:  # bounded on a long-running server
            del self.batch_sizes[:10_000]
        for r in ready:
            r.hidden = hidden[r.row]
            r.position += 1
            r.started = True
        return True

    def _eos_allowed(self, r: _Row, ids: list[int], finished: bool) -> bool:
        if r.stream.eos_policy == "official":
            return True
        # E sits on text-track row R + N, fed by decode step R + N - offset: frame R + N + 1 - offset.
        return finished and r.frames >= r.ref_len + len(ids) + 1 - r.text_offset

    def _frame_step(self) -> bool:
        rows = [r for r in self._rows if r.hidden is not None]
        if not rows:
            return False
        started = self._clock()
        hidden = torch.stack([r.hidden for r in rows])  # type: ignore[misc]
        logits = self.talker.logits(hidden).float()  # (B, V)
        states = [r.stream.snapshot() for r in rows]
        seen = torch.stack([r.seen for r in rows])
        penalties = torch.tensor([r.stream.sampling.repetition_penalty for r in rows], device=logits.device)[:, None]
        logits = torch.where(seen, torch.where(logits < 0, logits * penalties, logits / penalties), logits)
        for i, (r, (ids, finished, _)) in enumerate(zip(rows, states, strict=True)):
            if r.frames < r.stream.sampling.min_new_tokens or not self._eos_allowed(r, ids, finished):
                logits[i, self.eos_id] = NEG_INF
        logits = logits.masked_fill(self.suppress, NEG_INF)
        code0 = self._draw(rows, logits, residual=False)
        live = [i for i, r in enumerate(rows) if int(code0[i]) != self.eos_id]
        for i, r in enumerate(rows):
            r.hidden = None
            if i not in live:
                r.stream.close(StreamEnd("eos", r.frames))
                self._release(r)
        if not live:
            return True
        rows = [rows[i] for i in live]
        hidden, code0 = hidden[live], code0[live]
        for r, c in zip(rows, code0.tolist(), strict=True):
            r.seen[c] = True

        def choose(step_logits: torch.Tensor, step: int) -> torch.Tensor:
            return self._draw(rows, step_logits, residual=True)

        code0_embed = self.talker.embed_codec(code0)
        sampled = self._clock()
        residual, residual_embeds = self.talker.code_predictor.predict(hidden, code0_embed, choose)
        predicted = self._clock()
        codes = torch.cat([code0[:, None], residual], dim=1)  # (B, 16)
        frame_embeds = torch.cat([code0_embed[:, None], residual_embeds], dim=1).sum(dim=1)  # (B, H)
        pcm = self.codec.step([r.codec for r in rows], codes)  # (B, 1920) float
        if self.profile:
            decoded = self._clock()
            self.timings.append({"phase": "frame", "batch": len(rows), "code0_ms": (sampled - started) * 1e3,
                                 "predictor_ms": (predicted - sampled) * 1e3,
                                 "codec_ms": (decoded - predicted) * 1e3})
        pcm16 = (pcm.clamp(-1, 1) * 32767.0).round().to(torch.int16).cpu().numpy()
        codes_np = codes.cpu().numpy().astype(np.int64)
        for i, r in enumerate(rows):
            r.frame_embed = frame_embeds[i]
            ids, finished, _ = states[live[i]]
            r.stream.deliver(Frame(index=r.frames, pcm=pcm16[i], codes=codes_np[i],
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

    def _clock(self) -> float:
        if self.profile and self.model.device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter()

    def _draw(self, rows: list[_Row], logits: torch.Tensor, residual: bool) -> torch.Tensor:
        """Codes for every row: one batched draw per group of rows that share sampling settings."""
        def key(r: _Row) -> tuple:
            p = r.stream.sampling
            if residual:
                return (p.sub_greedy, p.sub_temperature, p.sub_top_k, p.sub_top_p)
            return (p.greedy, p.temperature, p.top_k, p.top_p)

        groups: dict[tuple, list[int]] = {}
        for i, r in enumerate(rows):
            groups.setdefault(key(r), []).append(i)
        if len(groups) == 1:
            (settings, _), = groups.items()
            return draw(logits, [r.generator for r in rows], *settings)
        codes = torch.empty(len(rows), dtype=torch.long, device=logits.device)
        for settings, index in groups.items():
            codes[index] = draw(logits[index], [rows[i].generator for i in index], *settings)
        return codes


def wait_idle(scheduler: Scheduler, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while scheduler.live_streams and time.monotonic() < deadline:
        time.sleep(0.01)
