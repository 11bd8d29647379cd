"""Text tokenization with the checkpoint's own Qwen2 BPE tokenizer, sliced as the official code does."""

from __future__ import annotations

from pathlib import Path

ROLE_TOKENS = 3  # <|im_start|> assistant \n
TARGET_SUFFIX_TOKENS = 5  # <|im_end|> \n <|im_start|> assistant \n
REF_SUFFIX_TOKENS = 2  # <|im_end|> \n


def assistant_template(text: str) -> str:
    return f"<|im_start|>assistant\n{text}<|im_end|>\n<|im_start|>assistant\n"


def instruct_template(instruct: str) -> str:
    return f"<|im_start|>user\n{instruct}<|im_end|>\n"


def ref_template(text: str) -> str:
    return f"<|im_start|>assistant\n{text}<|im_end|>\n"


class TextTokenizer:
    """Wraps the checkpoint's tokenizer (loaded through transformers from vocab.json + merges.txt)."""

    def __init__(self, hf_tokenizer) -> None:  # type: ignore[no-untyped-def]
        self.hf = hf_tokenizer

    @classmethod
    def from_dir(cls, path: str | Path) -> TextTokenizer:
        # The concrete class: AutoTokenizer would read config.json and warn about the unknown model type.
        from transformers import Qwen2TokenizerFast

        try:
            tok = Qwen2TokenizerFast.from_pretrained(str(path))
        except Exception as exc:  # transformers raises many types for a broken tokenizer
            raise ValueError(f"cannot load the text tokenizer from {path} (vocab.json, merges.txt, "
                             f"tokenizer_config.json): {exc}") from exc
        return cls(tok)

    def encode(self, text: str) -> list[int]:
        return list(self.hf(text, add_special_tokens=False)["input_ids"])

    def role_ids(self) -> list[int]:
        return self.encode(assistant_template(""))[:ROLE_TOKENS]

    def target_ids(self, text: str) -> list[int]:
        """The target text's ids exactly as the official code slices them out of the template."""
        return self.encode(assistant_template(text))[ROLE_TOKENS:-TARGET_SUFFIX_TOKENS]

    def instruct_ids(self, instruct: str) -> list[int]:
        return self.encode(instruct_template(instruct))

    def ref_ids(self, ref_text: str) -> list[int]:
        return self.encode(ref_template(ref_text))[ROLE_TOKENS:-REF_SUFFIX_TOKENS]

    def decode(self, ids: list[int]) -> str:
        return str(self.hf.decode(ids))
