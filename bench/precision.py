"""Precision benchmark: bf16 and int8 against fp32 on the same loaded weights, one run. JSON on stdout.

    python -m bench.precision --checkpoint DIR --frames 24
    python -m bench.precision --make 0.6b --frames 24     # writes (once) ~/.cache/voicegate/bench-0.6b

Per precision (tts_engine/checkpoints/precision.py builds each from the one fp32 load):
- agreement: fp32 runs greedy (streaming layout, the text known up front) and gives the reference codes;
  each precision then runs teacher-forced on them (the fp32 codes are its history: talker inputs and
  the code predictor's inputs) and we count where its greedy pick equals fp32's: code 0 (the talker,
  after the official logits processors) and all 16 codes. Teacher forcing keeps one early difference
  from derailing every later frame, so this measures per-step fidelity.
- snr_db: waveform SNR against the fp32 audio (the same codec decoder, kept fp32): `teacher_forced` for
  the codes picked per frame above, `free_running` for the precision's own greedy generation (after the
  first differing code the two utterances part ways, so this one mostly says when they diverged:
  `free_running_same_frames` counts the identical leading frames). `codec_converted` is false: the codec
  decoder stays fp32 in every mode, so decoding the same codes gives the same samples.
- timing: per-frame ms split into talker (forward + code 0) / code predictor (15 codes) / codec (one
  incremental frame), the same split as bench/engine.py, and `frame_ms` their sum; `engine_step_ms`:
  one streaming-engine FrameStep (tts_engine/frame_step.py) with one live row. The precisions run in
  lockstep in one process (frame k of each, then frame k + 1), and each figure is the lower quartile
  over frames and repeats: on a shared machine other jobs only ever add time.

Random weights make the agreement figures pessimistic and odd: a random model's logits are nearly flat
(the top two are often within bf16 rounding of each other), so small numeric differences flip the
argmax far more often than on a trained model, whose picks have clear margins. Read them as a lower
bound and as a comparison between modes, not as a quality estimate.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bench.checkpoints import bench_checkpoint
from tts_engine import TTSModel
from tts_engine.checkpoints.precision import PRECISIONS, with_precision
from tts_engine.model.codec_stream import StreamingCodecDecoder
from tts_engine.sampling.processors import process_code0, suppressed_ids
from tts_engine.synthesis.generate import frame_input
from tts_engine.synthesis.prompt import first_target_row

DEFAULT_TEXT = ("Hello there. This is a benchmark of the voicegate engine, "
                "speaking one sentence of moderate length.")
NOTE = ("random weights: nearly flat logits make argmax agreement pessimistic (ties flip on tiny numeric "
        "differences); a trained model's margins are wider. Compare modes, do not read as quality.")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


class _Prompt:
    """The streaming layout of `text` for one voice, as TTSModel.synthesize builds it (default EOS policy)."""

    def __init__(self, model: TTSModel, text: str, speaker: str | None, language: str) -> None:
        talker, device = model.talker, model.device
        self.ids = model.tokenizer.target_ids(text)
        voice = model.voice(speaker, language)
        self.prefill = torch.cat([model.prefix(voice), first_target_row(talker, model.rows, self.ids[0])])
        self.trailing = torch.cat([talker.embed_text(torch.tensor(self.ids[1:], device=device)),
                                   model.rows.eos[None]])
        self.pad = model.rows.pad

    def text_row(self, step: int) -> torch.Tensor:
        return self.trailing[step] if step < self.trailing.shape[0] else self.pad


@torch.no_grad()
def teacher_forced(model: TTSModel, text: str, speaker: str | None, ref_codes: torch.Tensor,
                   language: str = "auto") -> dict[str, Any]:
    """Greedy picks of `model` at every step of the reference codes (T, 16), fed the reference as history.

    The reference: `synthesize(text, speaker=speaker, language=language, greedy=True)` of some model.
    Returns the picks (T, 16) and the agreement fractions for code 0 and for all 16 codes (a model
    teacher-forced on its own greedy codes agrees everywhere)."""
    talker, device = model.talker, model.device
    prompt = _Prompt(model, text, speaker, language)
    length, frames = prompt.prefill.shape[0], ref_codes.shape[0]
    cfg = talker.config
    eos = cfg.codec_eos_token_id
    params = model.sampling(greedy=True)
    talker.setup_cache(1, length + frames + 1)
    seen = torch.zeros(1, cfg.vocab_size, dtype=torch.bool, device=device)
    suppressed = suppressed_ids(cfg.vocab_size, eos, device)
    penalty = torch.tensor([params.repetition_penalty], device=device)
    ref = ref_codes.to(device)
    picks = torch.zeros_like(ref)
    hidden = talker(prompt.prefill[None], torch.arange(length, device=device)[None], aligned=True)[:, -1]
    for frame in range(frames):
        eos_ok = torch.tensor([frame >= max(len(prompt.ids), params.min_new_tokens)], device=device)
        logits = process_code0(talker.logits(hidden).float(), seen, penalty, eos_ok, suppressed, eos)
        picks[frame, 0] = logits.argmax(-1)[0]
        code0 = ref[frame, :1]
        seen[0, code0] = True

        def forced(step_logits: torch.Tensor, step: int) -> torch.Tensor:
            picks[frame, step + 1] = step_logits.float().argmax(-1)[0]  # noqa: B023
            return ref[frame, step + 1:step + 2]  # noqa: B023

        _, embeds = talker.code_predictor.predict(hidden, talker.embed_codec(code0), forced)
        x = frame_input(talker, code0, embeds, prompt.text_row(frame)[None])
        hidden = talker(x, torch.tensor([[length + frame]], device=device), aligned=True)[:, -1]
    same = picks == ref
    return {"picks": picks.cpu(), "code0": float(same[:, 0].float().mean()), "all16": float(same.float().mean())}


def frame_timings(model: TTSModel, text: str, speaker: str | None, frames: int,
                  language: str = "auto") -> Iterator[dict[str, float]]:
    """Greedy frames with the text known up front, one at a time: yields each frame's ms for talker
    (forward + code 0) / predictor (15 codes) / codec (one incremental frame). A generator, so that
    several models can be stepped in lockstep (a busy machine then slows them alike)."""
    with torch.no_grad():
        yield from _frame_timings(model, text, speaker, frames, language)


def _frame_timings(model: TTSModel, text: str, speaker: str | None, frames: int,
                   language: str) -> Iterator[dict[str, float]]:
    talker, dev = model.talker, model.device
    prompt = _Prompt(model, text, speaker, language)
    cfg = talker.config
    eos = cfg.codec_eos_token_id
    params = model.sampling(greedy=True)
    length = prompt.prefill.shape[0]
    talker.setup_cache(1, length + frames + 1)
    codec = StreamingCodecDecoder(model.codec)
    state = codec.new_state()
    seen = torch.zeros(1, cfg.vocab_size, dtype=torch.bool, device=dev)
    suppressed = suppressed_ids(cfg.vocab_size, eos, dev)
    penalty = torch.tensor([params.repetition_penalty], device=dev)
    no_eos = torch.tensor([False], device=dev)  # time a fixed number of frames
    hidden = talker(prompt.prefill[None], torch.arange(length, device=dev)[None], aligned=True)[:, -1]
    for frame in range(frames):
        spent = {"talker": 0.0, "predictor": 0.0, "codec": 0.0}
        t = time.perf_counter()
        logits = process_code0(talker.logits(hidden).float(), seen, penalty, no_eos, suppressed, eos)
        code0 = logits.argmax(-1)
        seen[0, code0] = True
        _sync(dev)
        spent["talker"] += time.perf_counter() - t
        t = time.perf_counter()
        residual, embeds = talker.code_predictor.predict(hidden, talker.embed_codec(code0),
                                                         lambda lg, _s: lg.float().argmax(-1))
        _sync(dev)
        spent["predictor"] += time.perf_counter() - t
        t = time.perf_counter()
        codec.step([state], torch.cat([code0[:, None], residual], dim=1))
        _sync(dev)
        spent["codec"] += time.perf_counter() - t
        t = time.perf_counter()
        x = frame_input(talker, code0, embeds, prompt.text_row(frame)[None])
        hidden = talker(x, torch.tensor([[length + frame]], device=dev), aligned=True)[:, -1]
        _sync(dev)
        spent["talker"] += time.perf_counter() - t
        yield {f"{k}_ms": v * 1e3 for k, v in spent.items()}


def time_frames(model: TTSModel, text: str, speaker: str | None, frames: int,
                language: str = "auto") -> dict[str, float]:
    """Mean ms per frame for talker / predictor / codec, and their sum `frame_ms`."""
    rows = list(frame_timings(model, text, speaker, frames, language))
    out = {key: statistics.fmean(r[key] for r in rows) for key in rows[0]}
    out["frame_ms"] = sum(out.values())
    return out


def lower_quartile(values: list[float]) -> float:
    return statistics.quantiles(values, n=4)[0] if len(values) > 1 else values[0]


def engine_step_timings(model: TTSModel, frames: int) -> Iterator[float]:
    """ms of each FrameStep (tts_engine/frame_step.py) with one live row, after one untimed step."""
    from tts_engine.streaming.frame_step import FrameStep, StepInputs

    step = FrameStep(model, rows=1, max_positions=128)
    sampling = model.sampling(greedy=True)
    for frame in range(frames + 1):
        inputs = StepInputs.empty(1)
        inputs.set_row(0, text_id=1, text_kind=0, position=frame, active=True, eos_ok=False, frame=frame,
                       sampling=sampling)
        t = time.perf_counter()
        step.run(inputs)
        if frame:  # the first one allocates
            yield (time.perf_counter() - t) * 1e3


def snr_db(reference: np.ndarray, other: np.ndarray) -> float | None:
    n = min(reference.shape[0], other.shape[0])
    if n == 0:
        return None
    noise = float(np.sum((reference[:n].astype(np.float64) - other[:n]) ** 2))
    signal = float(np.sum(reference[:n].astype(np.float64) ** 2))
    return math.inf if noise == 0 else 10 * math.log10(signal / noise)


def _leading_same(a: torch.Tensor, b: torch.Tensor) -> int:
    n = min(a.shape[0], b.shape[0])
    same = (a[:n] == b[:n]).all(dim=1)
    return n if bool(same.all()) else int(same.long().argmin())


def _progress(message: str) -> None:
    print(f"bench.precision: {message}", file=sys.stderr, flush=True)


def run(base: TTSModel, text: str, frames: int, repeats: int, precisions: tuple[str, ...]) -> dict[str, Any]:
    speaker = base.speakers[0] if base.speakers else None
    language = "english" if "english" in base.languages else "auto"
    models = {p: base if p == "fp32" else with_precision(base, p) for p in precisions}
    _progress(f"fp32 reference, {frames} frames")
    ref = base.synthesize(text, speaker=speaker, language=language, greedy=True, max_frames=frames)
    report: dict[str, Any] = {"frames": int(ref.codes.shape[0]), "reference_ended_by": ref.ended_by,
                              "codec_converted": False, "note": NOTE, "precisions": {}}
    for name, model in models.items():
        entry: dict[str, Any] = {"talker_dtype": str(model.talker.codec_head.weight.dtype)}
        if name != "fp32":
            _progress(f"{name}: teacher-forced and free-running")
            forced = teacher_forced(model, text, speaker, ref.codes, language)
            free = model.synthesize(text, speaker=speaker, language=language, greedy=True, max_frames=frames)
            entry["agreement"] = {"code0": forced["code0"], "all16": forced["all16"]}
            picked = forced["picks"].clamp(max=base.speech_config.decoder_config.codebook_size - 1)  # EOS picks
            entry["snr_db"] = {"teacher_forced": snr_db(ref.audio, model.decode(picked)),
                               "free_running": snr_db(ref.audio, free.audio)}
            entry["free_running_same_frames"] = _leading_same(ref.codes, free.codes)
        report["precisions"][name] = entry
    samples: dict[str, list[dict[str, float]]] = {p: [] for p in models}
    for round_ in range(repeats + 1):  # the first round warms every model up
        _progress(f"timing round {round_ + 1}/{repeats + 1}")
        runs = {name: frame_timings(model, text, speaker, frames, language) for name, model in models.items()}
        for _ in range(frames):  # frame k of every precision, then frame k + 1: in lockstep
            for name, frames_of in runs.items():
                sample = next(frames_of)
                if round_:
                    samples[name].append(sample)
    steps: dict[str, list[float]] = {p: [] for p in models}
    engine_runs = {name: engine_step_timings(model, min(frames, 12)) for name, model in models.items()}
    for _ in range(min(frames, 12)):
        for name, steps_of in engine_runs.items():
            steps[name].append(next(steps_of))
    for name in models:
        timing = {key: lower_quartile([r[key] for r in samples[name]]) for key in samples[name][0]}
        timing["frame_ms"] = sum(timing.values())
        timing["engine_step_ms"] = lower_quartile(steps[name])
        report["precisions"][name]["timing"] = timing
    fp32 = report["precisions"].get("fp32", {}).get("timing")
    if fp32:
        report["speedup_over_fp32"] = {
            name: {key: fp32[key] / entry["timing"][key] for key in ("talker_ms", "predictor_ms", "frame_ms",
                                                                     "engine_step_ms")}
            for name, entry in report["precisions"].items() if name != "fp32"}
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", type=Path, help="checkpoint directory")
    parser.add_argument("--make", choices=("tiny", "0.6b", "1.7b"), help="write (once) a random checkpoint")
    parser.add_argument("--text", default=DEFAULT_TEXT)
    parser.add_argument("--frames", type=int, default=24, help="frames per utterance (agreement and timing)")
    parser.add_argument("--repeats", type=int, default=3, help="timed rounds (after one warm-up round)")
    parser.add_argument("--precisions", default=",".join(PRECISIONS), help="comma-separated, fp32 first")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    model_dir = args.checkpoint
    if model_dir is None:
        if not args.make:
            parser.error("give --checkpoint DIR or --make SIZE")
        model_dir = bench_checkpoint(args.make)
    precisions = tuple(p.strip() for p in args.precisions.split(",") if p.strip())
    if precisions[:1] != ("fp32",) or any(p not in PRECISIONS for p in precisions):
        parser.error(f"--precisions: fp32 first, then any of {PRECISIONS}")

    from tts_engine import load_model

    t0 = time.perf_counter()
    base = load_model(model_dir, device=args.device)
    load_s = time.perf_counter() - t0
    report: dict[str, Any] = {
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "torch": torch.__version__,
                    "threads": torch.get_num_threads()},
        "model": str(model_dir), "size": base.config.tts_model_size, "text": args.text, "load_s": load_s,
        **run(base, args.text, args.frames, args.repeats, precisions),
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
