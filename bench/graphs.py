"""What start-up compiles: the frame step's graphs, their size and Dynamo's tracing time. JSON on stdout.

    python -m bench.graphs --make tiny --max-streams 16 --max-positions 1024

Two layouts of the same step, captured side by side in one run with Dynamo only (a recording backend, no
code generation: it measures the tracing work every start repeats even with a warm kernel cache):
- `single`: the whole step as one compiled function, one graph per (bucket, window) (the layout before the
  split);
- `split`: the talker's forward per (bucket, window) and the rest of the step (code 0, code predictor,
  sampling, codec frame) per bucket (frame_step.py today).
For each: graphs, FX nodes in all graphs, and the seconds Dynamo took to capture them all. Node counts do
not depend on the model's size (only its depth); tracing time does a little.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from collections.abc import Callable
from typing import Any

import torch
import torch._dynamo

from bench.checkpoints import bench_checkpoint
from tts_engine import load_model
from tts_engine.streaming.frame_step import INT_COLUMNS, FrameStep, StepInputs


def capture(step: FrameStep, layout: str) -> dict[str, Any]:
    """Trace every (bucket, window) of `step` under `layout`; graphs, nodes and seconds."""
    graphs: list[torch.fx.GraphModule] = []

    def recording_backend(gm: torch.fx.GraphModule, example_inputs: list[Any]) -> Callable[..., Any]:
        graphs.append(gm)
        return gm.forward

    torch._dynamo.reset()
    torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit,
                                               2 * len(step.buckets) * len(step.windows))
    options: dict[str, Any] = {"backend": recording_backend, "fullgraph": True, "dynamic": False}
    if layout == "single":
        whole = torch.compile(step._step, **options)
    else:
        step._talker_step = torch.compile(step._talker_hidden, **options)
        step._finish_step = torch.compile(step._finish_frame, **options)
        whole = step._step
    started = time.perf_counter()
    with torch.no_grad():
        for bucket in step.buckets:
            for window in step.windows:
                inputs = StepInputs.empty(bucket)
                inputs.ints[:, INT_COLUMNS.index("position")] = window - 1
                whole(torch.from_numpy(inputs.ints), torch.from_numpy(inputs.floats), window)
    seconds = time.perf_counter() - started
    step._talker_step, step._finish_step = step._talker_hidden, step._finish_frame
    return {"graphs": len(graphs), "fx_nodes": sum(len(g.graph.nodes) for g in graphs),
            "largest_graph_nodes": max(len(g.graph.nodes) for g in graphs), "trace_s": round(seconds, 2)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="a checkpoint directory (default: --make's random one)")
    parser.add_argument("--make", default="tiny", help="tiny | 0.6b | 1.7b: a random CustomVoice checkpoint")
    parser.add_argument("--max-streams", type=int, default=16, help="the serve default (buckets 1..16)")
    parser.add_argument("--max-positions", type=int, default=1024)
    args = parser.parse_args(argv)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    model = load_model(args.model or bench_checkpoint(args.make), device="cpu")
    step = FrameStep(model, args.max_streams, args.max_positions)
    result: dict[str, Any] = {"machine": platform.processor() or platform.machine(), "torch": torch.__version__,
                              "buckets": list(step.buckets), "windows": list(step.windows)}
    for layout in ("single", "split"):
        result[layout] = capture(step, layout)
    result["split_over_single"] = {key: round(result["split"][key] / result["single"][key], 3)
                                   for key in ("fx_nodes", "trace_s")}
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
