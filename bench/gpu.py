"""The project's one-command GPU check: is the GPU path right and fast? JSON in OUT/gpu_check.json and on stdout.

    python -m bench.gpu --out gpu_check_out                 # on an NVIDIA GPU (random 0.6B weights, no network)
    python -m bench.gpu --dry-run --out /tmp/dry            # the plumbing on a CPU: tiny model, Dynamo capture only

Stages (each under the time budget; a stage that fails is reported and the next one still runs):
  preflight   torch / CUDA / cuDNN / Triton versions, a C compiler and Python.h (Triton builds its launcher with
              them at run time), the SDPA kernel PyTorch picks for each attention call of the model (the talker's
              decode as the engine calls it: query heads folded, and as it was: enable_gqa), int8 weight-only
              vs bf16 matmul time, PCM conversion at full scale on the device.
  checkpoint  random CustomVoice weights of --size (kept in OUT/ck-SIZE between runs).
  eager       the engine's frame step uncompiled: time by batch size.
  compiled    the engine as `serve` runs it (compiled; CUDA graphs on CUDA): start-up compile time, CUDA-graph
              recordings after ready (must stay 0), first frame after the first word, step time by batch size
              (real time while step_ms <= 80), and a second start with the kernel cache warm.
  agreement   codes of one stream alone vs the same stream in a batch of 8 (sampled), compiled vs eager (greedy);
              on a GPU these are measured agreements, not equalities (cuBLAS picks kernels by shape, bf16 rounds
              differently eager vs compiled); the exact-equality contract is the CPU's fp32 one.
The targets of docs/gpu.md (0.6B, bf16, compiled) are checked in `targets`. The lent GPU machines have no
network: `bash bench/gpu_wheels.sh` prepares, on a machine with one, the wheels of the packages they lack.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import sys
import sysconfig
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from bench.streaming import _step_times, _ttfa
from tts_engine import Engine, EngineSettings, load_model, make_checkpoint
from tts_engine.model.codec_stream import pcm_to_int16

TEXT = ("Hello there. This check runs the compiled frame step and compares its codes with the eager step, "
        "one eighty millisecond frame at a time.")
TARGETS = {"step_ms_b1_max": 8.0, "realtime_streams_min": 64, "first_frame_ms_max": 25.0,
           "warm_start_s_max": 120.0}


class Check:
    """The report, saved after every stage, and the time budget."""

    def __init__(self, out: Path, budget_s: float) -> None:
        self.out, self.deadline, self.report = out, time.monotonic() + budget_s, {}

    def left(self) -> float:
        return self.deadline - time.monotonic()

    def stage(self, name: str, fn: Callable[[], Any], needs_s: float = 0.0) -> None:
        if self.left() < needs_s:
            self.report[name] = {"skipped": f"out of budget ({self.left():.0f} s left, needs ~{needs_s:.0f})"}
        else:
            started = time.monotonic()
            try:
                self.report[name] = fn()
            except Exception as exc:  # a failed stage is a finding; the next one still runs
                self.report[name] = {"error": f"{type(exc).__name__}: {exc}"}
            print(f"gpu check: {name} done in {time.monotonic() - started:.1f} s", file=sys.stderr, flush=True)
        self.save()

    def save(self) -> None:
        (self.out / "gpu_check.json").write_text(json.dumps(self.report, indent=2, default=str))


# ---- preflight ------------------------------------------------------------------------------------------
def preflight(device: torch.device) -> dict[str, Any]:
    cuda = device.type == "cuda"
    report: dict[str, Any] = {
        "python": sys.version.split()[0], "torch": torch.__version__, "torch_cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if cuda else None,
        "gpu": torch.cuda.get_device_name(device) if cuda else platform.processor() or platform.machine(),
        "c_compiler": shutil.which(os.environ.get("CC", "cc")) or shutil.which("gcc"),
        "python_h": os.path.exists(os.path.join(sysconfig.get_paths()["include"], "Python.h"))}
    try:
        import triton

        report["triton"] = triton.__version__
    except ImportError as exc:
        report["triton"] = f"missing: {exc}"
    report["sdpa_kernel"] = {str(dtype): sdpa_choices(device, dtype) for dtype in (torch.bfloat16, torch.float32)}
    report["int8_weight_only_us"] = int8_timings(device)
    full_scale = torch.tensor([1.0, -1.0], device=device, dtype=torch.bfloat16)
    report["pcm_int16_full_scale_bf16"] = pcm_to_int16(full_scale).tolist()  # must be [32767, -32767]
    return report


def sdpa_choices(device: torch.device, dtype: torch.dtype) -> dict[str, str]:
    """The fused-attention kernel PyTorch would pick for each attention call shape of the 0.6B model."""
    from torch.nn.attention import SDPBackend

    names = {int(v): k for k, v in SDPBackend.__members__.items()}

    def choice(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None = None,
               causal: bool = False, gqa: bool = False) -> str:
        try:
            return names[torch._fused_sdp_choice(q, k, v, attn_mask=mask, is_causal=causal, enable_gqa=gqa)]
        except Exception as exc:  # some builds refuse a combination outright
            return f"error: {exc}"

    def t(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, device=device, dtype=dtype)

    batch, window, heads, kv_heads, dim = 8, 256, 16, 8, 128
    keys = t(batch, kv_heads, window, dim)
    positions = torch.full((batch, 1), 200, device=device)
    mask = torch.arange(window, device=device)[None, None, None, :] <= positions[:, None, :, None]
    folded_mask = mask.expand(batch, 1, heads // kv_heads, window)  # one query per row: G folded queries
    return {
        "talker_decode_folded (the engine on CUDA)": choice(t(batch, kv_heads, heads // kv_heads, dim), keys, keys,
                                                            folded_mask),
        "talker_decode_enable_gqa (before)": choice(t(batch, heads, 1, dim), keys, keys, mask, gqa=True),
        "predictor_causal_q2": choice(t(batch, heads, 2, dim), t(batch, kv_heads, 2, dim), t(batch, kv_heads, 2, dim),
                                      causal=True, gqa=True),
        "codec_window_mask": choice(t(batch, 16, 1, 64), t(batch, 16, 72, 64), t(batch, 16, 72, 64),
                                    torch.ones(batch, 1, 1, 72, dtype=torch.bool, device=device)),
    }


def timed_us(fn: Callable[[], Any], device: torch.device, n: int = 30) -> float:
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    started = time.perf_counter()
    for _ in range(n):
        fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return round((time.perf_counter() - started) / n * 1e6, 1)


def int8_timings(device: torch.device) -> dict[str, Any]:
    """Weight-only int8 (torch._weight_int8pack_mm) vs a bf16 linear of a talker-sized layer, in us."""
    out: dict[str, Any] = {}
    w = torch.randn(3072, 1024, device=device, dtype=torch.bfloat16)
    q = torch.randint(-127, 128, (3072, 1024), device=device, dtype=torch.int8)
    scales = torch.rand(3072, device=device, dtype=torch.bfloat16)
    for m in (1, 64):
        x = torch.randn(m, 1024, device=device, dtype=torch.bfloat16)
        try:
            out[f"M{m}"] = {"bf16_linear": timed_us(lambda x=x: F.linear(x, w), device),
                            "int8pack_mm": timed_us(lambda x=x: torch._weight_int8pack_mm(x, q, scales), device)}
        except Exception as exc:
            out[f"M{m}"] = f"{type(exc).__name__}: {exc}"
    return out


# ---- the engine -----------------------------------------------------------------------------------------
WINDOWS = (128, 256)  # KV windows compiled: two, so that a window change is part of what is checked


def settings(compile: bool, buckets: tuple[int, ...], backend: str,
             windows: tuple[int, ...] = WINDOWS) -> EngineSettings:
    return EngineSettings(max_streams=max(buckets), max_positions=windows[-1], kv_windows=windows, buckets=buckets,
                          compile=compile, compile_backend=backend, max_lead_frames=10**6)


def wait_idle(engine: Engine, timeout: float = 30.0) -> None:
    """Until earlier (cancelled) streams have left their rows: a run starts in its own bucket."""
    deadline = time.monotonic() + timeout
    while engine.scheduler.live_streams and time.monotonic() < deadline:
        time.sleep(0.01)


def run_streams(engine: Engine, speaker: str, seeds: list[int], greedy: bool, frames: int
                ) -> list[np.ndarray]:
    """All streams open at once (batched), `frames` frames each: codes (T, 16) per stream."""
    wait_idle(engine)
    streams = [engine.open_stream(speaker=speaker, greedy=greedy, seed=s, text=TEXT) for s in seeds]
    results: list[np.ndarray] = [np.zeros((0, 16), dtype=np.int64)] * len(streams)

    def drain(i: int) -> None:
        with streams[i] as stream:
            got = []
            for frame in stream:
                got.append(frame.codes)
                if len(got) >= frames:
                    break
            results[i] = np.stack(got) if got else results[i]

    threads = [threading.Thread(target=drain, args=(i,)) for i in range(len(streams))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return results


def agreement(a: np.ndarray, b: np.ndarray) -> dict[str, Any]:
    n = min(len(a), len(b))
    equal_rows = (a[:n] == b[:n]).all(axis=1)
    return {"frames": [len(a), len(b)], "codes_equal": bool(equal_rows.all()) and len(a) == len(b),
            "first_divergent_frame": None if equal_rows.all() else int(np.argmin(equal_rows)),
            "code_agreement": round(float((a[:n] == b[:n]).mean()), 4) if n else None}


def compiled_stage(model: Any, speaker: str, buckets: tuple[int, ...], batches: list[int], backend: str,
                   check: Check, frames: int, windows: tuple[int, ...]) -> dict[str, Any]:
    report: dict[str, Any] = {"buckets": buckets, "windows": windows, "backend": backend}
    started = time.monotonic()
    with Engine(model, settings(True, buckets, backend, windows),
                progress=lambda line: print(line, file=sys.stderr)) as engine:
        report["start_up_compile_s"] = round(time.monotonic() - started, 1)
        step = engine.scheduler.frame_step
        report["cuda_graphs"] = step.cuda_graphs
        engine.scheduler.profile = True
        report["first_frame_ms_first_call"] = round(_ttfa(engine, speaker, "Warm up the first audio.", 30.0), 1)
        ttfas = [_ttfa(engine, speaker, "Hello there, this is a quick check of first audio.", 30.0)
                 for _ in range(5)]
        report["first_frame_ms_p50"] = round(statistics.median(ttfas), 1)
        by_batch: dict[str, Any] = {}
        for batch in batches:
            if batch > max(buckets) or check.left() < 30:
                by_batch[str(batch)] = "skipped"
                continue
            wait_idle(engine)
            by_batch[str(batch)] = _step_times(engine, speaker, batch, frames=frames)
        report["step_ms_by_batch"] = by_batch
        solo = run_streams(engine, speaker, [3], greedy=False, frames=frames)[0]
        in_batch = run_streams(engine, speaker, list(range(3, 11)), greedy=False, frames=frames)[0]
        report["sampled_alone_vs_in_batch_of_8"] = agreement(solo, in_batch)
        report["greedy_codes"] = run_streams(engine, speaker, [0], greedy=True, frames=frames)[0]
        report["recordings_after_ready"] = step.recordings_after_ready  # must stay 0
    started = time.monotonic()
    with Engine(model, settings(True, buckets, backend, windows)):
        report["warm_start_s"] = round(time.monotonic() - started, 1)  # kernels from the cache; Dynamo traces again
    return report


def eager_stage(model: Any, speaker: str, batches: list[int], frames: int) -> dict[str, Any]:
    with Engine(model, settings(False, tuple(sorted(set(batches))), "inductor")) as engine:
        engine.scheduler.profile = True
        by_batch = {str(b): _step_times(engine, speaker, b, frames=frames) for b in batches}
        greedy = run_streams(engine, speaker, [0], greedy=True, frames=frames)[0]
    return {"step_ms_by_batch": by_batch, "greedy_codes": greedy}


def targets(report: dict[str, Any], size: str) -> dict[str, Any]:
    compiled = report.get("compiled", {})
    steps = compiled.get("step_ms_by_batch", {})
    realtime = [int(b) for b, r in steps.items() if isinstance(r, dict) and r.get("realtime")]
    b1 = steps.get("1", {}).get("step_ms") if isinstance(steps.get("1"), dict) else None
    measured = {"step_ms_b1": b1, "largest_realtime_batch_measured": max(realtime) if realtime else 0,
                "first_frame_ms_p50": compiled.get("first_frame_ms_p50"), "warm_start_s": compiled.get("warm_start_s"),
                "recordings_after_ready": compiled.get("recordings_after_ready")}
    met = {"10x_realtime_one_stream": b1 is not None and b1 <= TARGETS["step_ms_b1_max"],
           "64_realtime_streams": measured["largest_realtime_batch_measured"] >= TARGETS["realtime_streams_min"],
           "first_frame_25ms": (measured["first_frame_ms_p50"] or 1e9) <= TARGETS["first_frame_ms_max"],
           "warm_start_120s": (measured["warm_start_s"] or 1e9) <= TARGETS["warm_start_s_max"]}
    return {"size": size, "targets_apply_to": "0.6b on a GPU, bf16, compiled", "measured": measured, "met": met}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("gpu_check_out"))
    parser.add_argument("--size", default="0.6b", help="tiny | 0.6b | 1.7b (random CustomVoice weights)")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--buckets", default="1,8,64", help="compiled batch buckets (one graph set each)")
    parser.add_argument("--batches", default="1,2,4,8,16,32,64", help="batch sizes timed")
    parser.add_argument("--frames", type=int, default=12, help="frames per stream per measurement")
    parser.add_argument("--budget-s", type=float, default=450.0, help="the whole run (the stages share it)")
    parser.add_argument("--backend", default="inductor", help="torch.compile backend (eager: capture only)")
    parser.add_argument("--dry-run", action="store_true",
                        help="the plumbing on a CPU: --size tiny --device cpu --backend eager, small batches")
    args = parser.parse_args(argv)
    windows = WINDOWS
    if args.dry_run:  # one window: half the graphs to trace on a CPU
        args.size, args.device, args.backend, args.buckets, args.batches, args.frames = \
            "tiny", "cpu", "eager", "1,8", "1,8", 4
        windows = (128,)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    args.out.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str((args.out / "inductor").resolve()))  # cold compile first
    device = torch.device(args.device)
    buckets = tuple(int(b) for b in args.buckets.split(","))
    batches = [int(b) for b in args.batches.split(",")]
    check = Check(args.out, args.budget_s)
    check.report["command"] = " ".join(sys.argv)
    check.stage("preflight", lambda: preflight(device))
    checkpoint = args.out / f"ck-{args.size}"
    if not (checkpoint / "model.safetensors").exists():
        check.stage("checkpoint", lambda: str(make_checkpoint(checkpoint, args.size, "custom_voice", seed=0)))
    model = load_model(checkpoint, device=device)
    speaker = model.speakers[0]
    check.report["model"] = {"size": args.size, "device": str(model.device),
                             "talker_dtype": str(model.talker.codec_head.weight.dtype),
                             "codec_dtype": str(next(model.codec.parameters()).dtype)}
    check.stage("eager", lambda: eager_stage(model, speaker, batches, args.frames), needs_s=20)
    check.stage("compiled", lambda: compiled_stage(model, speaker, buckets, batches, args.backend, check,
                                                   args.frames, windows), needs_s=60)
    eager, compiled = check.report.get("eager", {}), check.report.get("compiled", {})
    if "greedy_codes" in eager and "greedy_codes" in compiled:
        check.report["greedy_eager_vs_compiled"] = agreement(eager.pop("greedy_codes"),
                                                             compiled.pop("greedy_codes"))
    check.report["targets"] = targets(check.report, args.size)
    check.save()
    print(json.dumps(check.report, indent=2, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
