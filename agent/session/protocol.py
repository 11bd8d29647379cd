"""The WebSocket protocol of `/v1/session`: client messages (parsed and validated) and server events.

Every client message is a JSON object in a text frame with a string `type`. `parse_client_message`
turns one frame into a typed message or raises `ProtocolError(code, message)`; nothing else in the server
looks at raw client JSON. Unknown fields are errors (a typo must not be silently ignored). A client may add
an `id` string to any message: errors and direct replies caused by it echo it back.

Error codes are stable (clients branch on them); docs/protocol.md lists them with their meaning.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any

from agent.boundary import JsonInputError, clean_text, loads_object

# ---- error codes ---------------------------------------------------------------------------------
BAD_JSON = "bad_json"  # not JSON, or not a JSON object
UNKNOWN_TYPE = "unknown_type"
INVALID_MESSAGE = "invalid_message"  # a missing, unknown or mistyped field
BINARY_NOT_ALLOWED = "binary_not_allowed"  # a binary frame: the client sends JSON text only
MESSAGE_TOO_LARGE = "message_too_large"
TEXT_LIMIT = "text_limit"  # the utterance would exceed max_utterance_chars (the fragment is refused)
QUEUE_FULL = "queue_full"  # too many utterances waiting
INVALID_VOICE = "invalid_voice"  # unknown voice / language, or instruct where the model takes none
UNKNOWN_UTTERANCE = "unknown_utterance"  # utterance.cancel names nothing in flight
WEBRTC_UNAVAILABLE = "webrtc_unavailable"  # aiortc (the server extra) is not installed
WEBRTC_FAILED = "webrtc_failed"  # the offer could not be answered
ENGINE_ERROR = "engine_error"  # synthesis failed; the utterance is reported interrupted (reason "error")
SHUTTING_DOWN = "shutting_down"
MAX_SESSIONS = "max_sessions"
TOO_MANY_CONNECTIONS = "too_many_connections"
UNKNOWN_SESSION = "unknown_session"
BAD_TOKEN = "bad_token"
SLOW_CONSUMER = "slow_consumer"
INTERNAL_ERROR = "internal_error"

# ---- warning codes (event `warning`: the request was applied, with a caveat) ----------------------
INSTRUCT_IGNORED = "instruct_ignored"  # the model does not follow style instructions (0.6B CustomVoice)

# ---- close codes (RFC 6455 private range 4000-4999, plus standard ones) ---------------------------
CLOSE_GOING_AWAY = 1001  # server shutdown
CLOSE_SERVICE_RESTART = 1012  # drained (SIGTERM): reconnect, through the proxy, to another replica
CLOSE_POLICY = 1008  # policy violation: a slow consumer, a wrong key on an API socket
CLOSE_TRY_AGAIN = 1013  # max sessions; a new session while the server drains
CLOSE_BAD_TOKEN = 4403
CLOSE_UNKNOWN_SESSION = 4404
CLOSE_TOO_MANY_CONNECTIONS = 4429

AUDIO_MODES = ("webrtc", "websocket", "none")
MAX_ID_CHARS = 64
MAX_NAME_CHARS = 64  # voice, language
MAX_INSTRUCT_CHARS = 1000
MAX_SDP_CHARS = 32 * 1024


class ProtocolError(Exception):
    """A client mistake: becomes an `error` event {code, message}; the session goes on."""

    def __init__(self, code: str, message: str, msg_id: str | None = None) -> None:
        super().__init__(message)
        self.code, self.message, self.msg_id = code, message, msg_id


# ---- client -> server ----------------------------------------------------------------------------
@dataclass(frozen=True)
class SessionUpdate:
    id: str | None = None
    voice: str | None = None
    language: str | None = None
    instruct: str | None = None  # "" clears it
    audio: str | None = None
    vad: dict[str, Any] | None = None
    barge_in: bool | None = None
    echo_guard_ms: float | None = None
    seed: int | None = None
    greedy: bool | None = None


@dataclass(frozen=True)
class WebRtcOffer:
    sdp: str
    id: str | None = None


@dataclass(frozen=True)
class TextAppend:
    text: str
    id: str | None = None


@dataclass(frozen=True)
class TextFlush:
    id: str | None = None


@dataclass(frozen=True)
class UtteranceCancel:
    id: str | None = None
    utterance: str | None = None  # default: the current (playing) one
    all: bool = False  # the current one and every queued one


@dataclass(frozen=True)
class VoicesList:
    id: str | None = None


ClientMessage = SessionUpdate | WebRtcOffer | TextAppend | TextFlush | UtteranceCancel | VoicesList

# type name -> (class, {field: (python types, required)})
_NUM = (int, float)
_SCHEMAS: dict[str, tuple[type, dict[str, tuple[tuple[type, ...], bool]]]] = {
    "session.update": (SessionUpdate, {
        "voice": ((str,), False), "language": ((str,), False), "instruct": ((str,), False),
        "audio": ((str,), False), "vad": ((dict,), False), "barge_in": ((bool,), False),
        "echo_guard_ms": (_NUM, False), "seed": ((int,), False), "greedy": ((bool,), False)}),
    "webrtc.offer": (WebRtcOffer, {"sdp": ((str,), True)}),
    "text.append": (TextAppend, {"text": ((str,), True)}),
    "text.flush": (TextFlush, {}),
    "utterance.cancel": (UtteranceCancel, {"utterance": ((str,), False), "all": ((bool,), False)}),
    "voices.list": (VoicesList, {}),
}
CLIENT_TYPES = tuple(_SCHEMAS)


def _type_name(types: tuple[type, ...]) -> str:
    names = {str: "a string", bool: "a boolean", int: "an integer", float: "a number", dict: "an object"}
    return " or ".join(dict.fromkeys(names[t] for t in types))


def parse_client_message(data: str | bytes, max_bytes: int) -> ClientMessage:
    """One WebSocket frame from a client -> a validated message, or ProtocolError."""
    if isinstance(data, bytes | bytearray | memoryview):
        raise ProtocolError(BINARY_NOT_ALLOWED, "binary frames are not accepted: send JSON text messages "
                                                "(audio from the listener travels over WebRTC)")
    if len(data) > max_bytes and len(data.encode("utf-8", "surrogatepass")) > max_bytes:
        raise ProtocolError(MESSAGE_TOO_LARGE, f"message of {len(data.encode('utf-8', 'surrogatepass'))} "
                                               f"bytes is over the limit of {max_bytes} bytes; split the text "
                                               f"into several text.append messages")
    try:
        obj = loads_object(data)
    except JsonInputError as exc:
        raise ProtocolError(BAD_JSON, f"a message must be one JSON object: {exc}") from None
    msg_id = obj.get("id")
    if msg_id is not None and (not isinstance(msg_id, str) or len(msg_id) > MAX_ID_CHARS):
        raise ProtocolError(INVALID_MESSAGE, f"'id' must be a string of at most {MAX_ID_CHARS} characters")
    kind = obj.get("type")
    if not isinstance(kind, str):
        raise ProtocolError(INVALID_MESSAGE, "a message needs a string 'type'", msg_id)
    schema = _SCHEMAS.get(kind)
    if schema is None:
        raise ProtocolError(UNKNOWN_TYPE, f"unknown message type {kind[:64]!r}; expected one of "
                                          f"{', '.join(CLIENT_TYPES)}", msg_id)
    cls, fields = schema
    values: dict[str, Any] = {}
    for name, value in obj.items():
        if name in ("type", "id"):
            continue
        spec = fields.get(name)
        if spec is None:
            raise ProtocolError(INVALID_MESSAGE, f"{kind}: unknown field {name[:64]!r}"
                                                 f"{'; fields: ' + ', '.join(fields) if fields else ''}", msg_id)
        types, _ = spec
        # JSON true/false are bools, and bool is an int subclass: never accept one for the other
        ok = isinstance(value, types) and not (isinstance(value, bool) and bool not in types)
        if not ok:
            raise ProtocolError(INVALID_MESSAGE, f"{kind}: {name!r} must be {_type_name(types)}", msg_id)
        values[name] = value
    for name, (_, required) in fields.items():
        if required and name not in values:
            raise ProtocolError(INVALID_MESSAGE, f"{kind}: missing field {name!r}", msg_id)
    _check_values(kind, values, msg_id)
    return cls(id=msg_id, **values)


def _check_values(kind: str, v: dict[str, Any], msg_id: str | None) -> None:
    def fail(message: str) -> None:
        raise ProtocolError(INVALID_MESSAGE, f"{kind}: {message}", msg_id)

    if kind == "session.update":
        for name in ("voice", "language"):
            if name in v and not 0 < len(v[name]) <= MAX_NAME_CHARS:
                fail(f"{name!r} must be 1-{MAX_NAME_CHARS} characters")
        if "instruct" in v:
            v["instruct"] = clean_text(v["instruct"])
        if len(v.get("instruct", "")) > MAX_INSTRUCT_CHARS:
            fail(f"'instruct' is over {MAX_INSTRUCT_CHARS} characters")
        if "audio" in v and v["audio"] not in AUDIO_MODES:
            fail(f"'audio' must be one of {', '.join(AUDIO_MODES)}")
        if "echo_guard_ms" in v and not (math.isfinite(v["echo_guard_ms"]) and 0 <= v["echo_guard_ms"] <= 60000):
            fail("'echo_guard_ms' must be between 0 and 60000")
        if "seed" in v and not 0 <= v["seed"] < 2**63:
            fail("'seed' must be a non-negative 64-bit integer")
        for key, value in v.get("vad", {}).items():
            if not isinstance(key, str) or len(key) > MAX_NAME_CHARS:
                fail("'vad' keys must be short strings")
            if not (value is None or isinstance(value, int | float)):
                fail(f"vad.{key} must be a number (or null to disable a gate)")
    elif kind == "text.append":
        v["text"] = clean_text(v["text"])
    elif kind == "webrtc.offer" and not 0 < len(v["sdp"]) <= MAX_SDP_CHARS:
        fail(f"'sdp' must be 1-{MAX_SDP_CHARS} characters")
    elif kind == "utterance.cancel" and "utterance" in v and len(v["utterance"]) > MAX_ID_CHARS:
        fail("'utterance' is not an utterance id")


# ---- server -> client ----------------------------------------------------------------------------
def event(kind: str, **fields: Any) -> dict[str, Any]:
    return {"type": kind, **fields}


def reply(kind: str, msg_id: str | None, **fields: Any) -> dict[str, Any]:
    """An event answering one client message: it echoes the message's `id` when it had one."""
    out = event(kind, **fields)
    if msg_id is not None:
        out["id"] = msg_id
    return out


def error_event(code: str, message: str, msg_id: str | None = None) -> dict[str, Any]:
    return reply("error", msg_id, code=code, message=message)


def encode(evt: dict[str, Any]) -> str:
    text = json.dumps(evt, ensure_ascii=False, separators=(",", ":"))
    if not text.isascii():
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:  # a lone surrogate a client sent (an `id`) and we echo: JSON escapes are valid
            text = json.dumps(evt, separators=(",", ":"))
    return text
