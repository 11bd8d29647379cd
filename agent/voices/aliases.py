"""OpenAI's voice names as aliases of this server's voices, so clients that only know OpenAI's list work.

Clients such as pipecat's `OpenAITTSService` refuse any voice outside OpenAI's list before sending, so a
compatible server must answer to those names. The default mapping sends each to a preset speaker of the
CustomVoice checkpoints (by voice character: OpenAI's lighter voices to the female presets, the deeper ones to
the male presets), or, where the catalogue lacks that speaker (Base and VoiceDesign checkpoints speak with
saved voices), to the catalogue's default voice. A saved aliases file in the voices directory
(`aliases.json`: {"alloy": "my-voice", ...}) and `voicegate serve --voice-alias alloy=vivian,...` override
it, in that order. A real voice of the same name always wins over an alias.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

log = logging.getLogger(__name__)

OPENAI_VOICES = ("alloy", "ash", "ballad", "cedar", "coral", "echo", "fable", "marin", "nova", "onyx", "sage",
                 "shimmer", "verse")
DEFAULT_TARGETS = {"alloy": "vivian", "ash": "ryan", "ballad": "aiden", "cedar": "eric", "coral": "serena",
                   "echo": "dylan", "fable": "uncle_fu", "marin": "sohee", "nova": "ono_anna", "onyx": "ryan",
                   "sage": "vivian", "shimmer": "serena", "verse": "aiden"}
ALIASES_FILE = "aliases.json"


def parse_aliases(spec: str) -> dict[str, str]:
    """`alloy=vivian,echo=ryan` -> {"alloy": "vivian", "echo": "ryan"} (ValueError for anything else)."""
    aliases: dict[str, str] = {}
    for item in filter(None, (part.strip() for part in spec.split(","))):
        alias, sep, target = item.partition("=")
        if not sep or not alias.strip() or not target.strip():
            raise ValueError(f"a voice alias is NAME=VOICE, not {item!r}")
        aliases[alias.strip().casefold()] = target.strip()
    return aliases


def saved_aliases(voices_dir: Path | None) -> dict[str, str]:
    """The voices directory's aliases file, if any (a broken one is logged and ignored)."""
    if voices_dir is None:
        return {}
    path = voices_dir / ALIASES_FILE
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        log.warning("ignoring %s: %s", path, exc)
        return {}
    if not isinstance(data, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in data.items()):
        log.warning("ignoring %s: not an object of alias -> voice names", path)
        return {}
    return {k.casefold(): v for k, v in data.items()}


def alias_table(voices: list[str], saved: dict[str, str], explicit: dict[str, str]) -> dict[str, str]:
    """alias -> a voice of `voices` (the catalogue's names, default first). Overrides naming a voice the
    catalogue lacks are logged and left out; default targets it lacks fall back to the default voice."""
    if not voices:
        return {}
    known = {v.casefold(): v for v in voices}
    table = {alias: known.get(DEFAULT_TARGETS[alias], voices[0]) for alias in OPENAI_VOICES}
    for source, overrides in (("aliases file", saved), ("--voice-alias", explicit)):
        for alias, target in overrides.items():
            if target.casefold() in known:
                table[alias] = known[target.casefold()]
            else:
                log.warning("%s: alias %r names no voice of this model (%s)", source, alias, target)
    return table
