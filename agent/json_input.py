"""JSON from outside (session messages, OpenAI bodies, ElevenLabs messages), parsed with a nesting limit.

Python's parser recurses once per nesting level: `[[[[...]]]]` ten thousand deep raises RecursionError out of
`json.loads`, which no surface should ever see. A message of any of our APIs is at most a few levels deep, so
anything deeper than `MAX_DEPTH` is refused before the parser runs (one pass over the brackets outside strings).
"""

from __future__ import annotations

import json
import re
from typing import Any

MAX_DEPTH = 32
_STRING = re.compile(r'"(?:[^"\\]|\\.)*"', re.S)
_BRACKET = re.compile(r"[\[\]{}]")


class JsonInputError(ValueError):
    """Not JSON, not an object, or nested too deep; `reason` is a short phrase for an error message."""


def _no_constant(name: str) -> None:
    raise ValueError(f"{name} is not JSON")


def nesting_depth(text: str) -> int:
    """The deepest bracket nesting of `text` outside string literals (malformed text gives a best effort)."""
    depth = deepest = 0
    for match in _BRACKET.finditer(_STRING.sub('""', text)):
        if match.group() in "[{":
            depth += 1
            deepest = max(deepest, depth)
        else:
            depth -= 1
    return deepest


def loads_object(data: str | bytes, max_depth: int = MAX_DEPTH) -> dict[str, Any]:
    """One JSON object (JsonInputError otherwise)."""
    try:
        text = data.decode("utf-8") if isinstance(data, bytes | bytearray) else data
    except UnicodeDecodeError:
        raise JsonInputError("not valid UTF-8") from None
    if ("[" in text or "{" in text) and nesting_depth(text) > max_depth:
        raise JsonInputError(f"nested deeper than {max_depth} levels")
    try:
        obj = json.loads(text, parse_constant=_no_constant)
    except (ValueError, RecursionError) as exc:
        raise JsonInputError(f"not valid JSON: {exc}") from None
    if not isinstance(obj, dict):
        raise JsonInputError(f"a JSON object is expected, not {type(obj).__name__}")
    return obj
