"""`python -m bench.gpu`, the project's one-command GPU check, dry-run on the CPU (tiny model, Dynamo capture
only): every stage runs and reports, and what it compares really is compared."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np

from bench.gpu import agreement


def test_agreement_finds_the_first_divergent_frame() -> None:
    a = np.zeros((5, 16), dtype=np.int64)
    b = a.copy()
    assert agreement(a, b)["codes_equal"] and agreement(a, b)["first_divergent_frame"] is None
    b[3, 7] = 1
    found = agreement(a, b)
    assert not found["codes_equal"] and found["first_divergent_frame"] == 3
    assert found["code_agreement"] == round(1 - 1 / 80, 4)


def test_dry_run_reports_every_stage(tmp_path: Path) -> None:
    run = subprocess.run([sys.executable, "-m", "bench.gpu", "--dry-run", "--out", str(tmp_path)],
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    assert json.loads(run.stdout) == report
    pre = report["preflight"]
    assert pre["torch"] == __import__("torch").__version__ and pre["pcm_int16_full_scale_bf16"] == [32767, -32767]
    assert set(pre["sdpa_kernel"]["torch.bfloat16"]) >= {"talker_decode_folded (the engine on CUDA)"}
    assert not any("error" in report[stage] for stage in ("preflight", "eager", "compiled")), report
    compiled = report["compiled"]
    assert compiled["recordings_after_ready"] == 0 and compiled["start_up_compile_s"] > 0
    assert {"1", "8"} <= set(compiled["step_ms_by_batch"]) and compiled["step_ms_by_batch"]["1"]["steps"] > 0
    # the CPU's fp32 contract: the captured step equals eager, and a stream's codes do not depend on batch mates
    assert report["greedy_eager_vs_compiled"]["codes_equal"]
    assert compiled["sampled_alone_vs_in_batch_of_8"]["codes_equal"]
    assert set(report["targets"]["met"]) == {"10x_realtime_one_stream", "64_realtime_streams", "first_frame_25ms",
                                             "warm_start_120s"}
