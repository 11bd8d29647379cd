"""The server's voice catalogue (agent.voices.catalogue.ModelInfo) as Wyoming sees it, and Wyoming voice requests
resolved against it.

Home Assistant lists a Wyoming voice under each language code it declares and matches those codes against
the pipeline language ("en", "de-CH"...), so our language names ("english") go out as ISO 639-1 codes and
requests may use either form. HA sends only the voice name; `language` alone (no name) picks the first
voice that speaks it.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version

from wyoming.info import Attribution, TtsProgram, TtsVoice, TtsVoiceSpeaker
from wyoming.tts import SynthesizeVoice

from agent.voices.catalogue import ModelInfo

# Qwen3-TTS language names (checkpoint config) -> ISO 639-1. A name missing here is published unchanged.
ISO_CODES = {"chinese": "zh", "english": "en", "french": "fr", "german": "de", "italian": "it",
             "japanese": "ja", "korean": "ko", "portuguese": "pt", "russian": "ru", "spanish": "es"}
# Credit for the voices goes to the model's authors (the program and the voices carry the same attribution).
ATTRIBUTION = Attribution(name="Qwen3-TTS by the Qwen team, Alibaba Cloud; served by voicegate",
                          url="https://github.com/QwenLM/Qwen3-TTS")
DEFAULT_VOICE = "default"  # the one voice of a checkpoint without preset voices (e.g. VoiceDesign + --instruct)


class VoiceError(ValueError):
    """A voice request the catalogue cannot serve; `code` goes into the Wyoming error event."""

    def __init__(self, code: str, text: str) -> None:
        super().__init__(text)
        self.code = code


@dataclass(frozen=True)
class ResolvedVoice:
    name: str  # a catalogue voice, or DEFAULT_VOICE
    language: str  # a language name of the checkpoint ("auto" when the request named none)


def package_version() -> str:
    try:
        return version("voicegate")
    except PackageNotFoundError:  # running from a source tree that was never installed
        return "0+unknown"


def voice_names(info: ModelInfo) -> list[str]:
    return list(info.voices) or [DEFAULT_VOICE]


def language_codes(info: ModelInfo) -> list[str]:
    return [ISO_CODES.get(lang, lang) for lang in info.languages if lang != "auto"]


def tts_program(info: ModelInfo) -> TtsProgram:
    """The single TTS program of `info` for the Wyoming `info` event."""
    codes = language_codes(info)
    model_version = info.name
    voices = [TtsVoice(name=name, description=name, attribution=ATTRIBUTION,
                       installed=True, version=model_version, languages=codes,
                       speakers=[TtsVoiceSpeaker(name=name)])
              for name in voice_names(info)]
    return TtsProgram(name="voicegate", description=f"voicegate streaming Qwen3-TTS ({info.name})",
                      attribution=ATTRIBUTION, installed=True, version=package_version(),
                      voices=voices, supports_synthesize_streaming=True)


def language_name(info: ModelInfo, requested: str) -> str:
    """"en", "en-US", "en_US", "English" -> "english" (a language of this checkpoint), else VoiceError."""
    wanted = requested.strip().lower().replace("_", "-")
    for lang in info.languages:
        if wanted in (lang, ISO_CODES.get(lang)) or wanted.split("-")[0] == ISO_CODES.get(lang):
            return lang
    raise VoiceError("unsupported_language", f"language {requested!r} is not supported; this model speaks: "
                                             f"{', '.join(language_codes(info))} (or their names)")


def resolve(info: ModelInfo, voice: SynthesizeVoice | None, default_voice: str | None,
            default_language: str) -> ResolvedVoice:
    """Map a Wyoming `voice` {name, language, speaker} to a catalogue voice (VoiceError when it has none)."""
    names = voice_names(info)
    by_lower = {n.lower(): n for n in names}
    language = language_name(info, voice.language) if voice and voice.language else default_language
    if voice is None or (voice.name is None and voice.language is None):
        return ResolvedVoice(default_voice or names[0], default_language)
    if voice.name is None:  # language only: the first voice that speaks it (all of ours speak every language)
        return ResolvedVoice(default_voice or names[0], language)
    name = by_lower.get(voice.name.lower())
    if name is None:
        raise VoiceError("unknown_voice", f"unknown voice {voice.name!r}; available: {', '.join(names)}")
    if voice.speaker and voice.speaker.lower() != name.lower():
        raise VoiceError("unknown_speaker", f"voice {name!r} has one speaker, {name!r}, not {voice.speaker!r}")
    return ResolvedVoice(name, language)
