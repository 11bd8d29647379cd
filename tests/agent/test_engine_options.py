"""--compile: what auto means per device, the kernel cache location, the parsers that take it."""

from __future__ import annotations

import pytest

from agent.cli.engine_options import compile_cache_dir, resolve_compile
from agent.cli.main import build_parser


def test_auto_compiles_on_cuda_only() -> None:
    assert resolve_compile("auto", "cuda") and not resolve_compile("auto", "cpu")
    assert resolve_compile("on", "cpu") and not resolve_compile("off", "cuda")
    with pytest.raises(ValueError, match="--compile must be one of"):
        resolve_compile("yes", "cpu")


def test_kernel_cache_defaults_under_the_user_cache_and_respects_a_chosen_one(monkeypatch, tmp_path) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.delenv("TORCHINDUCTOR_CACHE_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert compile_cache_dir() == tmp_path / "voicegate" / "inductor"
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "mine"))
    assert compile_cache_dir() == tmp_path / "mine"


@pytest.mark.parametrize("command", [["serve"], ["wyoming"], ["synth", "--text", "x", "--out", "x.wav"]])
def test_every_engine_command_takes_compile(command: list[str], capsys) -> None:  # type: ignore[no-untyped-def]
    parser = build_parser()
    assert parser.parse_args(command).compile == "auto"
    assert parser.parse_args([*command, "--compile", "off"]).compile == "off"
    with pytest.raises(SystemExit):
        parser.parse_args([*command, "--compile", "maybe"])
    assert "invalid choice: 'maybe'" in capsys.readouterr().err


def test_compiled_synth_refuses_the_offline_layout(tiny_checkpoint, tmp_path, capsys) -> None:  # type: ignore[no-untyped-def]
    from agent.cli.main import main

    out = tmp_path / "x.wav"
    code = main(["synth", "--model", str(tiny_checkpoint("custom_voice")), "--text", "Hi.", "--out", str(out),
                 "--compile", "on", "--non-streaming", "--device", "cpu"])
    assert code == 2 and "--non-streaming runs the offline path" in capsys.readouterr().err
    assert not out.exists()
