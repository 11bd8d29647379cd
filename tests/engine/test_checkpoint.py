"""make-checkpoint writes the official layout, and what it writes loads strictly."""

import json
from pathlib import Path

import pytest
import torch

from tts_engine.checkpoints.loading import (
    CheckpointError,
    load_codec_decoder,
    load_model,
    load_model_config,
    load_qwen3_tts,
    load_speech_tokenizer_config,
)
from tts_engine.checkpoints.random_checkpoint import make_checkpoint, model_config
from tts_engine.model.qwen3_tts import Qwen3TTS

LAYOUT = ["config.json", "generation_config.json", "model.safetensors", "vocab.json", "merges.txt",
          "tokenizer_config.json", "speech_tokenizer/config.json", "speech_tokenizer/model.safetensors",
          "speech_tokenizer/preprocessor_config.json", "speech_tokenizer/configuration.json"]


@pytest.mark.parametrize("kind", ["custom_voice", "base", "voice_design"])
def test_tiny_checkpoint_layout_and_strict_load(tiny_checkpoint, kind: str) -> None:  # type: ignore[no-untyped-def]
    path = tiny_checkpoint(kind)
    for name in LAYOUT:
        assert (path / name).is_file(), name
    cfg = json.loads((path / "config.json").read_text())
    assert cfg["model_type"] == "qwen3_tts" and cfg["tts_model_type"] == kind
    model = load_model(path, device="cpu")
    assert (model.model.speaker_encoder is not None) == (kind == "base")
    assert model.config.talker_config.codec_eos_token_id == 2150


RELEASED = [("0.6b", "custom_voice"), ("0.6b", "base"), ("1.7b", "custom_voice"), ("1.7b", "base"),
            ("1.7b", "voice_design")]  # there is no 0.6B VoiceDesign


def _check_real_size(model: Qwen3TTS, size: str, kind: str) -> None:
    n_params = sum(p.numel() for p in model.parameters())
    expected = {"0.6b": 906e6, "1.7b": 1917e6}[size] + (0 if kind != "base" else (8.9e6 if size == "0.6b" else 12e6))
    assert abs(n_params - expected) / expected < 0.02, n_params
    projection = model.talker.code_predictor.small_to_mtp_projection
    assert isinstance(projection, torch.nn.Linear) == (size == "1.7b")


@pytest.mark.parametrize(("size", "kind"), RELEASED)
def test_real_size_configs_have_the_released_shapes(size: str, kind: str) -> None:
    """Every released size/kind, on the meta device (no weights written: seconds, not minutes)."""
    cfg = model_config(size, kind)
    assert cfg.talker_config.hidden_size == (2048 if size == "1.7b" else 1024)
    assert cfg.talker_config.num_hidden_layers == 28
    with torch.device("meta"):
        _check_real_size(Qwen3TTS(cfg), size, kind)


@pytest.mark.slow
def test_real_size_checkpoint_is_written_and_loads_strictly(tmp_path: Path) -> None:
    """One real-size checkpoint end to end (the bench default, with the speaker encoder of Base)."""
    path = make_checkpoint(tmp_path / "ckpt", "0.6b", "base", seed=0)
    cfg = load_model_config(path)
    model = load_qwen3_tts(path, cfg, torch.float32, torch.device("cpu"), meta=True)
    _check_real_size(model, "0.6b", "base")
    load_codec_decoder(path, load_speech_tokenizer_config(path), torch.float32, torch.device("cpu"))


def test_missing_and_unexpected_keys_name_the_file(tiny_checkpoint, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from safetensors.torch import load_file, save_file

    src = tiny_checkpoint("custom_voice")
    state = load_file(str(src / "model.safetensors"))
    state.pop("talker.codec_head.weight")
    state["talker.bogus"] = torch.zeros(1)
    bad = tmp_path / "model.safetensors"
    save_file(state, str(bad))
    cfg = load_model_config(src)
    ckpt = tmp_path
    for name in ("config.json",):
        (ckpt / name).write_text((src / name).read_text())
    with pytest.raises(CheckpointError, match=r"model.safetensors.*missing 1 key.*codec_head.*unexpected.*bogus"):
        load_qwen3_tts(ckpt, cfg, torch.float32, torch.device("cpu"))


def test_corrupt_safetensors_and_foreign_config(tiny_checkpoint, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    import shutil

    ckpt = tmp_path / "ckpt"
    shutil.copytree(tiny_checkpoint("custom_voice"), ckpt)
    (ckpt / "speech_tokenizer" / "model.safetensors").write_bytes(b"\x00garbage")
    with pytest.raises(CheckpointError, match=r"speech_tokenizer/model.safetensors is not a readable"):
        load_model(ckpt, device="cpu")
    (ckpt / "config.json").write_text(json.dumps({"model_type": "llama"}))
    with pytest.raises(CheckpointError, match=r"config.json.*not a Qwen3-TTS config"):
        load_model(ckpt, device="cpu")


def test_offline_hub_id_explains_how_to_pass_a_directory(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))  # an empty cache: nothing downloaded before
    with pytest.raises(CheckpointError, match=r"--model") as err:
        load_model("Qwen/Qwen3-TTS-12Hz-0.6B-CustomVoice", device="cpu")
    assert "local-dir" in str(err.value)
    with pytest.raises(CheckpointError, match="not a checkpoint directory"):
        load_model(str(tmp_path / "nope"), device="cpu")


def test_same_seed_same_weights(tiny_checkpoint, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from safetensors.torch import load_file

    again = make_checkpoint(tmp_path / "again", "tiny", "base", seed=0)
    for name in ("model.safetensors", "speech_tokenizer/model.safetensors"):
        a, b = load_file(str(tiny_checkpoint("base") / name)), load_file(str(again / name))
        assert a.keys() == b.keys()
        assert all(torch.equal(a[k], b[k]) for k in a), name
