"""Voice prompts: extraction on a tiny Base checkpoint, the file round trip, and its checks."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch

from tts_engine import VoicePrompt, load_voice_prompt, save_voice_prompt


def _tone(seconds: float = 1.5, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(int(24000 * seconds)) / 24000
    return (0.3 * np.sin(2 * np.pi * 180 * t) + 0.02 * rng.standard_normal(t.size)).astype(np.float32)


def test_make_voice_prompt_xvector_and_icl(tiny_model: Callable[..., object]) -> None:
    model = tiny_model("base")
    audio = _tone()
    plain = model.make_voice_prompt(audio)
    assert not plain.icl and plain.hidden_size == model.config.talker_config.hidden_size
    icl = model.make_voice_prompt(audio, "A short reference.")
    assert icl.icl and icl.ref_codes.shape == (int(np.ceil(audio.size / 1920)), 16)
    assert torch.equal(icl.xvector, plain.xvector)
    other = model.make_voice_prompt(_tone(seed=1) * 0.5)
    assert not torch.equal(other.xvector, plain.xvector)  # the x-vector depends on the audio


def test_xvector_prompt_equals_raw_xvector(tiny_model: Callable[..., object]) -> None:
    model = tiny_model("base")
    prompt = model.make_voice_prompt(_tone())
    a = model.synthesize("Hi there.", voice_prompt=prompt, greedy=True, max_frames=6)
    b = model.synthesize("Hi there.", xvector=prompt.xvector, greedy=True, max_frames=6)
    assert torch.equal(a.codes, b.codes)


def test_cloning_needs_a_base_checkpoint(tiny_model: Callable[..., object]) -> None:
    with pytest.raises(ValueError, match="Base checkpoint"):
        tiny_model("custom_voice").make_voice_prompt(_tone())


def test_wrong_hidden_size_is_refused(tiny_model: Callable[..., object]) -> None:
    model = tiny_model("base")
    foreign = VoicePrompt(torch.zeros(model.config.talker_config.hidden_size + 8))
    with pytest.raises(ValueError, match="hidden size"):
        model.voice(voice_prompt=foreign)


def test_file_round_trip(tmp_path: Path) -> None:
    prompt = VoicePrompt(torch.randn(32), torch.randint(0, 2048, (7, 16)), "Bonjour à tous.")
    path = save_voice_prompt(tmp_path / "v.safetensors", prompt, {"name": "v", "language": "french"})
    loaded, meta = load_voice_prompt(path)
    assert torch.equal(loaded.xvector, prompt.xvector) and torch.equal(loaded.ref_codes, prompt.ref_codes)
    assert loaded.ref_text == "Bonjour à tous." and meta == {"name": "v", "language": "french"}
    assert [p.name for p in tmp_path.iterdir()] == ["v.safetensors"]  # no temp file left behind


def test_bad_files_and_prompts(tmp_path: Path) -> None:
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"not a safetensors file")
    with pytest.raises(ValueError, match="unreadable voice prompt"):
        load_voice_prompt(junk)
    with pytest.raises(ValueError, match="both"):
        VoicePrompt(torch.zeros(8), torch.zeros(3, 16, dtype=torch.long), None)
    with pytest.raises(ValueError, match=r"\(F, 16\)"):
        VoicePrompt(torch.zeros(8), torch.zeros(3, 8, dtype=torch.long), "text")
