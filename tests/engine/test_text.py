"""Incremental tokenization gives exactly the final text's ids, whatever the chunking (real Qwen2 vocab)."""

from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tokenizers import Tokenizer

from tts_engine.text.incremental import IncrementalTokenizer, load_fast_tokenizer
from tts_engine.text.tokenizer import TextTokenizer
from tts_engine.text.vocab import write_qwen2_tokenizer


@pytest.fixture(scope="module")
def vocab_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("qwen2-vocab")
    write_qwen2_tokenizer(path)
    return path


@pytest.fixture(scope="module")
def whole(vocab_dir: Path) -> TextTokenizer:
    return TextTokenizer.from_dir(vocab_dir)


@pytest.fixture(scope="module")
def fast(vocab_dir: Path) -> Tokenizer:
    return load_fast_tokenizer(vocab_dir)


def _incremental(fast: Tokenizer, fragments: list[str]) -> list[int]:
    tok = IncrementalTokenizer(fast)
    ids: list[int] = []
    for fragment in fragments:
        ids += tok.push(fragment)
    return ids + tok.finish()


ALPHABET = st.sampled_from(list(
    "abcdefghijklmnopqrstuvwxyzABCXYZ éèüñçøß 0123456789 .,!?;:'\"-()[] \n\t"
    "日本語のテキスト中文字符 한국어 Привет мир 😀👍🏽🎉 \u0301\u0308 ..."))
TEXTS = st.lists(ALPHABET, min_size=1, max_size=60).map("".join)


def _chunk(text: str, cuts: list[int]) -> list[str]:
    points = sorted({c % (len(text) + 1) for c in cuts})
    pieces, last = [], 0
    for p in [*points, len(text)]:
        pieces.append(text[last:p])
        last = p
    return pieces


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=TEXTS, cuts=st.lists(st.integers(0, 200), max_size=30))
def test_any_chunking_gives_the_whole_text_ids(fast: Tokenizer, whole: TextTokenizer, text: str,
                                                cuts: list[int]) -> None:
    expected = whole.target_ids(text.lstrip())
    assert _incremental(fast, _chunk(text, cuts)) == expected
    assert _incremental(fast, list(text)) == expected


def test_commits_early_holding_back_only_the_open_piece(fast: Tokenizer) -> None:
    tok = IncrementalTokenizer(fast)
    assert tok.push("Hello") == []  # "Hello" may still grow
    assert tok.push(",") == [9707]  # "Hello" closed by a new piece
    assert tok.push(" wor") == [11]
    assert tok.push("ld!") == [1879]
    assert tok.finish() == [0]


def test_known_ids_and_specials(whole: TextTokenizer) -> None:
    assert whole.role_ids() == [151644, 77091, 198]
    assert whole.target_ids("Hello, world!") == [9707, 11, 1879, 0]
    assert whole.encode("<tts_pad><tts_text_bos><tts_text_eod>") == [151671, 151672, 151673]
