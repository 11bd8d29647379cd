"""The one rule for text that arrives from outside, applied at every surface before it reaches an engine stream.

Session `text.append`, OpenAI `input` / `instructions`, ElevenLabs `text` and Wyoming `synthesize` text all go
through `clean_text`:

- A lone surrogate (U+D800..U+DFFF) becomes U+FFFD. JSON may carry one (`"\\ud83d"`): a JavaScript client that
  slices a string between the two halves of an emoji sends exactly that, and so can an LLM token stream. It
  cannot be encoded as UTF-8, so it must never reach the tokenizer; replacing it keeps the rest of the text.
- Control characters other than tab, line feed and carriage return (C0, DEL, C1) are removed: they have no
  sound, and a terminal or a log line should never receive them.
"""

from __future__ import annotations

import re

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
