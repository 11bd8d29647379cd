"""The server's voice catalogue (agent.voices.catalogue.ModelInfo) as Wyoming sees it, Wyoming voice requests
resolved by the catalogue's rules (`ModelInfo.resolve`), and the speech recognizer as a Wyoming `asr` program.

Home Assistant lists a Wyoming voice under each language code it declares and matches those codes against
the pipeline language ("en", "de-CH"...), so our language names ("english") go out as ISO 639-1 codes and
requests may use either form. HA sends only the voice name; `language` alone (no name) picks the default
voice. What is Wyoming's own: the `speaker` of a voice (each of ours has one, named like the voice) and the
name "default" for a checkpoint without voices.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

from wyoming.info import AsrModel, AsrProgram, Attribution, TtsProgram, TtsVoice, TtsVoiceSpeaker
from wyoming.tts import SynthesizeVoice

from agent.speech_in.service import RecognizerService
from agent.voices.catalogue import ModelInfo, ResolvedVoice
from agent.voices.errors import UNKNOWN_SPEAKER, VoiceError
from agent.voices.languages import language_codes

# Credit for the voices goes to the model's authors (the program and the voices carry the same attribution).
ATTRIBUTION = Attribution(name="Qwen3-TTS by the Qwen team, Alibaba Cloud; served by voicegate",
                          url="https://github.com/QwenLM/Qwen3-TTS")
WHISPER_ATTRIBUTION = Attribution(name="Whisper by OpenAI, run by faster-whisper (SYSTRAN); served by voicegate",
                                  url="https://github.com/SYSTRAN/faster-whisper")
DEFAULT_VOICE = "default"  # the one voice of a checkpoint without preset voices (e.g. VoiceDesign + --instruct)


def package_version() -> str:
    try:
        return version("voicegate")
    except PackageNotFoundError:  # running from a source tree that was never installed
        return "0+unknown"


def voice_names(info: ModelInfo) -> list[str]:
    return list(info.voices) or [DEFAULT_VOICE]


def tts_program(info: ModelInfo) -> TtsProgram:
    """The single TTS program of `info` for the Wyoming `info` event."""
    codes = language_codes(info.languages)
    model_version = info.name
    voices = [TtsVoice(name=name, description=name, attribution=ATTRIBUTION,
                       installed=True, version=model_version, languages=codes,
                       speakers=[TtsVoiceSpeaker(name=name)])
              for name in voice_names(info)]
    return TtsProgram(name="voicegate", description=f"voicegate streaming Qwen3-TTS ({info.name})",
                      attribution=ATTRIBUTION, installed=True, version=package_version(),
                      voices=voices, supports_synthesize_streaming=True)


def asr_program(service: RecognizerService) -> AsrProgram:
    """The one speech-to-text program (the server's recognizer) for the Wyoming `info` event.

    Home Assistant offers the languages of the installed models; Whisper's codes are ISO 639-1 ("en")."""
    recognizer = service.recognizer
    assert recognizer is not None
    model = str(getattr(recognizer, "model_name", recognizer.name))
    languages = list(getattr(recognizer, "languages", ()))
    backend = recognizer.name
    compute = getattr(recognizer, "compute_type", None)
    description = f"{backend} {model}" + (f" ({compute})" if compute else "")
    return AsrProgram(name="voicegate", description=f"voicegate speech-to-text ({backend})",
                      attribution=WHISPER_ATTRIBUTION, installed=True, version=package_version(),
                      models=[AsrModel(name=model, description=description, attribution=WHISPER_ATTRIBUTION,
                                       installed=True, version=None, languages=languages)],
                      supports_transcript_streaming=True)


def resolve(info: ModelInfo, voice: SynthesizeVoice | None, default_voice: str | None, default_language: str,
            instruct: str | None = None) -> ResolvedVoice:
    """A Wyoming `voice` {name, language, speaker} -> the catalogue's voice (VoiceError when it has none).

    A request that names no voice gets `default_voice` (None: the catalogue's default); one that names no
    language gets `default_language`, unless that is "auto" and the voice is a saved one (it brings its own)."""
    name = voice.name if voice is not None and voice.name else default_voice
    if name is not None and name.lower() == DEFAULT_VOICE and not info.voices:
        name = None
    language = voice.language if voice is not None and voice.language else None
    if language is None and default_language != "auto":
        language = default_language
    resolved = info.resolve(name, language, instruct)
    if voice is not None and voice.speaker and voice.speaker.lower() != (resolved.name or DEFAULT_VOICE).lower():
        spoken = resolved.name or DEFAULT_VOICE
        raise VoiceError(f"voice {spoken!r} has one speaker, {spoken!r}, not {voice.speaker!r}", UNKNOWN_SPEAKER,
                         "speaker")
    return resolved
