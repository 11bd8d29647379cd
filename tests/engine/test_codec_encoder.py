"""Mimi-based codec encoder against the official tokenizer (tests/fixtures/codec_encoder.json, written by
tests/reference/codec_encoder_fixture.py)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from tests.reference.speaker_signal import synthetic_speech
from tts_engine.model.codec_encoder import CodecEncoder, init_random_, real_mimi_config, tiny_mimi_config

FIXTURE = json.loads((Path(__file__).parents[1] / "fixtures" / "codec_encoder.json").read_text())


@pytest.fixture(scope="module")
def encoder() -> CodecEncoder:
    enc = CodecEncoder.from_config(FIXTURE["mimi_config"]).eval()
    init_random_(enc, torch.Generator().manual_seed(FIXTURE["seed"]))
    return enc


@pytest.mark.parametrize("name, config", [("tiny", tiny_mimi_config()), ("real", real_mimi_config())])
def test_state_dict_is_the_official_encoder_layout(name: str, config: dict) -> None:
    with torch.device("meta"):
        enc = CodecEncoder.from_config(config)
    assert {k: list(v.shape) for k, v in enc.state_dict().items()} == FIXTURE["official_keys"][name]


def test_tiny_config_is_the_fixture_config() -> None:
    assert tiny_mimi_config() == FIXTURE["mimi_config"]


@pytest.mark.parametrize("clip", ["short", "long"])
def test_codes_equal_official(encoder: CodecEncoder, clip: str) -> None:
    """The long clip runs past 250 frames at 25 Hz: a sliding attention window would change its tail."""
    spec = FIXTURE["clips"][clip]
    codes = encoder.encode(synthetic_speech(**spec["signal"]))
    expected = torch.tensor(spec["codes"])
    assert codes.dtype == torch.int64 and codes.shape == expected.shape
    mismatched = (codes != expected).any(dim=1).nonzero().flatten().tolist()
    assert not mismatched, f"frames {mismatched[:10]} differ (init_random_ changed? regenerate the fixture)"


def test_codes_vary(encoder: CodecEncoder) -> None:
    codes = encoder.encode(synthetic_speech(24000 * 4, seed=3))
    assert codes.shape == (50, 16)
    assert all(len(set(codes[:, q].tolist())) > 5 for q in range(16))
    assert int(codes.min()) >= 0 and int(codes.max()) < 2048


@pytest.mark.parametrize("n", [1, 500, 1919, 1920, 1921, 3 * 1920 + 7])
def test_one_frame_per_1920_samples(encoder: CodecEncoder, n: int) -> None:
    assert encoder.encode(synthetic_speech(n, seed=n)).shape == (math.ceil(n / 1920), 16)


def test_encoder_is_causal(encoder: CodecEncoder) -> None:
    audio = synthetic_speech(1920 * 30 + 500, seed=4)
    full = encoder.encode(audio)
    assert torch.equal(encoder.encode(audio[: 1920 * 12]), full[:12])


def test_init_random_is_deterministic() -> None:
    def state(seed: int) -> dict[str, torch.Tensor]:
        enc = CodecEncoder.from_config(tiny_mimi_config())
        init_random_(enc, torch.Generator().manual_seed(seed))
        return enc.state_dict()

    a, b, c = state(1), state(1), state(2)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not any(torch.equal(a[k], c[k]) for k in a if k.endswith("embed_sum"))


def test_loads_from_meta_device_by_assignment(encoder: CodecEncoder) -> None:
    """Nothing is left uninitialised: the module has no non-persistent buffers (RoPE is computed)."""
    with torch.device("meta"):
        target = CodecEncoder.from_config(FIXTURE["mimi_config"])
    target.load_state_dict(encoder.state_dict(), strict=True, assign=True)
    assert not [name for name, t in [*target.named_parameters(), *target.named_buffers()] if t.is_meta]
    audio = synthetic_speech(24000, seed=9)
    assert torch.equal(target.eval().encode(audio), encoder.encode(audio))
