"""OpenAI's voice names as aliases of the catalogue's voices (agent.voices.aliases): defaults per model kind,
the voices directory's aliases file and --voice-alias overriding them, real names winning."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from agent.voices.aliases import OPENAI_VOICES, alias_table, parse_aliases
from agent.voices.catalogue import ModelInfo
from agent.voices.errors import VoiceError


def test_every_openai_voice_resolves_to_a_preset_of_a_custom_voice_model(engine: Any) -> None:
    info = ModelInfo.from_engine(engine, "tiny")
    for name in OPENAI_VOICES:
        resolved = info.resolve(name)
        assert resolved.name in info.voices, (name, resolved.name)
    assert info.resolve("alloy").name == "vivian" and info.resolve("Onyx").name == "ryan"  # case-insensitive
    with pytest.raises(VoiceError, match="unknown voice 'nobody'"):
        info.resolve("nobody")


def test_overrides_file_then_flag_and_real_names_win(engine: Any, tmp_path: Path) -> None:
    (tmp_path / "aliases.json").write_text(json.dumps({"alloy": "ryan", "echo": "aiden", "nova": "missing"}))
    info = ModelInfo.from_engine(engine, "tiny", tmp_path, aliases=parse_aliases("echo=serena"))
    assert info.resolve("alloy").name == "ryan"  # the voices directory's file
    assert info.resolve("echo").name == "serena"  # --voice-alias wins over the file
    assert info.resolve("nova").name == "ono_anna"  # an override naming no voice is ignored (logged)
    assert info.resolve("vivian").name == "vivian"


def test_a_model_without_those_speakers_maps_them_to_its_default_voice() -> None:
    table = alias_table(["my-clone", "other"], {}, {})
    assert set(table) == set(OPENAI_VOICES) and set(table.values()) == {"my-clone"}
    assert alias_table([], {}, {}) == {}
    # a voice actually named like an OpenAI voice is itself, not the alias
    info = ModelInfo("m", "custom_voice", ["vivian", "alloy"], ["english"], instruct=False)
    assert info.resolve("alloy").name == "alloy" and info.resolve("coral").name == "vivian"


def test_alias_specs_are_parsed_strictly() -> None:
    assert parse_aliases(" alloy=vivian, Echo=ryan ,") == {"alloy": "vivian", "echo": "ryan"}
    for bad in ("alloy", "alloy=", "=vivian"):
        with pytest.raises(ValueError, match="NAME=VOICE"):
            parse_aliases(bad)
