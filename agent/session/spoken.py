"""`spoken_text`: the best estimate of how much of an interrupted utterance the listener heard.

The engine cannot say which character a sample belongs to (no alignment), and `text_tokens_consumed`
runs far ahead of the audio: the model reads one text token per 80 ms frame, while speech takes about
three frames per English token, so it has read a whole sentence when a third of it has been spoken.
The estimate combines two facts:

1. heard time: `played_ms` (audio that left the server) minus what the listener still holds or is still
   delaying (the headless lead, or the browser's jitter buffer + output latency for WebRTC);
2. a speaking rate: `chars_per_second` weighted characters per second (CJK ideographs, kana and hangul
   weigh `cjk_char_weight`, whitespace and punctuation nothing), so the heard time maps to a text prefix;
3. an upper bound: the model cannot have spoken text it had not read, so the prefix never goes past the
   characters of the tokens it had consumed when it produced the frame being heard.

The cut is moved back to a word boundary in space-delimited scripts (a word counts as spoken only when
complete). docs/protocol.md repeats this for clients.
"""

from __future__ import annotations

import unicodedata

from tokenizers import Tokenizer


def is_cjk(ch: str) -> bool:
    code = ord(ch)
    return (0x3040 <= code <= 0x30FF or 0x3400 <= code <= 0x4DBF or 0x4E00 <= code <= 0x9FFF
            or 0xAC00 <= code <= 0xD7AF or 0xF900 <= code <= 0xFAFF or 0x20000 <= code <= 0x2FA1F)


def char_weight(ch: str, cjk_weight: float) -> float:
    if ch.isspace() or unicodedata.category(ch)[0] == "P":
        return 0.0
    return cjk_weight if is_cjk(ch) else 1.0


def rate_prefix(text: str, heard_ms: float, chars_per_second: float, cjk_weight: float) -> int:
    """Characters of `text` spoken in `heard_ms` at the given rate (punctuation rides with its word)."""
    budget = heard_ms / 1000.0 * chars_per_second
    spent = 0.0
    for i, ch in enumerate(text):
        weight = char_weight(ch, cjk_weight)
        if weight and spent + weight > budget + 1e-9:
            return i
        spent += weight
    return len(text)


def snap_to_word(text: str, pos: int) -> int:
    """Move a cut inside a space-delimited word back to the start of that word."""
    if pos <= 0 or pos >= len(text):
        return max(0, min(pos, len(text)))
    if text[pos].isspace() or text[pos - 1].isspace() or is_cjk(text[pos - 1]) or is_cjk(text[pos]):
        return pos
    i = pos
    while i > 0 and not text[i - 1].isspace() and not is_cjk(text[i - 1]):
        i -= 1
    return i


def read_prefix(tokenizer: Tokenizer | None, text: str, tokens_read: int) -> int:
    """Characters of `text` covered by its first `tokens_read` tokens (the engine's tokenization)."""
    if tokenizer is None:
        return len(text)
    stripped = text.lstrip()  # the engine drops an utterance's leading whitespace
    lead = len(text) - len(stripped)
    if tokens_read <= 0:
        return lead
    offsets = tokenizer.encode(stripped, add_special_tokens=False).offsets
    if tokens_read > len(offsets):
        return len(text)
    return lead + offsets[tokens_read - 1][1]


def estimate_spoken(text: str, heard_ms: float, tokens_read: int | None, tokenizer: Tokenizer | None,
                    chars_per_second: float, cjk_weight: float) -> str:
    if heard_ms <= 0 or not text:
        return ""
    pos = rate_prefix(text, heard_ms, chars_per_second, cjk_weight)
    if tokens_read is not None:
        pos = min(pos, read_prefix(tokenizer, text, tokens_read))
    pos = snap_to_word(text, pos)
    return text[:pos].rstrip() if pos < len(text) else text
