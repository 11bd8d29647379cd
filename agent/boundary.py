"""The boundary rules for input from outside, applied at every surface (session, OpenAI, ElevenLabs, Wyoming)
before any engine resource is taken: one rule for text, one for JSON.

Text (`clean_text`), for session `text.append`, OpenAI `input` / `instructions`, ElevenLabs `text` and Wyoming
`synthesize` text:
- A lone surrogate (U+D800..U+DFFF) becomes U+FFFD. JSON may carry one (`"\\ud83d"`): a JavaScript client that
  slices a string between the two halves of an emoji sends exactly that, and so can an LLM token stream. It
  cannot be encoded as UTF-8, so it must never reach the tokenizer; replacing it keeps the rest of the text.
- Control characters other than tab, line feed and carriage return (C0, DEL, C1) are removed: they have no
  sound, and a terminal or a log line should never receive them.

JSON (`loads_object`), for session messages, OpenAI bodies and ElevenLabs messages: Python's parser recurses
once per nesting level, so `[[[[...]]]]` ten thousand deep raises RecursionError out of `json.loads`, which no
surface should ever see. A message of any of our APIs is at most a few levels deep, so anything deeper than
`MAX_DEPTH` is refused before the parser runs (one pass over the brackets outside strings).
"""

from __future__ import annotations

import json
import re
from typing import Any

_LONE_SURROGATE = re.compile("[\ud800-\udfff]")
_CONTROL = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")
REPLACEMENT = "\ufffd"


def clean_text(text: str) -> str:
    """`text` with lone surrogates replaced by U+FFFD and control characters (but tab, CR, LF) removed."""
    if not isinstance(text, str):
        raise TypeError(f"text must be a string, not {type(text).__name__}")
    if not text.isascii():
        text = _LONE_SURROGATE.sub(REPLACEMENT, text)
    return _CONTROL.sub("", text)


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
