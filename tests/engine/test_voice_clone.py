"""Voice cloning against the official qwen-tts: prompts from a reference WAV, ICL in whole-text synthesis
and in the streaming engine (the ICL wait, the primed codec decoder, batching, the per-voice cache).

The golden cases `clone_*` (tests/fixtures/golden, made by tests/reference/make_golden.py) hold what the
official create_voice_clone_prompt + generate_voice_clone produced from tests/fixtures/speech/
clone_ref_24k.wav on the tiny Base checkpoint, greedy, fp32. test_golden.py compares codes and audio with
the official prompt; here the prompt is ours, made from the same WAV.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import soundfile
import torch

from tests.reference.golden import (
    CHECKPOINTS,
    GOLDEN_DIR,
    MANIFEST,
    REPO,
    changed_tensors,
    encoder_fingerprint,
)
from tts_engine import Engine, VoicePrompt
from tts_engine.synthesis.prompt import icl_target_rows
from tts_engine.synthesis.tts_model import SAMPLES_PER_FRAME, official_reference_cut

CASES = [c for c in json.loads(MANIFEST.read_text())["cases"] if c.get("clone")]
ICL_STREAM = [c for c in CASES if c["clone"] == "icl" and not c["non_streaming"]]
XVECTOR_TOL = 1e-4
WAVE_TOL = 1e-4


def _case(name: str) -> dict[str, Any]:
    return next(c for c in CASES if c["name"] == name)


def _data(case: dict[str, Any]) -> dict[str, np.ndarray]:
    with np.load(GOLDEN_DIR / case["file"]) as data:
        return {k: data[k] for k in data.files}


@pytest.fixture(scope="module")
def base(tiny_checkpoint: Callable[..., Any], tiny_model: Callable[..., Any]) -> Any:
    """The tiny Base model, after checking its weights (encoders included) are the fixtures'."""
    made_from = json.loads(CHECKPOINTS.read_text())["base"]
    changed = changed_tensors(encoder_fingerprint(tiny_checkpoint("base", 0)), made_from["encoder_fingerprint"])
    assert not changed, f"the Base encoders changed ({changed[:3]}): rerun tests/reference/make_golden.py"
    return tiny_model("base", 0)


@pytest.fixture(scope="module")
def ref_audio() -> np.ndarray:
    audio, rate = soundfile.read(REPO / CASES[0]["ref_audio"], dtype="float32")
    assert rate == 24000 and audio.ndim == 1
    return audio


def _official_prompt(case: dict[str, Any]) -> VoicePrompt:
    data = _data(case)
    codes = torch.from_numpy(data["ref_codes"].astype(np.int64)) if "ref_codes" in data else None
    return VoicePrompt(torch.from_numpy(data["xvector"]), codes, case["ref_text"] if codes is not None else None)


def _words(text: str) -> list[str]:
    """"a b c" -> ["a ", "b ", "c"]: word by word, as an LLM streams it."""
    words = text.split(" ")
    return [w + " " for w in words[:-1]] + words[-1:]


def _stream_codes(engine: Engine, prompt: VoicePrompt, pieces: list[str], eos_policy: str = "official"
                  ) -> np.ndarray:
    stream = engine.open_stream(language="english", voice_prompt=prompt, greedy=True, eos_policy=eos_policy)
    for piece in pieces:
        stream.push_text(piece)
    stream.finish()
    frames, end = stream.collect()
    assert end.reason == "eos", end
    return np.stack([f.codes for f in frames])


def test_the_golden_cases_cover_both_icl_branches() -> None:
    """T1 > T2 (text runs past the reference codes: trailing text rows) and T1 <= T2 (padded with P)."""
    assert {(c["clone"], c["non_streaming"]) for c in CASES} == {
        ("xvector", False), ("xvector", True), ("icl", False), ("icl", True)}
    branches = set()
    for c in ICL_STREAM:
        t1, t2 = len(c["ref_ids"]) + len(c["text_ids"]) + 1, c["ref_frames"] + 1
        branches.add(t1 > t2)
    assert branches == {True, False}


@pytest.mark.parametrize("case", [c for c in CASES if not c["non_streaming"]], ids=lambda c: c["name"])
def test_voice_prompt_from_wav_matches_official(base: Any, ref_audio: np.ndarray, case: dict[str, Any]) -> None:
    data = _data(case)
    prompt = base.make_voice_prompt(ref_audio, case.get("ref_text"))
    diff = float((prompt.xvector - torch.from_numpy(data["xvector"])).abs().max())
    assert diff <= XVECTOR_TOL, f"x-vector max |diff| vs official = {diff:.3g}"
    if case["clone"] == "icl":
        assert prompt.ref_codes is not None
        assert torch.equal(prompt.ref_codes, torch.from_numpy(data["ref_codes"].astype(np.int64)))
        assert prompt.ref_codes.shape == (case["ref_frames"], 16)
        assert list(base.tokenizer.ref_ids(case["ref_text"])) == case["ref_ids"] == data["ref_ids"].tolist()


@pytest.mark.parametrize("case", CASES, ids=lambda c: c["name"])
def test_synthesis_from_our_prompt_matches_official(base: Any, ref_audio: np.ndarray, case: dict[str, Any]) -> None:
    """End to end from the WAV: our x-vector and codes, our prompt layout, our decoder and cut."""
    data = _data(case)
    prompt = base.make_voice_prompt(ref_audio, case.get("ref_text"))
    out = base.synthesize(case["text"], language=case["language"], voice_prompt=prompt,
                          non_streaming=case["non_streaming"], greedy=True, max_frames=case["max_new_tokens"] - 1,
                          eos_policy="official")
    assert np.array_equal(out.codes.numpy(), data["codes"].astype(np.int64))
    if "audio" in data:
        assert out.audio.shape == data["audio"].shape
        diff = float(np.max(np.abs(out.audio - data["audio"])))
        assert diff <= WAVE_TOL, f"waveform max |diff| vs official = {diff:.3g}"


def test_official_cut_formula() -> None:
    """int(F / total * total*1920) in float64: usually F*1920, sometimes one sample less."""
    assert official_reference_cut(37, 50) == 37 * 1920
    assert official_reference_cut(15, 22) == 15 * 1920 - 1
    assert official_reference_cut(1, 49) == 1920 - 1
    for c in [c for c in CASES if c["clone"] == "icl"]:
        total = c["ref_frames"] + c["codes_shape"][0]
        assert official_reference_cut(c["ref_frames"], total) == c["cut_samples"]


def test_icl_audio_keeps_the_reference_sample_the_official_cut_keeps(base: Any) -> None:
    """With F=15 reference frames and 7 generated (cut = 15*1920 - 1) the output starts with the
    reference's last sample, as the official wrapper's does: compare with one full decode, cut."""
    torch.manual_seed(0)
    ref, gen = torch.randint(0, 2048, (15, 16)), torch.randint(0, 2048, (7, 16))
    full = base.decode(torch.cat([ref, gen]))
    cut = official_reference_cut(15, 22)
    ours = base.decode_after_reference(ref, gen)
    assert ours.shape == (7 * SAMPLES_PER_FRAME + 1,) == full[cut:].shape
    assert float(np.max(np.abs(ours - full[cut:]))) <= WAVE_TOL


@pytest.mark.parametrize("feed", ["char", "word"])
@pytest.mark.parametrize("case", ICL_STREAM, ids=lambda c: c["name"])
def test_icl_stream_fed_incrementally_matches_official(base: Any, case: dict[str, Any], feed: str) -> None:
    text = case["text"]
    pieces = list(text) if feed == "char" else _words(text)
    with Engine(base) as engine:
        codes = _stream_codes(engine, _official_prompt(case), pieces)
    assert np.array_equal(codes, _data(case)["codes"].astype(np.int64))


def test_icl_stream_audio_is_the_official_audio_after_the_cut(base: Any) -> None:
    """The stream's decoder is primed on the reference codes: its frames are the official waveform's
    generated part (int16 rounding apart); no reference audio is emitted."""
    case = _case("clone_icl_stream")
    data = _data(case)
    assert case["cut_samples"] == case["ref_frames"] * SAMPLES_PER_FRAME  # nothing of the reference kept
    with Engine(base) as engine:
        stream = engine.open_stream(language="english", voice_prompt=_official_prompt(case), greedy=True,
                                    eos_policy="official")
        stream.push_text(case["text"])
        stream.finish()
        frames, _ = stream.collect()
    pcm = np.concatenate([f.pcm for f in frames]).astype(np.float32) / 32767.0
    assert pcm.shape == data["audio"].shape
    assert float(np.max(np.abs(pcm - data["audio"]))) <= 1.0 / 32767 + WAVE_TOL


def test_icl_stream_waits_for_its_target_rows(base: Any) -> None:
    """No frame before T2 - R target tokens (the input still open); then frame 0 has read exactly those."""
    case = _case("clone_icl_stream")
    prompt = _official_prompt(case)
    need = base.icl_wait_tokens(prompt)
    assert need == icl_target_rows(len(case["ref_ids"]), case["ref_frames"] + 1, None) > 0
    assert need == case["ref_frames"] + 1 - len(case["ref_ids"])
    words = case["text"].split(" ")
    with Engine(base) as engine:
        stream = engine.open_stream(language="english", voice_prompt=prompt, greedy=True, eos_policy="official")
        fed = 0
        for word in words:  # feed words until the committed ids reach need - 1 (the last piece is held back)
            ids, _, _ = stream.snapshot()
            if len(base.tokenizer.target_ids(stream.text + word + " ")) > need:
                break
            stream.push_text(word + " ")
            fed += 1
        ids, _, _ = stream.snapshot()
        assert len(ids) < need
        time.sleep(0.3)  # the engine had every chance to start
        with pytest.raises(TimeoutError):
            stream.next_frame(timeout=0.2)
        stream.push_text(" ".join(words[fed:]))
        stream.finish()
        frames, _ = stream.collect()
    assert frames[0].text_tokens_consumed == need
    assert np.array_equal(np.stack([f.codes for f in frames]), _data(case)["codes"].astype(np.int64))


def test_icl_short_text_needs_the_whole_input(base: Any) -> None:
    """N + 1 <= T2 - R: the block holds the whole text, its E and P padding, so the stream starts only
    at finish()."""
    case = _case("clone_icl_short_stream")
    with Engine(base) as engine:
        stream = engine.open_stream(language="english", voice_prompt=_official_prompt(case), greedy=True,
                                    eos_policy="official")
        stream.push_text(case["text"])  # the whole text, but the input is still open
        time.sleep(0.3)
        with pytest.raises(TimeoutError):
            stream.next_frame(timeout=0.2)
        stream.finish()
        frames, _ = stream.collect()
    assert np.array_equal(np.stack([f.codes for f in frames]), _data(case)["codes"].astype(np.int64))


def test_batched_streams_give_the_official_codes(base: Any) -> None:
    """An ICL stream, a second copy of it and an x-vector stream side by side: each as if alone."""
    icl, xvec = _case("clone_icl_stream"), _case("clone_xvector_stream")
    with Engine(base) as engine:
        a = engine.open_stream(language="english", voice_prompt=_official_prompt(icl), greedy=True,
                               eos_policy="official")
        b = engine.open_stream(language="english", voice_prompt=_official_prompt(icl), greedy=True,
                               eos_policy="official")
        c = engine.open_stream(language="english", voice_prompt=_official_prompt(xvec), greedy=True,
                               eos_policy="official")
        words = _words(icl["text"])
        c.push_text(xvec["text"])
        c.finish()
        for i, word in enumerate(words):  # a and b interleaved; b is one word behind
            a.push_text(word)
            if i:
                b.push_text(words[i - 1])
        a.finish()
        b.push_text(words[-1])
        b.finish()
        results = [s.collect()[0] for s in (a, b, c)]
        # equal-content prompts (distinct objects) share one cached voice state
        assert len(engine.scheduler.voices) == 2
    for frames, case in zip(results, (icl, icl, xvec), strict=True):
        assert np.array_equal(np.stack([f.codes for f in frames]), _data(case)["codes"].astype(np.int64))


def test_default_eos_policy_waits_for_the_text(base: Any) -> None:
    """Default policy: no EOS before E was fed (frame R + N + 1 - T2); the stream and synthesize agree."""
    case = _case("clone_icl_stream")
    prompt = _official_prompt(case)
    out = base.synthesize(case["text"], language="english", voice_prompt=prompt, greedy=True, max_frames=60)
    earliest = len(case["ref_ids"]) + len(case["text_ids"]) + 1 - (case["ref_frames"] + 1)
    assert out.ended_by == "eos" and len(out.codes) >= earliest
    with Engine(base) as engine:
        codes = _stream_codes(engine, prompt, _words(case["text"]), eos_policy="default")
    assert np.array_equal(codes, out.codes.numpy())


# ---- bad input -----------------------------------------------------------------------------------


def test_icl_prompt_needs_a_base_checkpoint(tiny_model: Callable[..., Any]) -> None:
    prompt = _official_prompt(_case("clone_icl_stream"))
    model = tiny_model("custom_voice", 0)
    with pytest.raises(ValueError, match="Base checkpoint"):
        model.voice(speaker="vivian", voice_prompt=prompt)


def test_icl_prompt_checks(base: Any) -> None:
    prompt = _official_prompt(_case("clone_icl_stream"))
    hidden = base.config.talker_config.hidden_size
    with pytest.raises(ValueError, match="hidden size"):
        base.voice(voice_prompt=VoicePrompt(torch.zeros(hidden + 4), prompt.ref_codes, "Hello."))
    with pytest.raises(ValueError, match="transcript is empty"):
        VoicePrompt(prompt.xvector, prompt.ref_codes, "   ")
    with pytest.raises(ValueError, match="without reference codes"):
        base.voice(voice_prompt=VoicePrompt(prompt.xvector, torch.zeros(0, 16, dtype=torch.long), "Hello."))
    with pytest.raises(ValueError, match=r"in \[0, 2048\)"):
        base.voice(voice_prompt=VoicePrompt(prompt.xvector, torch.full((3, 16), 4096), "Hello."))
    with pytest.raises(ValueError, match="Base checkpoints take no style"):
        base.voice(instruct="Whisper.", voice_prompt=prompt)


def test_a_voice_is_prepared_once_and_reused_exactly(base: Any) -> None:
    """Second stream of a voice: prefix rows, primed decoder state and prefix KV come from the cache
    (an equal-content prompt object); its codes are the official ones, and the cached KV is what a
    fresh prefix forward writes."""
    case = _case("clone_icl_stream")
    expected = _data(case)["codes"].astype(np.int64)
    with Engine(base) as engine:
        first = _stream_codes(engine, _official_prompt(case), _words(case["text"]))
        (state,) = engine.scheduler.voices.values()
        primed_frames = state.codec.frames.clone()
        second = _stream_codes(engine, _official_prompt(case), _words(case["text"]))
        assert len(engine.scheduler.voices) == 1
    assert np.array_equal(first, expected) and np.array_equal(second, expected)
    assert torch.equal(state.codec.frames, primed_frames) and int(primed_frames[0]) == case["ref_frames"]
    assert state.kv is not None and state.icl is not None
    length = state.prefix.shape[0]
    # role (3), think/think_bos/lang/think_eos + x-vector + codec_pad (6), the R reference-only block rows
    assert length == 3 + 6 + len(case["ref_ids"])
    base.talker(state.prefix[None], torch.arange(length)[None], rows=slice(0, 1))
    for layer, (k, v) in zip(base.talker.model.layers, state.kv, strict=True):
        cache = layer.self_attn.kv_cache
        assert torch.equal(cache.k[0, :, :length], k) and torch.equal(cache.v[0, :, :length], v)


@pytest.mark.parametrize("ref_frames", [5, 14])
def test_stream_equals_synthesis_for_other_reference_lengths(base: Any, ref_frames: int) -> None:
    """Reference shorter than its transcript (F=5: T2 = 6 < R = 11: no wait at all, the decode steps
    carry the rest of the transcript first) and T2 - R = 4: the engine fed char by char equals the
    whole-text layout (the official generate_icl_prompt, checked against the goldens above)."""
    case = _case("clone_icl_stream")
    full = _official_prompt(case)
    assert full.ref_codes is not None
    prompt = VoicePrompt(full.xvector, full.ref_codes[:ref_frames], case["ref_text"])
    assert base.icl_wait_tokens(prompt) == max(0, ref_frames + 1 - len(case["ref_ids"]))
    text = "Short words, then a few more of them."
    expected = base.synthesize(text, language="english", voice_prompt=prompt, greedy=True, max_frames=40,
                               eos_policy="official").codes.numpy()
    with Engine(base) as engine:
        codes = _stream_codes(engine, prompt, list(text))
    assert len(expected) > 2 and np.array_equal(codes, expected)


def test_prompt_length_and_the_engine_limit(base: Any) -> None:
    """prompt_length counts what build_prefix + the ICL block make; a reference whose prompt would take
    over half of a stream's positions is refused at open_stream, before any text."""
    from tts_engine import EngineSettings
    from tts_engine.synthesis.prompt import prompt_length

    prompt = _official_prompt(_case("clone_icl_stream"))
    for voice_prompt in (prompt, VoicePrompt(prompt.xvector)):
        voice = base.voice(language="english", voice_prompt=voice_prompt)
        block = 1 + voice.ref_codes.shape[0] if voice.icl else 1
        assert prompt_length(base.config, voice, 3, 0) == base.prefix(voice).shape[0] + block
    with Engine(base, EngineSettings(max_positions=80)) as engine:
        with pytest.raises(ValueError, match="reference audio too long"):
            engine.open_stream(language="english", voice_prompt=prompt)
        engine.open_stream(language="english", voice_prompt=VoicePrompt(prompt.xvector)).cancel()
