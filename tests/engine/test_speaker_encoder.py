"""ECAPA-TDNN speaker encoder and its log-mel front end against the official fixture
(tests/fixtures/speaker_encoder.json, written by tests/reference/speaker_encoder_fixture.py)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.reference.live import run_reference_script
from tests.reference.speaker_signal import synthetic_speech
from tts_engine.model.config import SpeakerEncoderConfig
from tts_engine.model.mel import log_mel_spectrogram, mel_filterbank
from tts_engine.model.speaker_encoder import SpeakerEncoder, init_random_, tiny_speaker_encoder_config

FIXTURE = json.loads((Path(__file__).parents[1] / "fixtures" / "speaker_encoder.json").read_text())


@pytest.mark.parametrize("name, cfg", [
    ("tiny", tiny_speaker_encoder_config(enc_dim=64)),
    ("real_1024", SpeakerEncoderConfig(enc_dim=1024)),
    ("real_2048", SpeakerEncoderConfig(enc_dim=2048)),
])
def test_parameter_names_and_shapes_are_the_official_ones(name: str, cfg: SpeakerEncoderConfig) -> None:
    with torch.device("meta"):
        encoder = SpeakerEncoder(cfg)
    assert {k: list(v.shape) for k, v in encoder.state_dict().items()} == FIXTURE["official_keys"][name]


def test_filterbank_equals_librosa() -> None:
    expected = np.zeros(FIXTURE["filterbank"]["shape"], dtype=np.float32)
    for row, col, value in FIXTURE["filterbank"]["nonzero"]:
        expected[row, col] = value
    ours = mel_filterbank()
    assert ours.dtype == np.float32
    np.testing.assert_allclose(ours, expected, rtol=0, atol=1e-7)
    assert (ours != 0).sum() == (expected != 0).sum()


@pytest.fixture(scope="module")
def official_now(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The official mel and x-vector computed on this machine (their floats move between CPUs)."""
    out = tmp_path_factory.mktemp("speaker-encoder") / "speaker_encoder.json"
    run_reference_script("speaker_encoder_fixture.py", str(out))
    return json.loads(out.read_text())


def test_log_mel_matches_official(official_now: dict) -> None:
    spec = official_now["log_mel"]
    audio = synthetic_speech(**spec["signal"])
    mel = log_mel_spectrogram(audio)
    expected = torch.tensor(spec["values"])
    assert mel.shape == (1, audio.numel() // 256, 128) == (1, *expected.shape)
    assert (mel[0] - expected).abs().max().item() < 1e-5


def _tiny_encoder(seed: int) -> SpeakerEncoder:
    encoder = SpeakerEncoder(SpeakerEncoderConfig.from_dict(FIXTURE["xvector"]["config"])).eval()
    init_random_(encoder, torch.Generator().manual_seed(seed))
    return encoder


def test_xvector_matches_official(official_now: dict) -> None:
    spec = official_now["xvector"]
    encoder = _tiny_encoder(spec["seed"])
    xvector = encoder.extract_xvector(synthetic_speech(**spec["signal"]))
    assert xvector.shape == (64,)
    assert (xvector - torch.tensor(spec["values"])).abs().max().item() < 1e-4


def test_init_random_is_deterministic() -> None:
    a, b = _tiny_encoder(3).state_dict(), _tiny_encoder(3).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["fc.weight"], _tiny_encoder(4).state_dict()["fc.weight"])


def test_batch_rows_are_independent() -> None:
    encoder = _tiny_encoder(0)
    mels = torch.randn(3, 40, 128, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        batch = encoder(mels)
        single = torch.cat([encoder(mels[i:i + 1]) for i in range(3)])
    assert batch.shape == (3, 64)
    assert (batch - single).abs().max().item() < 1e-5


def test_loads_from_meta_device_by_assignment() -> None:
    source = _tiny_encoder(0)
    with torch.device("meta"):
        target = SpeakerEncoder(source.config)
    target.load_state_dict(source.state_dict(), strict=True, assign=True)
    audio = synthetic_speech(24000, seed=1)
    assert torch.equal(target.eval().extract_xvector(audio), source.extract_xvector(audio))
