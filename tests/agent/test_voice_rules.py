"""The voice rules every front-end follows (agent.voices.catalogue `ModelInfo.resolve`), on small catalogues."""

from __future__ import annotations

import pytest

from agent.apis.speech import ApiVoiceError, resolve_voice
from agent.session import protocol
from agent.voices.catalogue import ModelInfo, VoiceEntry
from agent.voices.errors import INSTRUCT_UNSUPPORTED, UNKNOWN_VOICE, UNSUPPORTED_LANGUAGE, VoiceError

from .conftest import ServerThread, session_client

LANGUAGES = ["auto", "chinese", "english", "german"]


def custom_voice(size: str = "0b6") -> ModelInfo:
    return ModelInfo(name="cv", kind="custom_voice", voices=["vivian", "ryan"], languages=LANGUAGES,
                     instruct=size != "0b6", size=size)


def base() -> ModelInfo:
    entries = [VoiceEntry(name="Alice", kind="cloned", language="german", mode="xvector")]
    return ModelInfo(name="b", kind="base", voices=["Alice"], languages=LANGUAGES, instruct=False, entries=entries)


def voice_design() -> ModelInfo:
    entries = [VoiceEntry(name="narrator", kind="designed", language="english", instruct=True,
                          description="A calm, low voice.")]
    return ModelInfo(name="vd", kind="voice_design", voices=["narrator"], languages=LANGUAGES, instruct=True,
                     entries=entries)


def test_no_name_is_the_default_voice_and_names_match_case_insensitively() -> None:
    assert custom_voice().resolve().name == "vivian"
    got = custom_voice().resolve("RYAN")
    assert (got.name, got.language, got.stream_args) == ("ryan", "auto", {"speaker": "ryan", "language": "auto",
                                                                           "instruct": None})
    assert base().resolve("alice").name == "Alice"


def test_languages_by_name_or_iso_code() -> None:
    for asked in ("english", "English", "en", "en-US", "en_GB"):
        assert custom_voice().resolve("ryan", asked).language == "english"
    with pytest.raises(VoiceError) as refused:
        custom_voice().resolve("ryan", "klingon")
    assert (refused.value.code, refused.value.field) == (UNSUPPORTED_LANGUAGE, "language")
    assert "klingon" in refused.value.message and "english" in refused.value.message


def test_a_saved_voice_brings_its_language_a_preset_takes_the_fallback() -> None:
    assert base().resolve("Alice").language == "german"
    assert base().resolve("Alice", "english").language == "english"  # a named language wins
    assert base().resolve("Alice", fallback_language="english").language == "german"
    assert custom_voice().resolve("ryan", fallback_language="german").language == "german"


def test_instruct_is_kept_dropped_with_a_warning_or_refused() -> None:
    kept = custom_voice("1b7").resolve("ryan", instruct="whisper")
    assert (kept.instruct, kept.stream_args["instruct"], kept.warning) == ("whisper", "whisper", None)
    dropped = custom_voice("0b6").resolve("ryan", instruct="whisper")
    assert dropped.instruct is None and dropped.stream_args["instruct"] is None
    assert dropped.warning is not None and "0.6B" in dropped.warning
    with pytest.raises(VoiceError) as refused:
        base().resolve("Alice", instruct="whisper")
    assert (refused.value.code, refused.value.field) == (INSTRUCT_UNSUPPORTED, "instruct")
    assert "no style instruction" in refused.value.message
    assert base().resolve("Alice", instruct="").instruct is None  # "" is no instruction


def test_a_designed_voice_speaks_its_description_unless_an_instruction_replaces_it() -> None:
    assert voice_design().resolve("narrator").stream_args == {"language": "english",
                                                              "instruct": "A calm, low voice."}
    assert voice_design().resolve("narrator", instruct="Shrill.").stream_args["instruct"] == "Shrill."


def test_unknown_voice_names_the_field_and_the_choices() -> None:
    with pytest.raises(VoiceError) as refused:
        custom_voice().resolve("nobody")
    assert (refused.value.code, refused.value.field) == (UNKNOWN_VOICE, "voice")
    assert "unknown voice 'nobody'" in refused.value.message and "vivian, ryan" in refused.value.message
    with pytest.raises(VoiceError, match="unknown voice ''"):
        custom_voice().resolve("")  # an empty name is not the default


def test_the_api_wrapper_reports_the_request_parameter() -> None:
    with pytest.raises(ApiVoiceError) as refused:
        resolve_voice(base(), "Alice", None, "whisper")
    assert refused.value.param == "instructions"
    with pytest.raises(ApiVoiceError) as refused:
        resolve_voice(base(), "Alice", "xx")
    assert refused.value.param == "language"
    assert resolve_voice(custom_voice(), "vivian", None, "whisper").warning is not None


async def test_session_update_follows_the_same_rules(server: ServerThread) -> None:
    """A real session: ISO codes, a preset keeps the session's language, a refusal changes nothing."""
    async with session_client(server.ws_url) as (client, _):
        await client.send(type="session.update", language="de")
        assert (await client.expect("session.updated"))["config"]["language"] == "german"
        await client.send(type="session.update", voice="Ryan")
        config = (await client.expect("session.updated"))["config"]
        assert (config["voice"], config["language"]) == ("ryan", "german")
        await client.send(type="session.update", voice="ryan", language="klingon", id="bad")
        err = await client.expect("error")
        assert (err["code"], err["id"]) == (protocol.INVALID_VOICE, "bad") and "klingon" in err["message"]
        await client.send(type="session.update", seed=5)
        config = (await client.expect("session.updated"))["config"]
        assert (config["voice"], config["language"], config["seed"]) == ("ryan", "german", 5)
