"""The one error of voice handling: a stable `code` and the request `field` it concerns, for every front-end.

Front-ends map it to their own wire format (session `error` events, OpenAI/ElevenLabs HTTP errors, Wyoming
`error` events, a CLI line); the message is written for people and is passed on as it is.
"""

from __future__ import annotations

UNKNOWN_VOICE = "unknown_voice"
UNSUPPORTED_LANGUAGE = "unsupported_language"
INSTRUCT_UNSUPPORTED = "instruct_unsupported"  # the model takes no style instruction (Base)
UNKNOWN_SPEAKER = "unknown_speaker"  # Wyoming: a speaker the named voice does not have
INVALID_VOICE = "invalid_voice"  # anything else: a bad name to save, a taken name, a bad description...


class VoiceError(ValueError):
    """A voice request that cannot be served, or a voice that cannot be added, found or removed."""

    def __init__(self, message: str, code: str = INVALID_VOICE, field: str = "voice") -> None:
        super().__init__(message)
        self.message, self.code, self.field = message, code, field
