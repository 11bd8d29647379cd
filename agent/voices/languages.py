"""Language names of a checkpoint ("english") and the ISO 639-1 codes clients also use ("en", "en-US")."""

from __future__ import annotations

from collections.abc import Iterable

from agent.voices.errors import UNSUPPORTED_LANGUAGE, VoiceError

# Qwen3-TTS language names (checkpoint config) -> ISO 639-1. A name missing here has no code.
ISO_CODES = {"chinese": "zh", "english": "en", "french": "fr", "german": "de", "italian": "it",
             "japanese": "ja", "korean": "ko", "portuguese": "pt", "russian": "ru", "spanish": "es"}


def language_codes(languages: Iterable[str]) -> list[str]:
    """The codes of `languages` ("auto" left out; a name without a code stays a name)."""
    return [ISO_CODES.get(lang, lang) for lang in languages if lang != "auto"]


def language_name(languages: Iterable[str], requested: str) -> str:
    """"en", "en-US", "en_US", "English" -> "english" when it is one of `languages`, else VoiceError."""
    known = list(languages)
    wanted = requested.strip().lower().replace("_", "-")
    for lang in known:
        code = ISO_CODES.get(lang)
        if wanted == lang or (code is not None and code in (wanted, wanted.split("-")[0])):
            return lang
    raise VoiceError(f"unknown language {requested!r}; this model speaks {', '.join(known)} (or their ISO codes: "
                     f"{', '.join(language_codes(known))})", UNSUPPORTED_LANGUAGE, "language")


def iso_code(requested: str) -> str | None:
    """"English", "en", "en-US", "pt_BR" -> "en" / "pt" (ISO 639-1, what a recognizer takes); None when it is
    neither a known name nor shaped like a code (2-3 letters, an optional region)."""
    wanted = requested.strip().lower().replace("_", "-")
    if wanted in ISO_CODES:
        return ISO_CODES[wanted]
    base, _, region = wanted.partition("-")
    if 2 <= len(base) <= 3 and base.isascii() and base.isalpha() and (not region or region.isalnum()):
        return base
    return None
