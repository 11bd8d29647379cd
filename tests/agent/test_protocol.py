"""The protocol parser, the spoken_text estimate and the settings checks (pure functions, no server)."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.metrics import Metrics
from agent.session import protocol
from agent.session.protocol import ProtocolError, parse_client_message
from agent.session.spoken import estimate_spoken, rate_prefix, read_prefix, snap_to_word
from agent.settings import ServerSettings, is_loopback

MAX = 64 * 1024


def parse(obj: object) -> protocol.ClientMessage:
    return parse_client_message(json.dumps(obj), MAX)


def code_of(data: str | bytes) -> str:
    with pytest.raises(ProtocolError) as err:
        parse_client_message(data, MAX)
    return err.value.code


def test_valid_messages_parse_into_typed_messages() -> None:
    assert parse({"type": "text.append", "text": "Hi", "id": "m1"}) == protocol.TextAppend(text="Hi", id="m1")
    assert parse({"type": "text.flush"}) == protocol.TextFlush()
    assert parse({"type": "utterance.cancel", "all": True}) == protocol.UtteranceCancel(all=True)
    assert parse({"type": "webrtc.offer", "sdp": "v=0"}) == protocol.WebRtcOffer(sdp="v=0")
    msg = parse({"type": "session.update", "voice": "vivian", "audio": "none", "vad": {"min_speech_ms": 80},
                 "echo_guard_ms": 250.5, "barge_in": False, "seed": 7})
    assert isinstance(msg, protocol.SessionUpdate)
    assert (msg.voice, msg.audio, msg.vad, msg.echo_guard_ms, msg.barge_in, msg.seed) == \
        ("vivian", "none", {"min_speech_ms": 80}, 250.5, False, 7)



def test_voice_in_fields_are_normalized() -> None:
    msg = parse({"type": "session.update", "barge_in": {"min_words": 2}, "input_audio": "pcm16",
                 "transcription": {"enabled": True, "language": "English", "end_of_turn_ms": 700}})
    assert isinstance(msg, protocol.SessionUpdate)
    assert (msg.barge_in, msg.barge_in_min_words, msg.input_audio) == (None, 2, "pcm16")
    assert msg.transcription == {"enabled": True, "language": "en", "end_of_turn_ms": 700}
    msg = parse({"type": "session.update", "barge_in": {"enabled": False}, "transcription": {"language": "pt_BR"}})
    assert isinstance(msg, protocol.SessionUpdate)
    assert (msg.barge_in, msg.barge_in_min_words, msg.transcription) == (False, None, {"language": "pt"})
    msg = parse({"type": "session.update", "transcription": {"language": None}})
    assert isinstance(msg, protocol.SessionUpdate) and msg.transcription == {"language": None}


@pytest.mark.parametrize(("data", "code"), [
    (b"\x00binary", protocol.BINARY_NOT_ALLOWED),
    ("", protocol.BAD_JSON),
    ("{", protocol.BAD_JSON),
    ('"text.append"', protocol.BAD_JSON),
    ('{"type": "text.append", "text": Infinity}', protocol.BAD_JSON),
    ("[" * 100000 + "]" * 100000, protocol.MESSAGE_TOO_LARGE),
    ("[" * 5000 + "]" * 5000, protocol.BAD_JSON),  # nesting: RecursionError, not a crash
    ('{"type": 5}', protocol.INVALID_MESSAGE),
    ('{"type": "nope"}', protocol.UNKNOWN_TYPE),
    ('{"type": "text.append", "text": "x", "id": 5}', protocol.INVALID_MESSAGE),
    ('{"type": "text.append", "text": "x", "id": "' + "i" * 65 + '"}', protocol.INVALID_MESSAGE),
    ('{"type": "text.append", "text": true}', protocol.INVALID_MESSAGE),
    ('{"type": "text.flush", "text": "x"}', protocol.INVALID_MESSAGE),
    ('{"type": "utterance.cancel", "all": 1}', protocol.INVALID_MESSAGE),
    ('{"type": "session.update", "seed": true}', protocol.INVALID_MESSAGE),
    ('{"type": "session.update", "seed": -1}', protocol.INVALID_MESSAGE),
    ('{"type": "session.update", "voice": ""}', protocol.INVALID_MESSAGE),
    ('{"type": "session.update", "echo_guard_ms": -5}', protocol.INVALID_MESSAGE),
    ('{"type": "session.update", "vad": {"min_speech_ms": "60"}}', protocol.INVALID_MESSAGE),
    ('{"type": "session.update", "barge_in": "yes"}', protocol.INVALID_MESSAGE),
    ('{"type": "session.update", "barge_in": {"min_words": true}}', protocol.INVALID_MESSAGE),
    ('{"type": "session.update", "barge_in": {"min_words": 101}}', protocol.INVALID_MESSAGE),
    ('{"type": "session.update", "barge_in": {"enabled": 1}}', protocol.INVALID_MESSAGE),
    ('{"type": "session.update", "barge_in": {"words": 2}}', protocol.INVALID_MESSAGE),
    ('{"type": "session.update", "transcription": true}', protocol.INVALID_MESSAGE),
    ('{"type": "session.update", "transcription": {"end_of_turn_ms": 99}}', protocol.INVALID_MESSAGE),
    ('{"type": "session.update", "transcription": {"end_of_turn_ms": 500.0}}', protocol.INVALID_MESSAGE),
    ('{"type": "session.update", "transcription": {"language": "x1"}}', protocol.INVALID_MESSAGE),
    ('{"type": "session.update", "transcription": {"language": 5}}', protocol.INVALID_MESSAGE),
    ('{"type": "session.update", "transcription": {"partials": "no"}}', protocol.INVALID_MESSAGE),
    ('{"type": "session.update", "input_audio": "wav"}', protocol.INVALID_MESSAGE),
    ('{"type": "webrtc.offer", "sdp": ""}', protocol.INVALID_MESSAGE),
])
def test_bad_messages_get_stable_codes(data: str | bytes, code: str) -> None:
    assert code_of(data) == code


def test_text_is_cleaned_by_the_one_boundary_rule() -> None:
    """A lone surrogate becomes U+FFFD and control characters go (agent.boundary), not a refusal."""
    msg = protocol.parse_client_message('{"type": "text.append", "text": "a\\ud800b\\u0000c"}', 1 << 16)
    assert isinstance(msg, protocol.TextAppend) and msg.text == "a\ufffdbc"
    update = protocol.parse_client_message('{"type": "session.update", "instruct": "x\\udfff"}', 1 << 16)
    assert isinstance(update, protocol.SessionUpdate) and update.instruct == "x\ufffd"


def test_errors_echo_the_message_id() -> None:
    with pytest.raises(ProtocolError) as err:
        parse({"type": "text.append", "id": "abc"})
    assert err.value.msg_id == "abc"
    evt = protocol.error_event(err.value.code, err.value.message, err.value.msg_id)
    assert evt == {"type": "error", "code": "invalid_message", "message": err.value.message, "id": "abc"}


json_values = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False)
                           | st.text(max_size=20), lambda inner: st.lists(inner, max_size=4)
                           | st.dictionaries(st.text(max_size=10), inner, max_size=4), max_leaves=12)


@settings(max_examples=300, deadline=None)
@given(st.one_of(
    st.text(max_size=200),
    st.binary(max_size=50),
    json_values.map(json.dumps),
    st.fixed_dictionaries({"type": st.sampled_from([*protocol.CLIENT_TYPES, "x"])},
                          optional={"text": json_values, "sdp": json_values, "voice": json_values,
                                    "audio": json_values, "vad": json_values, "id": json_values,
                                    "all": json_values, "utterance": json_values}).map(json.dumps),
))
def test_fuzz_parser_returns_a_message_or_a_protocol_error(data: str | bytes) -> None:
    try:
        msg = parse_client_message(data, 4096)
    except ProtocolError as err:
        assert err.code and err.message
    else:
        assert type(msg).__name__ in {"SessionUpdate", "WebRtcOffer", "TextAppend", "TextFlush",
                                      "UtteranceCancel", "VoicesList"}


# ---- spoken_text ----------------------------------------------------------------------------------

def test_rate_prefix_counts_letters_not_spaces_or_punctuation() -> None:
    text = "Hi, you there."
    assert rate_prefix(text, 0, 14.0, 3.0) == 0
    assert text[:rate_prefix(text, 1000 * 5 / 14, 14.0, 3.0)] == "Hi, you "  # 5 letters
    assert rate_prefix(text, 10_000, 14.0, 3.0) == len(text)
    assert rate_prefix("你好世界", 1000 * 6 / 14, 14.0, 3.0) == 2  # CJK weighs 3


def test_snap_moves_a_cut_back_to_the_start_of_its_word() -> None:
    assert snap_to_word("hello world", 8) == 6
    assert snap_to_word("hello world", 5) == 5
    assert snap_to_word("hello world", 3) == 0
    assert snap_to_word("你好世界", 3) == 3


def test_spoken_estimate_is_bounded_by_the_text_the_model_had_read(tiny_checkpoint) -> None:  # type: ignore[no-untyped-def]
    from tts_engine.text.incremental import load_fast_tokenizer

    tok = load_fast_tokenizer(tiny_checkpoint("custom_voice"))
    text = "  The quick brown fox jumps over the lazy dog. "
    ids = tok.encode(text.lstrip(), add_special_tokens=False).ids
    assert read_prefix(tok, text, 0) == 2  # the leading spaces the engine drops
    assert read_prefix(tok, text, len(ids) + 5) == len(text)
    two = read_prefix(tok, text, 2)
    assert text[:two].strip() == tok.decode(ids[:2]).strip()
    long_heard = estimate_spoken(text, 60_000, 2, tok, 14.0, 3.0)
    assert long_heard == text[:two].rstrip()  # the rate says all; the model had read two tokens
    assert estimate_spoken(text, 60_000, None, tok, 14.0, 3.0) == text
    assert estimate_spoken(text, 0, 10, tok, 14.0, 3.0) == ""
    part = estimate_spoken(text, 1000, None, None, 14.0, 3.0)  # 14 letters: "The quick brown f"
    assert part == "  The quick brown"


# ---- settings and metrics --------------------------------------------------------------------------

@pytest.mark.parametrize(("host", "loopback"), [("127.0.0.1", True), ("::1", True), ("localhost", True),
                                                ("127.8.0.1", True), ("0.0.0.0", False), ("::", False),
                                                ("example.com", False), ("192.168.1.4", False)])
def test_exposure_needs_an_api_key_off_loopback(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback
    if loopback:
        ServerSettings(host=host).check_exposure()
    else:
        with pytest.raises(ValueError, match="--api-key"):
            ServerSettings(host=host).check_exposure()
        ServerSettings(host=host, api_key="k").check_exposure()


def test_metrics_render_prometheus_text() -> None:
    m = Metrics()
    m.gauge("voicegate_sessions", "Open sessions.", lambda: 3)
    m.utterances_total.inc(ended_by="eos")
    m.utterances_total.inc(ended_by="eos")
    m.first_audio.observe(0.04)
    m.first_audio.observe(9.0)
    sizes = [1, 2, 2]
    m.track_engine_batches(lambda: sizes)
    text = m.render()
    assert "# TYPE voicegate_sessions gauge\nvoicegate_sessions 3.0\n" in text  # prometheus_client writes floats
    assert 'voicegate_utterances_total{ended_by="eos"} 2' in text
    assert 'voicegate_first_audio_latency_seconds_bucket{le="0.05"} 1' in text
    assert 'voicegate_first_audio_latency_seconds_bucket{le="+Inf"} 2' in text
    assert "voicegate_first_audio_latency_seconds_count 2" in text
    assert 'voicegate_engine_batch_size_bucket{le="2.0"} 3.0' in text
    sizes.append(8)
    assert "voicegate_engine_batch_size_count 4" in m.render()  # new steps folded in once
