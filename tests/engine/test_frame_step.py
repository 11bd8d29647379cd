"""The compiled frame step: same codes as eager, one graph per (bucket, window), no graph break.

Two backends of torch.compile are used. "eager" runs dynamo's capture (fullgraph, guards, recompiles)
with no code generation, so a long run with streams joining and leaving through several buckets and
KV windows costs seconds; it checks capture and replay. "inductor" is the real compiler: one graph
(one bucket, one window), since generating and building its C++ kernels takes minutes on this CPU
(marked slow: CI runs it, a bare `pytest -q` does not).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator

import numpy as np
import pytest
import torch
import torch._dynamo
from torch._dynamo.utils import counters

from tts_engine import Engine, EngineSettings, Stream, load_model
from tts_engine.model.layers import rope_inv_freq
from tts_engine.streaming.frame_step import (
    INT_COLUMNS,
    WARM_CALLS_CUDA_GRAPHS,
    FrameStep,
    StepInputs,
    bucket_for,
    kv_windows,
)
from tts_engine.synthesis.prompt import TextRows

# Long enough to cross the first 128-slot KV window: a frame per text token, ~150 tokens.
LONG = " ".join(["One stream keeps talking for a good while, so that its positions run past the first window."] * 8)
SHORT = ["Hi there.", "A second voice joins in.", "And a third."]


@pytest.fixture
def fresh_dynamo() -> Iterator[None]:
    torch._dynamo.reset()
    counters.clear()
    yield
    torch._dynamo.reset()


def _codes(frames: list) -> torch.Tensor:  # type: ignore[type-arg]
    return torch.from_numpy(np.stack([f.codes for f in frames]))


def _pcm(frames: list) -> np.ndarray:  # type: ignore[type-arg]
    return np.concatenate([f.pcm for f in frames]).astype(np.float32) / 32767.0


def _run_with_joins(engine: Engine, jobs: list[tuple[str, bool, int]], join_after: int) -> list[list]:  # type: ignore[type-arg]
    """The first job starts alone; each next one opens after the previous has delivered `join_after`
    frames; the short ones finish (leave) while the first keeps going. Returns each job's frames."""
    results: list[list] = [[] for _ in jobs]  # type: ignore[type-arg]
    started = [threading.Event() for _ in jobs]

    def consume(i: int, stream: Stream) -> None:
        for frame in stream:
            results[i].append(frame)
            if len(results[i]) == join_after:
                started[i].set()
        started[i].set()

    threads = []
    for i, (text, greedy, seed) in enumerate(jobs):
        if i:
            assert started[i - 1].wait(timeout=600)
        stream = engine.open_stream(speaker="vivian", greedy=greedy, seed=seed)
        stream.push_text(text)
        stream.finish()
        thread = threading.Thread(target=consume, args=(i, stream))
        thread.start()
        threads.append(thread)
    for thread in threads:
        thread.join(timeout=600)
    return results


def _solo(tiny_model: Callable[..., object], jobs: list[tuple[str, bool, int]]) -> list:  # type: ignore[type-arg]
    model = tiny_model("custom_voice")
    return [model.synthesize(text, speaker="vivian", greedy=greedy, seed=seed)  # type: ignore[attr-defined]
            for text, greedy, seed in jobs]


def test_buckets_and_windows() -> None:
    assert [bucket_for(n) for n in (1, 2, 3, 5, 9, 100, 128)] == [1, 2, 4, 8, 16, 128, 128]
    with pytest.raises(ValueError, match="largest bucket"):
        bucket_for(129)
    assert kv_windows(1024) == (128, 256, 512, 1024)
    assert kv_windows(300) == (128, 256, 300)


def test_captured_step_replays_eager_codes_through_joins_leaves_and_windows(
        tiny_checkpoint, tiny_model, fresh_dynamo) -> None:  # type: ignore[no-untyped-def]
    jobs = [(LONG, True, 0), (SHORT[0], False, 11), (SHORT[2], True, 13)]
    graphs: list[torch.fx.GraphModule] = []

    def recording_backend(gm: torch.fx.GraphModule, example_inputs: list) -> Callable:  # type: ignore[type-arg]
        graphs.append(gm)  # dynamo's capture, run as is (the "eager" backend, counted)
        return gm.forward

    settings = EngineSettings(max_streams=4, max_positions=256, compile=True,
                              compile_backend=recording_backend, warm_up=False)  # type: ignore[arg-type]
    with Engine(load_model(tiny_checkpoint("custom_voice"), device="cpu"), settings) as engine:
        results = _run_with_joins(engine, jobs, join_after=3)
        sizes = set(engine.scheduler.batch_sizes)
        positions_used = engine.scheduler.steps
        calls = dict(engine.scheduler.frame_step.calls)
    assert {1, 2, 3} <= sizes, f"the run never went through buckets 1, 2 and 4: {sizes}"
    assert len(results[0]) > 128, "the long stream never crossed the first KV window"
    for (text, _, _), frames, solo in zip(jobs, results, _solo(tiny_model, jobs), strict=True):
        assert torch.equal(_codes(frames), solo.codes), text
        assert np.abs(_pcm(frames) - solo.audio).max() < 1e-4 + 1 / 32767
    # fullgraph=True turns any break into an error; the recording backend says which graphs were made:
    # the talker one per (bucket, window) that ran, the rest of the step one per bucket, whatever the window.
    assert not counters["graph_break"]
    talker_graphs = [g for g in graphs if not _takes_hidden(g)]
    finish_graphs = [g for g in graphs if _takes_hidden(g)]
    pairs = set(calls)
    assert len(talker_graphs) == len(pairs) and len({w for _, w in pairs}) == 2, pairs
    assert len(finish_graphs) == len({b for b, _ in pairs}) == 3, (len(finish_graphs), pairs)
    assert positions_used > len(graphs)


def _takes_hidden(gm: torch.fx.GraphModule) -> bool:
    """The rest-of-the-step graph takes the talker's hidden state as an input; the talker graph does not."""
    return any(node.op == "placeholder" and "hidden" in node.name for node in gm.graph.nodes)


def _foreign_devices(gm: torch.fx.GraphModule, device: str) -> list[str]:
    """Nodes of a captured graph that make or move a tensor to a device other than `device`, and constants
    held on another device."""
    bad = [node.format_node() for node in gm.graph.nodes
           if any(isinstance(a, torch.device | str) and str(a) in ("cpu", "cuda") and str(a) != device
                  for a in (*node.args, *node.kwargs.values())) or
           ("device" in node.kwargs and str(node.kwargs["device"]) != device)]
    bad += [name for name, t in (*gm.named_buffers(), *gm.named_parameters()) if t.device.type != device]
    return bad


def _capture(fn: Callable, *args: object) -> list[torch.fx.GraphModule]:  # type: ignore[type-arg]
    graphs: list[torch.fx.GraphModule] = []

    def backend(gm: torch.fx.GraphModule, example_inputs: list) -> Callable:  # type: ignore[type-arg]
        graphs.append(gm)
        return gm.forward

    torch.compile(fn, backend=backend, fullgraph=True, dynamic=False)(*args)
    return graphs


def test_the_step_makes_every_tensor_on_its_own_device(tiny_checkpoint, fresh_dynamo) -> None:  # type: ignore[no-untyped-def]
    """Traced with the model on the meta device: a tensor the step makes on the CPU (on a GPU, a host-to-device
    copy and a sync in every frame, as the codec's RoPE frequencies once were) shows up as a foreign node."""
    model = load_model(tiny_checkpoint("custom_voice"), device="cpu")
    model.model.to("meta")
    model.codec.to("meta")
    model.rows = TextRows.build(model.talker, model.config)  # the text-track rows, made on the model's device
    step = FrameStep(model, rows=2, max_positions=128)
    inputs = StepInputs.empty(2)
    inputs.ints[:, INT_COLUMNS.index("position")] = 5
    graphs = _capture(step._step, torch.from_numpy(inputs.ints).to("meta"),
                      torch.from_numpy(inputs.floats).to("meta"), 128)
    assert graphs and all(not _foreign_devices(g, "meta") for g in graphs), [_foreign_devices(g, "meta")
                                                                             for g in graphs]
    # the check is live: frequencies computed per call on the CPU, as the codec decoder once did, are caught
    torch._dynamo.reset()
    stale = _capture(lambda x: x * rope_inv_freq(8, 10000.0).to(x.device)[0], torch.ones(3, device="meta"))
    assert any(_foreign_devices(g, "meta") for g in stale)


def test_warm_up_calls_each_graph_until_cuda_graphs_have_recorded(tiny_checkpoint) -> None:  # type: ignore[no-untyped-def]
    model = load_model(tiny_checkpoint("custom_voice"), device="cpu")
    step = FrameStep(model, rows=2, max_positions=256)
    step.warm_up()
    assert step.calls == {(b, w): 1 for b in (1, 2) for w in (128, 256)}  # eager or compiled on the CPU: once
    # Under CUDA graphs (what an inductor compile on CUDA sets; no GPU here) a graph records on its 2nd call:
    # warm-up calls each pair 3 times, so live traffic only replays.
    step = FrameStep(model, rows=2, max_positions=256)
    step.cuda_graphs = True
    step.warm_up()
    assert set(step.calls.values()) == {WARM_CALLS_CUDA_GRAPHS} == {3} and step.ready
    live = StepInputs.empty(1)
    step.run(live)
    assert step.recordings_after_ready == 0
    # a graph that warm-up missed records in live traffic: counted (for /metrics)
    step.calls.clear()
    step.run(live)
    step.run(live)
    assert step.recordings_after_ready == 1


@pytest.mark.slow
@pytest.mark.parametrize("rows", [2])
def test_inductor_step_equals_eager_greedy_and_sampled(tiny_checkpoint, tiny_model, fresh_dynamo,
                                                       rows: int) -> None:  # type: ignore[no-untyped-def]
    # One bucket and one window: a single graph, built once by inductor (about five minutes here).
    jobs = [(SHORT[1], True, 0), (SHORT[0], False, 21)]
    settings = EngineSettings(max_streams=rows, max_positions=128, compile=True, buckets=(rows,))
    lines: list[str] = []
    with Engine(load_model(tiny_checkpoint("custom_voice"), device="cpu"), settings,
                progress=lines.append) as engine:
        assert len(lines) == 1 and "compiled: batch 2, window 128 (1/1" in lines[0]
        results = _run_with_joins(engine, jobs, join_after=2)
    for (text, _, _), frames, solo in zip(jobs, results, _solo(tiny_model, jobs), strict=True):
        assert torch.equal(_codes(frames), solo.codes), text
        # Inductor reorders float sums: same codes, waveform within a few int16 steps.
        assert np.abs(_pcm(frames) - solo.audio).max() < 1e-4 + 4 / 32767, text
    assert not counters["graph_break"]
    assert counters["stats"]["unique_graphs"] == 2  # the talker's graph and the rest of the step's


def test_warm_up_runs_on_the_engine_thread_and_its_failure_reaches_the_caller(tiny_checkpoint, fresh_dynamo) -> None:  # type: ignore[no-untyped-def]
    """Graphs are guarded on thread-local state and CUDA graph trees are per thread: warming up on another thread
    than the live steps' would trace or record them again in live traffic."""
    model = load_model(tiny_checkpoint("custom_voice"), device="cpu")
    threads: list[str] = []
    settings = EngineSettings(max_streams=1, max_positions=128, compile=True, compile_backend="eager", buckets=(1,))
    with Engine(model, settings, progress=lambda line: threads.append(threading.current_thread().name)) as engine:
        assert threads == ["voicegate-engine"] and engine.scheduler.frame_step.ready
        frames = list(engine.open_stream(speaker="vivian", greedy=True, text="Hi."))
        assert frames
    assert counters["stats"]["unique_graphs"] == 2  # warmed up once, no trace again for the live frames
    broken = EngineSettings(max_streams=1, max_positions=128, compile=True, compile_backend="no-such-backend",
                            buckets=(1,))
    with pytest.raises(Exception, match="no-such-backend"):
        Engine(model, broken)
    assert not model.engine_active  # the model can drive another engine
