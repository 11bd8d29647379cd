"""CodecDecoder (12 Hz Code2Wav): official parameter names, official numerics, usable random weights.

Fixtures come from tests/reference/make_codec_decoder_fixtures.py (official qwen-tts, reference venv).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.reference.live import run_reference_script
from tts_engine.model.codec_decoder import CodecDecoder, init_random_, tiny_codec_decoder_config

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"


@pytest.fixture(scope="module")
def decoder() -> CodecDecoder:
    model = CodecDecoder(tiny_codec_decoder_config()).eval()
    init_random_(model, torch.Generator().manual_seed(0))
    return model


def random_codes(batch: int, frames: int, seed: int) -> torch.Tensor:
    return torch.randint(0, 2048, (batch, 16, frames), generator=torch.Generator().manual_seed(seed))


def test_output_shape_and_range(decoder: CodecDecoder) -> None:
    with torch.inference_mode():
        wav = decoder(random_codes(2, 5, seed=3))
    assert wav.shape == (2, 1, 5 * 1920)
    assert wav.dtype == torch.float32
    assert float(wav.abs().max()) <= 1.0
    assert 0.1 < float(wav.std()) < 0.5  # audible
    assert float((wav.abs() >= 1.0).float().mean()) < 0.01  # mostly unclipped
    assert float((wav[0] - wav[1]).abs().mean()) > 0.05  # depends on the codes


def test_state_dict_names_and_shapes_are_official(decoder: CodecDecoder) -> None:
    official = json.loads((FIXTURES / "codec_decoder_keys_tiny.json").read_text())
    assert official["config"] == tiny_codec_decoder_config().to_dict()
    ours = {name: list(t.shape) for name, t in decoder.state_dict().items()}
    assert ours == official["keys"]
    fresh = CodecDecoder(tiny_codec_decoder_config())
    fresh.load_state_dict(decoder.state_dict(), strict=True)


def test_matches_official_forward(decoder: CodecDecoder, tmp_path: Path) -> None:
    """Against the official decoder run now, on this machine: its own output moves ~1e-5 between CPUs."""
    run_reference_script("make_codec_decoder_fixtures.py", str(tmp_path))
    golden = np.load(tmp_path / "codec_decoder_tiny_official.npz")
    codes = torch.from_numpy(golden["codes"].astype(np.int64))[None]  # (1, 16, 80): past the 72-frame window
    with torch.inference_mode():
        wav = decoder(codes)[0, 0, :: int(golden["stride"])].numpy()
    assert np.abs(wav - golden["samples"]).max() < 1e-5


def test_init_random_is_deterministic(decoder: CodecDecoder) -> None:
    again = CodecDecoder(tiny_codec_decoder_config())
    init_random_(again, torch.Generator().manual_seed(0))
    for (name, a), b in zip(decoder.state_dict().items(), again.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
    usage = [t for name, t in again.state_dict().items() if name.endswith("cluster_usage")]
    assert len(usage) == 16 and all(bool((u > 0).all()) for u in usage)


def test_rejects_wrong_number_of_codebooks(decoder: CodecDecoder) -> None:
    with pytest.raises(ValueError, match="16 codebooks"):
        decoder(torch.zeros(1, 8, 2, dtype=torch.long))
