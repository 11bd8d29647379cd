"""The fields of the Wyoming events we handle, checked before anything acts on them.

The wyoming package's `from_event` helpers take `data` on trust: a `voice.name` that is a number, a `voice` that
is a list or a `ping` whose data is not an object raise AttributeError or TypeError deep inside the handler,
and a `voice` that is a string is silently read as "no voice". Here each field is checked for its type and
size; a mistake is a `BadEvent`, which the handler answers with an `error` event {code: `bad_event`} while the
connection stays usable. A field that is absent or null means "not given".
"""

from __future__ import annotations

from typing import Any

from wyoming.tts import SynthesizeVoice

from agent.boundary import clean_text

MAX_NAME_CHARS = 256  # voice.name / speaker / language: far above any real one, small enough to echo in an error


class BadEvent(ValueError):
    """An event that is framed correctly but whose content we cannot use."""


def _optional_str(data: dict[str, Any], key: str, where: str, max_chars: int | None = None) -> str | None:
    value = data.get(key)
    if value is None:
        return None
    if not isinstance(value, str):
        raise BadEvent(f"{where}{key} must be a string, not {_json_type(value)}")
    if max_chars is not None and len(value) > max_chars:
        raise BadEvent(f"{where}{key} is over {max_chars} characters")
    return value


def _json_type(value: Any) -> str:
    names = {bool: "a boolean", int: "a number", float: "a number", list: "an array", dict: "an object"}
    return names.get(type(value), type(value).__name__)


def text_of(data: dict[str, Any], event_type: str) -> str:
    """The required `text` of a synthesize / synthesize-chunk event (not yet cleaned: see agent.boundary)."""
    text = _optional_str(data, "text", f"{event_type}: ")
    if text is None:
        raise BadEvent(f"{event_type}: text is required")
    return text


def voice_of(data: dict[str, Any], event_type: str) -> SynthesizeVoice | None:
    """The optional `voice` {name, language, speaker} of a synthesize / synthesize-start event."""
    voice = data.get("voice")
    if voice is None:
        return None
    if not isinstance(voice, dict):
        raise BadEvent(f"{event_type}: voice must be an object, not {_json_type(voice)}")
    where = f"{event_type}: voice."
    fields = {key: _optional_str(voice, key, where, MAX_NAME_CHARS) for key in ("name", "language", "speaker")}
    if all(value is None for value in fields.values()):
        return None
    return SynthesizeVoice(**fields)


def ping_text(data: dict[str, Any]) -> str | None:
    """The optional `text` a `pong` copies back, under the text rule: a lone surrogate cannot be sent as UTF-8."""
    text = _optional_str(data, "text", "ping: ")
    return None if text is None else clean_text(text)


def transcribe_language(data: dict[str, Any]) -> str | None:
    """The optional `language` of a `transcribe` event (its `name`, the model, is not checked: there is one)."""
    return _optional_str(data, "language", "transcribe: ", MAX_NAME_CHARS)
