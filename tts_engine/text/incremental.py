"""Incremental tokenization: text fragments in, exactly the final text's token ids out, as early as possible.

BPE over the Qwen2 pre-tokenizer is not prefix-stable ("Hel" + "lo" is not tokens("Hel") + tokens("lo")),
but it is applied to each pre-token (regex piece) on its own, and a regex piece that is followed by
another piece can no longer change: the pattern has no look-behind, so matching resumes identically
from a piece boundary. So we keep the uncommitted text, pre-tokenize it (after NFC, as the tokenizer
does), commit the BPE ids of every piece but the last, and hold the last piece back until more text
(or `finish()`) closes it. A combining mark can only change the character before it, which lives in
the held-back piece, so normalising the pending text alone equals normalising the whole.

Leading whitespace of an utterance is dropped: in the official template the target text follows
"assistant\\n", and a text starting with whitespace and a newline would merge into that role token.
Special-token strings (e.g. "<|im_end|>") are not given special meaning: they are spoken as text.
"""

from __future__ import annotations

import unicodedata
from pathlib import Path

from tokenizers import Tokenizer


class IncrementalTokenizer:
    """Feed `push(fragment)` any number of times, then `finish()`; each returns newly committed ids."""

    def __init__(self, tokenizer: Tokenizer) -> None:
        self._pre = tokenizer.pre_tokenizer
        self._bpe = tokenizer.model
        self._pending = ""
        self._started = False  # leading whitespace skipped
        self._finished = False
        self.text = ""  # every character accepted (after the leading-whitespace strip), for bookkeeping

    @classmethod
    def from_dir(cls, path: str | Path) -> IncrementalTokenizer:
        return cls(load_fast_tokenizer(path))

    def _pieces(self) -> list[tuple[str, int]]:
        """(byte-level piece, start offset in the NFC pending text) for the pending text."""
        self._pending = unicodedata.normalize("NFC", self._pending)
        return [(piece, offsets[0]) for piece, offsets in self._pre.pre_tokenize_str(self._pending)]

    def _encode_piece(self, piece: str) -> list[int]:
        return [token.id for token in self._bpe.tokenize(piece)]

    def push(self, fragment: str) -> list[int]:
        if self._finished:
            raise RuntimeError("push() after finish()")
        if not self._started:
            fragment = fragment.lstrip()
            if not fragment:
                return []
            self._started = True
        self.text += fragment
        # NFC(NFC(a) + b) == NFC(a + b): keeping the pending text normalised is exact.
        self._pending += fragment
        pieces = self._pieces()
        if len(pieces) < 2:
            return []
        ids: list[int] = []
        for piece, _ in pieces[:-1]:
            ids += self._encode_piece(piece)
        self._pending = self._pending[pieces[-1][1]:]
        return ids

    def finish(self) -> list[int]:
        if self._finished:
            return []
        self._finished = True
        ids: list[int] = []
        for piece, _ in self._pieces() if self._pending else []:
            ids += self._encode_piece(piece)
        self._pending = ""
        return ids


def load_fast_tokenizer(path: str | Path) -> Tokenizer:
    """The checkpoint's tokenizer as a `tokenizers.Tokenizer` (tokenizer.json, or built by transformers)."""
    path = Path(path)
    if (path / "tokenizer.json").exists():
        return Tokenizer.from_file(str(path / "tokenizer.json"))
    from transformers import Qwen2TokenizerFast

    return Qwen2TokenizerFast.from_pretrained(str(path)).backend_tokenizer
