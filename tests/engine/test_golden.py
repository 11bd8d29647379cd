"""voicegate reproduces the official qwen-tts 0.1.1 exactly: golden codes, waveforms and token ids.

The fixtures (tests/fixtures/golden/, made by tests/reference/make_golden.py in the isolated reference
env) hold what the official package produced, greedy and in fp32, on tiny `make-checkpoint` weights.
Here the same checkpoints are re-created from their seeds and run through `TTSModel.synthesize`:
codes must be identical, waveforms within 1e-4. No reference env is needed.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from tests.reference.golden import CHECKPOINTS, GOLDEN_DIR, MANIFEST, changed_tensors, checkpoint_fingerprint
from tts_engine import VoicePrompt

WAVE_TOL = 1e-4

_manifest: dict[str, Any] = json.loads(MANIFEST.read_text()) if MANIFEST.exists() else {"cases": []}
CASES: list[dict[str, Any]] = _manifest["cases"]
REGENERATE = "rerun `.venv/bin/python tests/reference/make_golden.py` (it builds the reference env)"


@pytest.fixture(scope="session")
def golden_model(tiny_checkpoint: Callable[..., Path], tiny_model: Callable[..., Any]) -> Callable[..., Any]:
    """golden_model(checkpoint_entry) -> the loaded TTSModel, after checking the weights are the fixtures'."""
    checked: set[tuple[str, int]] = set()
    made_from = json.loads(CHECKPOINTS.read_text())

    def get(ckpt: dict[str, Any]) -> Any:
        key = (ckpt["kind"], int(ckpt["seed"]))
        expected = made_from[ckpt["kind"]]
        assert ckpt["size"] == expected["size"] == "tiny" and ckpt["seed"] == expected["seed"], (ckpt, expected)
        if key not in checked:
            changed = changed_tensors(checkpoint_fingerprint(tiny_checkpoint(*key)), expected["fingerprint"])
            if changed:
                pytest.fail(f"make-checkpoint --kind {key[0]} --seed {key[1]} no longer writes the weights the "
                            f"golden fixtures were made from ({len(changed)} tensors changed, e.g. "
                            f"{changed[:3]}): {REGENERATE}")
            checked.add(key)
        return tiny_model(*key)

    return get


def _voice(case: dict[str, Any], data: Any) -> dict[str, Any]:
    """Voice arguments: the official prompt of a cloning case (x-vector, ICL codes + transcript), or the
    raw official x-vector of the synthetic-signal case."""
    if "xvector" not in data.files:
        return {}
    xvector = torch.from_numpy(data["xvector"])
    if not case.get("clone"):
        return {"xvector": xvector}
    ref_codes = torch.from_numpy(data["ref_codes"].astype(np.int64)) if "ref_codes" in data.files else None
    return {"voice_prompt": VoicePrompt(xvector, ref_codes, case["ref_text"] if ref_codes is not None else None)}


def _synthesize(model: Any, case: dict[str, Any], data: Any) -> Any:
    return model.synthesize(case["text"], speaker=case["speaker"], language=case["language"],
                            instruct=case["instruct"], non_streaming=case["non_streaming"], greedy=True, seed=0,
                            max_frames=case["max_new_tokens"] - 1, eos_policy="official", **_voice(case, data))


def _first_difference(ours: np.ndarray, ref: np.ndarray) -> str:
    if ours.shape != ref.shape:
        frames = min(len(ours), len(ref))
        prefix_equal = bool(np.array_equal(ours[:frames], ref[:frames]))
        return f"shape {ours.shape} vs official {ref.shape} (common {frames} frames equal: {prefix_equal})"
    frame, group = np.argwhere(ours != ref)[0]
    return (f"first difference at frame {frame}, code group {group}: ours {ours[frame].tolist()} vs "
            f"official {ref[frame].tolist()}")


def test_manifest_is_present_and_small() -> None:
    assert CASES, f"no golden manifest at {MANIFEST}: {REGENERATE}"
    assert _manifest["qwen_tts_version"] == "0.1.1"
    total = sum(f.stat().st_size for f in GOLDEN_DIR.iterdir() if f.is_file())
    assert total < 1_500_000, f"golden fixtures take {total} bytes"
    layouts = {(c["checkpoint"]["kind"], c["non_streaming"]) for c in CASES}
    assert len(layouts) == 6, f"every kind in both layouts: {sorted(layouts)}"


@pytest.mark.parametrize("case", CASES, ids=[c["name"] for c in CASES])
def test_tokenizer_matches_official_processor(golden_model: Callable[..., Any], case: dict[str, Any]) -> None:
    model = golden_model(case["checkpoint"])
    assert model.tokenizer.target_ids(case["text"]) == case["text_ids"]
    assert model.role_ids == case["input_ids"][:3]
    if case["instruct_ids"] is not None:
        assert model.tokenizer.instruct_ids(case["instruct"]) == case["instruct_ids"]


@pytest.mark.parametrize("case", CASES, ids=[c["name"] for c in CASES])
def test_codes_and_audio_match_official(golden_model: Callable[..., Any], case: dict[str, Any]) -> None:
    model = golden_model(case["checkpoint"])
    with np.load(GOLDEN_DIR / case["file"]) as data:
        ref_codes = data["codes"].astype(np.int64)
        ref_audio = data["audio"] if "audio" in data.files else None
        out = _synthesize(model, case, data)
    ours = out.codes.cpu().numpy().astype(np.int64)
    assert ours.shape[1:] == (16,)
    assert np.array_equal(ours, ref_codes), _first_difference(ours, ref_codes)
    official_eos = case["ended_by"] == "eos"
    # The official generate may sample EOS as its very last code-0 (frame N-1 never completes): the codes
    # match, and our run stops at max_frames just before it.
    if official_eos and len(ref_codes) < case["max_new_tokens"] - 1:
        assert out.ended_by == "eos", out.ended_by
    elif not official_eos:
        assert out.ended_by != "eos", out.ended_by
    # ICL: the official cut may keep the reference's last sample (case["cut_samples"]).
    assert out.audio.dtype == np.float32 and out.audio.shape == (case["audio_samples"],)
    if ref_audio is not None:
        diff = float(np.max(np.abs(out.audio - ref_audio))) if ref_audio.size else 0.0
        assert diff <= WAVE_TOL, f"waveform max |diff| vs official = {diff:.3g} > {WAVE_TOL}"


def test_sampling_is_seeded(golden_model: Callable[..., Any]) -> None:
    """Not an official comparison (the RNG streams differ): same seed -> same codes; new seed -> new codes."""
    case = next(c for c in CASES if c["checkpoint"]["kind"] == "custom_voice")
    model = golden_model(case["checkpoint"])

    def sample(seed: int) -> torch.Tensor:
        return model.synthesize(case["text"], speaker=case["speaker"], language=case["language"], greedy=False,
                                seed=seed, max_frames=12).codes

    first, again, other = sample(1), sample(1), sample(2)
    assert torch.equal(first, again)
    assert first.shape != other.shape or not torch.equal(first, other)


STREAMING_CASES = [c for c in CASES if not c["non_streaming"] and c["ended_by"] == "eos"]


@pytest.mark.parametrize("case", STREAMING_CASES, ids=[c["name"] for c in STREAMING_CASES])
def test_streaming_engine_fed_char_by_char_matches_official(golden_model: Callable[..., Any],
                                                           case: dict[str, Any]) -> None:
    """Text pushed one character at a time through the streaming engine gives the official codes."""
    from tts_engine import Engine

    model = golden_model(case["checkpoint"])
    data = np.load(GOLDEN_DIR / case["file"])
    with Engine(model) as engine:
        stream = engine.open_stream(case["speaker"], case["language"], case["instruct"], greedy=True,
                                    eos_policy="official", **_voice(case, data))
        for char in case["text"]:
            stream.push_text(char)
        stream.finish()
        frames, end = stream.collect()
    codes = np.stack([f.codes for f in frames]) if frames else np.zeros((0, 16), np.int64)
    assert end.reason == "eos"
    assert np.array_equal(codes, data["codes"]), _first_difference(codes, data["codes"])
