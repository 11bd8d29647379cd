"""Long text -> pieces an engine stream can hold, cut where speech pauses anyway.

An engine stream holds prompt + frames in `max_positions` (about a minute of speech), so a long request is
spoken as consecutive streams. Cuts fall after a sentence end where one exists in the window, else at the
last whitespace, else (one long word) at the window's end. Pieces keep their whitespace: joined they are
the text again.
"""

from __future__ import annotations

import re

_SENTENCE_END = re.compile(r"[.!?;:。！？；：…]+[\"')\]»”’]*\s+|[。！？]")


def split_text(text: str, max_chars: int) -> list[str]:
    if max_chars < 1:
        raise ValueError("max_chars must be positive")
    pieces: list[str] = []
    pos = 0
    while len(text) - pos > max_chars:
        window = text[pos:pos + max_chars]
        cut = 0
        for match in _SENTENCE_END.finditer(window):
            cut = match.end()
        if cut == 0:
            space = max(window.rfind(" "), window.rfind("\n"), window.rfind("\t"))
            cut = space + 1 if space > 0 else max_chars
        pieces.append(window[:cut])
        pos += cut
    if pos < len(text) or not pieces:
        pieces.append(text[pos:])
    return pieces
