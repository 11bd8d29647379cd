"""Hypothesis strategies for the fuzz tests (tests/agent/test_fuzz.py): what an attacker or a sloppy client sends.

Values mix the right shape with every wrong one: JSON of any type, huge, deep or empty values, lone surrogates,
control characters, binary where text is expected, and verbs in any order. The documented answers of each
surface (error codes, statuses, close codes) are listed here once; a fuzz test fails on anything else.
"""

from __future__ import annotations

import json
from typing import Any

from hypothesis import strategies as st

# ---- documented answers ----------------------------------------------------------------------------------
# docs/protocol.md, Errors (internal_error is documented too, but it is a server bug: never acceptable here)
SESSION_ERRORS = {"bad_json", "unknown_type", "invalid_message", "binary_not_allowed", "message_too_large",
                  "text_limit", "queue_full", "invalid_voice", "unknown_utterance", "webrtc_unavailable",
                  "webrtc_failed", "engine_error", "shutting_down"}
SESSION_WARNINGS = {"instruct_ignored"}
# 1000 normal, 1007 a text frame that is not UTF-8, 1009 a frame over max_frame_bytes, 1008 slow consumer
WS_CLOSE_CODES = {1000, 1007, 1008, 1009}
# docs/openai.md, Errors
OPENAI_CODES = {"invalid_json", "missing_required_parameter", "invalid_value", "string_above_max_length",
                "unsupported_value", "invalid_api_key", "not_found", "method_not_allowed", "request_too_large",
                "request_timeout"}
OPENAI_STATUSES = {200, 400, 401, 404, 405, 413}
OPENAI_UNCODED = {411, 413, 431}  # the HTTP layer's refusals: OpenAI-shaped, with no code
# any request on the serve port: the API's statuses, the HTTP layer's refusals (docs/openai.md), 426 for a
# plain GET of a WebSocket endpoint, and 100 Continue (an interim answer to `Expect: 100-continue`)
HTTP_STATUSES = {100, 200, 400, 401, 404, 405, 411, 413, 414, 426, 431}
# docs/elevenlabs.md, Errors
ELEVENLABS_ERRORS = {"invalid_message", "message_too_large", "context_not_found", "context_closing",
                     "max_active_conversations", "text_limit", "invalid_api_key", "queue_full", "engine_error"}
# docs/wyoming.md, Errors
WYOMING_ERRORS = {"unknown_voice", "unknown_speaker", "unsupported_language", "invalid_voice", "no_stream",
                  "stream_open", "text_too_long", "bad_event", "engine_error"}

MAX_FRAME_BYTES = 1024 * 1024  # the serve port's WebSocket frame limit (ServerSettings.max_frame_bytes)


def too_big(sequence: list[Any]) -> bool:
    """Whether a message of `sequence` is over the frame limit: the server closes with 1009 at once, and a client
    still writing may see the connection reset before it reads the close frame."""
    return any(isinstance(m, str | bytes) and len(m) > MAX_FRAME_BYTES for m in sequence)


# ---- values ----------------------------------------------------------------------------------------------
NASTY_STRINGS = ["", " ", "\ud800", "\udfff", "a\ud83d", "\x00", "\x1b[31mred", "\u202eevil", "\ufeff", "\x7f\x85",
                 "👋🏽", "你好", "\r\n", "\t", "x" * 5000, "null", "{}", "[]", "</script>", "%s%n", "ryan", "RYAN",
                 "english", "en", "auto", "default"]
nasty_text = st.one_of(st.sampled_from(NASTY_STRINGS), st.text(max_size=12),
                       st.lists(st.sampled_from(NASTY_STRINGS[:14]), max_size=4).map("".join))
scalars = st.one_of(st.none(), st.booleans(), st.integers(min_value=-(2**70), max_value=2**70),
                    st.floats(allow_nan=False, allow_infinity=False), nasty_text)
json_values = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=3),
                                                            st.dictionaries(st.text(max_size=6), inner, max_size=3)),
                           max_leaves=6)


def field_values(*good: Any) -> st.SearchStrategy[Any]:
    """Mostly values of the right kind (so requests get past the first checks), often any JSON value."""
    return st.one_of(st.sampled_from(good), json_values) if good else json_values


def deep(n: int) -> str:
    return "[" * n + "]" * n


# Text frames that are not a well-formed message at all.
garbage_text = st.one_of(st.sampled_from(["", "{", "}", "null", "[]", "1", '"x"', "NaN", '{"type": NaN}',
                                          deep(40), deep(100_000), '{"a": ' * 50 + "1" + "}" * 50,
                                          "x" * 70_000, "x" * (MAX_FRAME_BYTES + 1)]),
                         st.text(max_size=40), json_values.map(json.dumps))

# ---- the session WebSocket (/v1/session) -----------------------------------------------------------------
SESSION_TYPES = ["session.update", "webrtc.offer", "text.append", "text.flush", "utterance.cancel", "voices.list"]
SESSION_FIELDS: dict[str, st.SearchStrategy[Any]] = {
    "id": field_values("a", "x" * 65, ""),
    "text": field_values("Hi. ", "a", "", "\ud800", "x" * 5000),
    "voice": field_values("ryan", "vivian", "nobody", "RYAN", ""),
    "language": field_values("english", "chinese", "klingon", "auto", ""),
    "instruct": field_values("Speak softly.", "", "\ud800"),
    "audio": field_values("websocket", "none", "webrtc", "radio"),
    "vad": field_values({}, {"aggressiveness": 9}, {"min_speech_ms": -1}, {"nope": 1}, {"hangover_ms": None}),
    "barge_in": field_values(True, False, {"min_words": 2}, {"enabled": "x"}, {"min_words": 1.5}, {"x": 1}),
    "transcription": field_values({"enabled": False}, {"enabled": True}, {"language": "en"}, {"language": "!!"},
                                  {"end_of_turn_ms": 99}, {"partials": False}, {"nope": 1}),
    "input_audio": field_values("pcm16", "none", "wav"),
    "echo_guard_ms": field_values(0, 100.5, -1, 1e300),
    "seed": field_values(0, 2**63, -1),
    "greedy": field_values(True, False),
    "sdp": field_values("v=0\r\n", "garbage", ""),
    "utterance": field_values("u1", "", "x" * 100),
    "all": field_values(True, False),
}
session_messages = st.one_of(
    st.fixed_dictionaries({"type": st.sampled_from([*SESSION_TYPES, "text.apend", "", "TEXT.APPEND"])},
                          optional=SESSION_FIELDS).map(json.dumps),
    st.fixed_dictionaries({"type": field_values(*SESSION_TYPES)}, optional=SESSION_FIELDS).map(json.dumps),
    garbage_text,
    st.binary(max_size=64),
)
CLOSE = object()  # in a message list: the client vanishes at that point

# ---- OpenAI's POST /v1/audio/speech --------------------------------------------------------------------------
SPEECH_FIELDS: dict[str, st.SearchStrategy[Any]] = {
    "model": field_values("tiny", "tts-1", ""),
    "input": field_values("Hi.", "", " ", "\ud800", "x" * 5000),
    "voice": field_values("ryan", "alloy", "", {"id": "ryan"}, {"id": 5}),
    "response_format": field_values("pcm", "wav", "mp3", "opus", "flac", "aac", "ogg", ["pcm"], {"f": 1}),
    "stream_format": field_values("audio", "sse", "video"),
    "speed": field_values(1.0, 1, 2.0, True, "1"),
    "instructions": field_values("Calm.", "", "\ud800"),
}
speech_bodies = st.one_of(
    st.fixed_dictionaries({}, optional=SPEECH_FIELDS).map(lambda body: json.dumps(body).encode()),
    garbage_text.map(lambda text: text.encode("utf-8", "surrogatepass")),
    st.binary(max_size=64),
)

# ---- raw HTTP on the serve port ----------------------------------------------------------------------------
METHODS = ["GET", "POST", "PUT", "DELETE", "HEAD", "OPTIONS", "PATCH", "", "get", "G ET", "POST\x00", "ПОСТ"]
TARGETS = ["/v1/audio/speech", "/healthz", "/", "/v1/models", "/v1/voices", "/v1/session", "/metrics",
           "/v1/text-to-speech/ryan/stream-input", "*", "http://[", "/%00", "/..%2f..%2fetc/passwd",
           "/v1/audio/speech?x=%ZZ", "/" + "a" * 10_000, "/index.html", "", "//", "/\x7f"]
VERSIONS = ["HTTP/1.1", "HTTP/1.0", "HTTP/2", "HTTP/1.1x", "", "http/1.1", "HTTP/9.9"]
HEADERS = [("Host", "127.0.0.1"), ("Content-Type", "application/json"), ("Content-Length", "0"),
           ("Content-Length", "5"), ("Content-Length", "-1"), ("Content-Length", "abc"),
           ("Content-Length", "\u0663"), ("Content-Length", "9" * 5000), ("Content-Length", "99999999"),
           ("Transfer-Encoding", "chunked"), ("Connection", "close"), ("Connection", "Upgrade"),
           ("Upgrade", "websocket"), ("Authorization", "Bearer x"), ("X-Ctl", "a\x01b"), ("X-Nul", "\x00"),
           ("Bad Name", "x"), ("", "empty name"), ("X-Long", "v" * 20_000), ("X-Utf8", "é"),
           ("Expect", "100-continue")]
header_lines = st.lists(st.one_of(st.sampled_from(HEADERS).map(lambda h: f"{h[0]}: {h[1]}"),
                                  st.sampled_from(["no colon here", " folded continuation", ":", "X-A:b"]),
                                  st.text(max_size=20)), max_size=6)
raw_http_requests = st.builds(
    lambda method, target, version, headers, body, eol: (
        f"{method} {target} {version}{eol}" + "".join(h + eol for h in headers) + eol
    ).encode("utf-8", "surrogatepass") + body,
    st.sampled_from(METHODS), st.sampled_from(TARGETS), st.sampled_from(VERSIONS), header_lines,
    st.one_of(st.just(b""), speech_bodies), st.sampled_from(["\r\n", "\n"]),
)

# ---- ElevenLabs' stream-input / multi-stream-input ---------------------------------------------------------
ELEVENLABS_FIELDS: dict[str, st.SearchStrategy[Any]] = {
    "text": field_values(" ", "Hi. ", "", "\ud800", "x" * 500),
    "flush": field_values(True, False),
    "close_context": field_values(True),
    "close_socket": field_values(True, False),
    "context_id": field_values("a", "b", "", "default"),
    "contextId": field_values("a", "c"),
    "xi_api_key": field_values("x"),
    "voice_settings": field_values({"stability": 0.5}),
    "generation_config": field_values({"chunk_length_schedule": [50]}),
    "try_trigger_generation": field_values(True),
}
elevenlabs_messages = st.one_of(
    st.fixed_dictionaries({}, optional=ELEVENLABS_FIELDS).map(json.dumps),
    garbage_text,
    st.binary(max_size=64),
)
elevenlabs_sequences = st.lists(st.one_of(elevenlabs_messages, elevenlabs_messages, st.just(CLOSE)), min_size=1,
                                max_size=8)

# ---- Wyoming ------------------------------------------------------------------------------------------------
WYOMING_TYPES = ["describe", "synthesize", "synthesize-start", "synthesize-chunk", "synthesize-stop", "ping",
                 "audio-chunk", "transcribe", "unknown", ""]
voice_objects = st.one_of(json_values, st.fixed_dictionaries({}, optional={
    "name": field_values("ryan", "nobody", "RYAN", ""), "language": field_values("en", "klingon", "english"),
    "speaker": field_values("ryan", "other")}))
WYOMING_FIELDS: dict[str, st.SearchStrategy[Any]] = {
    "text": field_values("Hi. ", "", "\ud800", "x" * 5000),
    "voice": voice_objects,
    "text_format": field_values("text", "ssml"),
    "context": json_values,
}


def _wyoming_frame(kind: Any, data: Any, block: bool) -> bytes:
    if not block:
        return (json.dumps({"type": kind, "data": data}) + "\n").encode()
    body = json.dumps(data).encode()
    return (json.dumps({"type": kind, "data_length": len(body)}) + "\n").encode() + body


wyoming_events = st.builds(
    _wyoming_frame, st.one_of(st.sampled_from(WYOMING_TYPES), json_values),
    st.one_of(st.fixed_dictionaries({}, optional=WYOMING_FIELDS), json_values), st.booleans())
wyoming_broken = st.one_of(
    garbage_text.map(lambda text: text.encode("utf-8", "surrogatepass") + b"\n"),
    st.binary(max_size=64).map(lambda data: data + b"\n"),
    st.sampled_from([b'{"type": "ping", "data_length": "x"}\n', b'{"type": "ping", "data_length": -3}\n',
                     b'{"type": "ping", "payload_length": 1e3}\n', b"\xff\xfe\n", b"[1]\n"]),
)
# broken frames are rarer: a connection ends at the first one
wyoming_sequences = st.lists(st.one_of(wyoming_events, wyoming_events, wyoming_events, wyoming_broken),
                             min_size=1, max_size=8)
