"""One frame for every live row in one call: talker step, code 0, 15 residual codes, one codec frame.

    step = FrameStep(model, rows=8, max_positions=1024, compile=True)
    out = step.run(inputs)                  # StepInputs for rows [0, n): host arrays in, host arrays out

Between the host inputs and the PCM out there is no host sync and no Python branching on tensor
values: every per-row decision (which text row to read, whether the row advances, whether EOS may
be drawn, its sampling settings, its RNG counter) arrives as a column of two small tensors, and the
results leave in one device-to-host copy (codes and int16 PCM packed together). Shapes are static:
rows are padded to a bucket (1, 2, 4, ...) and attention reads a fixed cache window (a power of two
covering every row's position), so `torch.compile(fullgraph=True, dynamic=False)` captures static graphs
and CUDA graphs can replay them. The step is two compiled functions: the talker's forward, one graph per
(bucket, window) since only attention depends on the window, and the rest (code 0, the code predictor,
sampling, the codec frame, state updates), one graph per bucket. That is buckets x windows small graphs
plus buckets large ones, instead of buckets x windows large ones: start-up traces and compiles far less.

Under CUDA graphs (`mode="reduce-overhead"`) a graph is recorded on its second call and replayed from the
third, so warm-up calls each one `WARM_CALLS_CUDA_GRAPHS` times: no recording happens in live traffic
(`recordings_after_ready` counts any that still do, for /metrics). Host inputs go through pinned buffers
and the one device-to-host copy per frame waits on an event, not on a device-wide sync.

Per-row state that lives across frames is held here in registered buffers (fixed addresses, so CUDA
graphs can capture it): the last frame's summed code embeddings (the codec half of the next talker
input), the codes 0 seen so far (repetition penalty) and the incremental codec decoder's history. The
talker KV cache lives in the talker's own modules. A row that does not advance this frame (waiting for
text, held back by its consumer, or bucket padding) rides along: its state is kept with a per-row mask;
the KV slot it writes at its position is overwritten when it really takes that position.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from ..model.codec_stream import CodecStreamState, StreamingCodecDecoder, pcm_to_int16
from ..sampling.processors import SamplingParams, choose, process_code0, suppressed_ids
from ..sampling.rng import CODE0_DRAW, counter_uniform
from ..synthesis.tts_model import TTSModel

log = logging.getLogger(__name__)

BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)
WARM_CALLS_CUDA_GRAPHS = 3  # cudagraph trees: 1st call warms up, 2nd records, 3rd replays
MIN_WINDOW = 128
N_CODES = 16

# Text-track row kinds of a talker input.
TEXT_TOKEN, TEXT_EOS, TEXT_PAD = 0, 1, 2

# Columns of the int64 input tensor (B, len(INT_COLUMNS)) and of the float32 one (B, len(FLOAT_COLUMNS)).
INT_COLUMNS = ("text_id", "text_kind", "position", "active", "eos_ok", "frame", "seed",
               "greedy", "top_k", "sub_greedy", "sub_top_k")
FLOAT_COLUMNS = ("temperature", "top_p", "repetition_penalty", "sub_temperature", "sub_top_p")
_I = {name: i for i, name in enumerate(INT_COLUMNS)}
_F = {name: i for i, name in enumerate(FLOAT_COLUMNS)}


def bucket_for(n: int, buckets: tuple[int, ...] = BUCKETS) -> int:
    """The smallest bucket holding n rows."""
    for size in buckets:
        if size >= n:
            return size
    raise ValueError(f"{n} rows exceed the largest bucket {buckets[-1]}")


def kv_windows(max_positions: int, smallest: int = MIN_WINDOW) -> tuple[int, ...]:
    """Attention windows: powers of two from `smallest`, and max_positions itself."""
    windows, size = [], smallest
    while size < max_positions:
        windows.append(size)
        size *= 2
    return (*windows, max_positions)


@dataclass
class StepInputs:
    """Host-side inputs of one step for rows [0, n) of the cache (n <= the bucket)."""

    ints: np.ndarray  # (n, len(INT_COLUMNS)) int64
    floats: np.ndarray  # (n, len(FLOAT_COLUMNS)) float32

    @classmethod
    def empty(cls, n: int) -> StepInputs:
        return cls(np.zeros((n, len(INT_COLUMNS)), dtype=np.int64), np.ones((n, len(FLOAT_COLUMNS)), dtype=np.float32))

    def set_row(self, i: int, *, text_id: int, text_kind: int, position: int, active: bool, eos_ok: bool,
                frame: int, sampling: SamplingParams) -> None:
        p = sampling
        row = self.ints[i]
        for name, value in (("text_id", text_id), ("text_kind", text_kind), ("position", position),
                            ("active", active), ("eos_ok", eos_ok), ("frame", frame), ("seed", p.seed),
                            ("greedy", p.greedy), ("top_k", p.top_k), ("sub_greedy", p.sub_greedy),
                            ("sub_top_k", p.sub_top_k)):
            row[_I[name]] = int(value)
        floats = self.floats[i]
        for name, fvalue in (("temperature", p.temperature), ("top_p", p.top_p),
                             ("repetition_penalty", p.repetition_penalty), ("sub_temperature", p.sub_temperature),
                             ("sub_top_p", p.sub_top_p)):
            floats[_F[name]] = fvalue

    @property
    def rows(self) -> int:
        return self.ints.shape[0]

    def max_position(self) -> int:
        return int(self.ints[:, _I["position"]].max()) if self.rows else 0


@dataclass
class StepOutputs:
    codes: np.ndarray  # (n, 16) int64; a row that drew EOS has codes[i, 0] == eos
    pcm: np.ndarray  # (n, 1920) int16


class FrameStep(nn.Module):
    def __init__(self, model: TTSModel, rows: int, max_positions: int, compile: bool = False,
                 buckets: tuple[int, ...] = BUCKETS, windows: tuple[int, ...] | None = None,
                 backend: str = "inductor") -> None:
        super().__init__()
        self.model = model
        self.buckets = (*(b for b in buckets if b < rows), bucket_for(rows, buckets))
        self.rows = self.buckets[-1]  # cache rows: the bucket that holds `rows`
        self.windows = windows or kv_windows(max_positions)
        if self.windows[-1] != max_positions:
            raise ValueError(f"the largest window {self.windows[-1]} must equal max_positions={max_positions}")
        self.max_positions = max_positions
        talker = model.talker
        self.talker = talker
        self.codec = StreamingCodecDecoder(model.codec)
        self.eos_id = model.config.talker_config.codec_eos_token_id
        self.vocab = model.config.talker_config.vocab_size
        self.codebook_size = model.speech_config.decoder_config.codebook_size
        device, dtype = model.device, talker.codec_head.weight.dtype
        talker.setup_cache(self.rows, max_positions)
        hidden = talker.config.hidden_size
        self.register_buffer("frame_embed", torch.zeros(self.rows, hidden, dtype=dtype, device=device),
                             persistent=False)
        self.register_buffer("seen", torch.zeros(self.rows, self.vocab, dtype=torch.bool, device=device),
                             persistent=False)
        self.register_buffer("suppressed", suppressed_ids(self.vocab, self.eos_id, device), persistent=False)
        # Text-track rows E and P, the rows that pair with them (cached in TTSModel.rows).
        self.register_buffer("text_eos", model.rows.eos.clone(), persistent=False)
        self.register_buffer("text_pad", model.rows.pad.clone(), persistent=False)
        fresh = self.codec.new_state(self.rows)
        self.register_buffer("codec_frames", fresh.frames, persistent=False)
        self._tail_keys = list(fresh.tails)
        for i, key in enumerate(self._tail_keys):
            self.register_buffer(f"codec_tail_{i}", fresh.tails[key], persistent=False)
        self._fresh_row = self.codec.new_state(1)
        self.compiled, self.backend = compile, backend
        self.cuda_graphs = compile and device.type == "cuda" and backend == "inductor"
        self._talker_step: Callable[[torch.Tensor, int], torch.Tensor] = self._talker_hidden
        self._finish_step: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor] = self._finish_frame
        if compile:
            self._talker_step, self._finish_step = self._compile()
        # graph bookkeeping: calls per (bucket, window); recordings that happened after warm-up (CUDA graphs)
        self.calls: dict[tuple[int, int], int] = {}
        self.ready = False
        self.recordings_after_ready = 0
        # pinned host buffers (CUDA): the input copies are truly asynchronous, the output copy waits on an event
        pin = device.type == "cuda"
        self._host_ints = torch.zeros((self.rows, len(INT_COLUMNS)), dtype=torch.int64, pin_memory=pin)
        self._host_floats = torch.ones((self.rows, len(FLOAT_COLUMNS)), dtype=torch.float32, pin_memory=pin)
        self._host_out = torch.zeros((self.rows, N_CODES + 1920), dtype=torch.int16, pin_memory=pin)

    # ---- the step --------------------------------------------------------------------------------
    def _tails(self) -> list[torch.Tensor]:
        return [getattr(self, f"codec_tail_{i}") for i in range(len(self._tail_keys))]

    def _step(self, ints: torch.Tensor, floats: torch.Tensor, window: int) -> torch.Tensor:
        """ints (B, NI) int64, floats (B, NF) float32 for cache rows [0, B) -> (B, 16 + 1920) int16:
        the 16 codes, then the frame's PCM. Updates the state of the rows whose `active` is set."""
        return self._finish_step(ints, floats, self._talker_step(ints, window))

    def _talker_hidden(self, ints: torch.Tensor, window: int) -> torch.Tensor:
        """The talker's forward for rows [0, B) over a `window`-slot cache -> hidden (B, H)."""
        talker, batch = self.talker, ints.shape[0]
        # Talker input: the text-track row + the codec half (codec_bos or the last frame's summed codes).
        kind = ints[:, _I["text_kind"]][:, None]
        text = talker.embed_text(ints[:, _I["text_id"]].clamp(min=0))  # (B, H)
        text = torch.where(kind == TEXT_EOS, self.text_eos, torch.where(kind == TEXT_PAD, self.text_pad, text))
        x = (text + self.frame_embed[:batch])[:, None]  # (B, 1, H)
        return talker(x, ints[:, _I["position"]][:, None], rows=slice(0, batch), kv_len=window)[:, 0]

    def _finish_frame(self, ints: torch.Tensor, floats: torch.Tensor, hidden: torch.Tensor) -> torch.Tensor:
        """From the talker's hidden state (B, H): codes, the codec frame, and the per-row state updates."""
        talker, batch = self.talker, ints.shape[0]
        col = {name: ints[:, i] for name, i in _I.items()}
        fcol = {name: floats[:, i] for name, i in _F.items()}
        active = col["active"].bool()  # (B,)
        seed, frame = col["seed"], col["frame"]

        # Code 0: official processors, then greedy or a counter-RNG draw.
        logits = process_code0(talker.logits(hidden).float(), self.seen[:batch], fcol["repetition_penalty"],
                               col["eos_ok"].bool(), self.suppressed, self.eos_id)
        code0 = choose(logits, col["greedy"].bool(), fcol["temperature"], col["top_k"], fcol["top_p"],
                       counter_uniform(seed, frame, CODE0_DRAW))  # (B,)
        sub = (col["sub_greedy"].bool(), fcol["sub_temperature"], col["sub_top_k"], fcol["sub_top_p"])

        def choose_residual(step_logits: torch.Tensor, step: int) -> torch.Tensor:
            return choose(step_logits.float(), *sub, counter_uniform(seed, frame, step + 1))

        # Codes 1..15 (EOS rows too: their results are dropped by the host, their row is released).
        code0_embed = talker.embed_codec(code0)
        residual, residual_embeds = talker.code_predictor.predict(hidden, code0_embed, choose_residual)
        codes = torch.cat([code0[:, None], residual], dim=1)  # (B, 16)
        frame_embed = torch.cat([code0_embed[:, None], residual_embeds], dim=1).sum(dim=1)  # (B, H)

        # One exact incremental codec frame from each row's own history.
        tails = self._tails()
        state = CodecStreamState(self.codec_frames[:batch],
                                 {key: t[:batch] for key, t in zip(self._tail_keys, tails, strict=True)})
        # An EOS row's code 0 is no codebook entry: clamped here, its frame is dropped by the host.
        codec_codes = codes.clamp(max=self.codebook_size - 1)[:, :, None]  # (B, 16, 1)
        pcm = self.codec.decode_step(codec_codes, state)  # (B, 1920) in [-1, 1]; replaces state's tensors

        # Keep the new state of the rows that advanced.
        self.frame_embed[:batch].copy_(torch.where(active[:, None], frame_embed, self.frame_embed[:batch]))
        seen = self.seen[:batch]
        seen.scatter_(1, code0[:, None], seen.gather(1, code0[:, None]) | active[:, None])
        self.codec_frames[:batch].copy_(torch.where(active, state.frames, self.codec_frames[:batch]))
        for key, tail in zip(self._tail_keys, tails, strict=True):
            new = state.tails[key]
            mask = active.view(batch, *([1] * (new.dim() - 1)))
            tail[:batch].copy_(torch.where(mask, new, tail[:batch]))

        return torch.cat([codes.to(torch.int16), pcm_to_int16(pcm)], dim=1)

    def _compile(self) -> tuple[Callable[[torch.Tensor, int], torch.Tensor],
                                Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]]:
        import torch._dynamo

        # The talker: one graph per (bucket, window); raise dynamo's per-function limit to hold them all.
        needed = len(self.buckets) * len(self.windows) + 2
        torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, needed)
        # CUDA graphs on CUDA: the step's inputs are two small tensors and its state lives in buffers.
        mode = "reduce-overhead" if self.cuda_graphs else None
        options = {"fullgraph": True, "dynamic": False, "backend": self.backend, "mode": mode}
        return torch.compile(self._talker_hidden, **options), torch.compile(self._finish_frame, **options)

    # ---- host side -------------------------------------------------------------------------------
    def window_for(self, max_position: int) -> int:
        for size in self.windows:
            if size > max_position:
                return size
        raise ValueError(f"position {max_position} is past max_positions={self.max_positions}")

    @torch.no_grad()
    def run(self, inputs: StepInputs) -> StepOutputs:
        """Run one frame for rows [0, inputs.rows), padded to their bucket."""
        n = inputs.rows
        bucket = bucket_for(n, self.buckets)
        ints, floats = inputs.ints, inputs.floats
        if bucket > n:  # padding rows: inactive, at position 0 (a free row's slot 0 is rewritten at admission)
            pad = StepInputs.empty(bucket - n)
            ints, floats = np.concatenate([ints, pad.ints]), np.concatenate([floats, pad.floats])
        window = self.window_for(inputs.max_position())
        self._count_call(bucket, window)
        device = self.model.device
        host_ints, host_floats = self._host_ints[:bucket], self._host_floats[:bucket]
        host_ints.numpy()[:] = ints
        host_floats.numpy()[:] = floats
        out = self._step(host_ints.to(device, non_blocking=True), host_floats.to(device, non_blocking=True), window)
        host_out = self._host_out[:n]
        if device.type == "cuda":  # the one device-to-host copy of the frame, then wait for it alone
            host_out.copy_(out[:n], non_blocking=True)
            done = torch.cuda.Event()
            done.record()
            done.synchronize()
        else:
            host_out.copy_(out[:n])
        result = host_out.numpy()
        return StepOutputs(codes=result[:, :N_CODES].astype(np.int64), pcm=result[:, N_CODES:].copy())

    def _count_call(self, bucket: int, window: int) -> None:
        calls = self.calls.get((bucket, window), 0) + 1
        self.calls[(bucket, window)] = calls
        if self.ready and self.cuda_graphs and calls == WARM_CALLS_CUDA_GRAPHS - 1:
            self.recordings_after_ready += 1  # a graph recorded in live traffic: a first-frame spike

    def warm_up(self, progress: Callable[[str], None] | None = None) -> float:
        """Run (and, when compiled, compile) every (bucket, window); returns the seconds it took. Under CUDA
        graphs each is called until it is recorded and replayed once (`WARM_CALLS_CUDA_GRAPHS`), so that no
        recording happens in live traffic. Every row is inactive: no state changes, except KV garbage at
        position 0 (rewritten at admission)."""
        started = time.perf_counter()
        pairs = [(b, w) for b in self.buckets for w in self.windows]
        calls = WARM_CALLS_CUDA_GRAPHS if self.cuda_graphs else 1
        for i, (bucket, window) in enumerate(pairs):
            t0 = time.perf_counter()
            inputs = StepInputs.empty(bucket)
            inputs.ints[:, _I["position"]] = window - 1
            for _ in range(calls):
                self.run(inputs)
            if progress is not None:
                progress(f"frame step {'compiled' if self.compiled else 'ready'}: batch {bucket}, "
                         f"window {window} ({i + 1}/{len(pairs)}, {time.perf_counter() - t0:.1f} s)")
        self.ready = True
        return time.perf_counter() - started

    # ---- row bookkeeping (the scheduler keeps live rows packed in [0, n)) --------------------------
    @torch.no_grad()
    def reset_row(self, row: int, codec: CodecStreamState | None, codec_part: torch.Tensor) -> None:
        """A new stream in `row`: its codec history (a voice's primed state, or fresh), no codes seen,
        and the codec half of its first talker input (codec_bos, or for ICL the last reference frame)."""
        state = codec if codec is not None else self._fresh_row
        self.codec_frames[row] = state.frames[0]
        for key, tail in zip(self._tail_keys, self._tails(), strict=True):
            tail[row].copy_(state.tails[key][0])
        self.seen[row] = False
        self.frame_embed[row].copy_(codec_part)

    @torch.no_grad()
    def move_row(self, src: int, dst: int) -> None:
        """Row `src` takes over cache row `dst` (its talker KV and every per-row buffer)."""
        for layer in self.talker.model.layers:
            cache = layer.self_attn.kv_cache
            assert cache is not None
            cache.k[dst].copy_(cache.k[src])
            cache.v[dst].copy_(cache.v[src])
        for buffer in (self.frame_embed, self.seen, self.codec_frames, *self._tails()):
            buffer[dst].copy_(buffer[src])

    @torch.no_grad()
    def set_codec_part(self, row: int, codec_part: torch.Tensor) -> None:
        """The codec half of the row's next talker input (ICL: the last reference frame's codes)."""
        self.frame_embed[row].copy_(codec_part)
