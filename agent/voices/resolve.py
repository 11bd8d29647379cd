"""A compatible API's voice choice, resolved by the catalogue's rules (agent.voices.catalogue `ModelInfo.resolve`).

The OpenAI and ElevenLabs front ends name voices by catalogue name and languages by name or ISO code; the
only thing of their own here is the request parameter a `VoiceError` field is reported under.
"""

from __future__ import annotations

from agent.voices.catalogue import ModelInfo, ResolvedVoice
from agent.voices.errors import VoiceError

ApiVoice = ResolvedVoice  # name, stream_args, warning: what the API modules read
PARAMS = {"instruct": "instructions"}  # VoiceError.field -> request parameter, where the two differ


class ApiVoiceError(VoiceError):
    """A VoiceError as an API reports it: `param` names the request parameter."""

    @property
    def param(self) -> str:
        return PARAMS.get(self.field, self.field)


def resolve_voice(info: ModelInfo, name: str, language: str | None = None,
                  instruct: str | None = None) -> ApiVoice:
    """An API request always names its voice (an empty name is an unknown voice, not the default)."""
    try:
        return info.resolve(name, language, instruct)
    except VoiceError as exc:
        raise ApiVoiceError(exc.message, exc.code, exc.field) from None
