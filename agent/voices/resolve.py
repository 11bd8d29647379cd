"""A compatible API's voice choice -> `Engine.open_stream` keywords, from the server's catalogue.

The OpenAI and ElevenLabs front ends name voices by catalogue name (preset speakers, saved voices) and
languages by name or ISO code; a style instruction is kept only where the model follows one (otherwise it
is dropped with a warning, as `session.update` does).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from agent.voices.catalogue import ModelInfo
from agent.wyoming.info import VoiceError, language_name


class ApiVoiceError(ValueError):
    """Unknown voice or language; `param` names the request field."""

    def __init__(self, param: str, message: str) -> None:
        super().__init__(message)
        self.param, self.message = param, message


@dataclass(frozen=True)
class ApiVoice:
    name: str
    stream_args: dict[str, Any]
    warning: str | None = None  # e.g. the instruction was dropped


def resolve_voice(info: ModelInfo, name: str, language: str | None = None,
                  instruct: str | None = None) -> ApiVoice:
    entry = info.entry(name) if name else None
    if entry is None:
        known = ", ".join(info.voices) or "none"
        raise ApiVoiceError("voice", f"unknown voice {name!r}; this server's voices: {known}")
    lang = entry.language if entry.kind != "preset" else "auto"
    if language:
        try:
            lang = language_name(info, language)
        except VoiceError as exc:
            raise ApiVoiceError("language", str(exc)) from None
    warning = None
    if instruct and not entry.instruct:
        warning = "this model does not follow style instructions; the instruction was ignored"
        instruct = None
    return ApiVoice(entry.name, info.stream_args(entry.name, lang, instruct or None), warning)
