"""Saved voices: reference audio decoding, the registry on a tiny Base checkpoint, the CLI, and the server.

Real peers throughout: espeak-ng speech converted by sox and PyAV, the tiny checkpoints, `python -m agent.cli.main`
subprocesses, and a WebSocket client against the real server.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from agent.session import protocol
from agent.session.session import ModelInfo
from agent.settings import ServerSettings
from agent.voices.catalogue import catalogue, find
from agent.voices.reference_audio import TARGET_RATE, ReferenceAudioError, load_reference
from agent.voices.store import VoiceError, VoiceRegistry
from tts_engine import load_voice_prompt

from .conftest import ServerThread, serve_checkpoint, session_client
from .voice_helpers import dir_state, encode, espeak_wav, read_float, sox, write_float_wav

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def refs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The same espeak-ng phrase in many shapes: rates, channels, codecs."""
    d = tmp_path_factory.mktemp("refs")
    src = espeak_wav(d / "espeak.wav")
    out = {"src": src, "24k": sox(src, d / "24k.wav", "-r", "24000", "-b", "16")}
    for rate in (16000, 44100, 48000):
        out[f"{rate}"] = sox(src, d / f"{rate}.wav", "-r", str(rate), "-b", "16")
    out["44100_mono"] = out["44100"]
    out["44100_stereo"] = sox(out["44100"], d / "44100_stereo.wav", "-c", "2")  # both channels equal
    mono48, _ = read_float(out["48000"])
    out["flac"] = write_float_wav(d / "48k.flac", mono48, 48000, subtype="PCM_16")
    out["mp3"] = encode(d / "48k.mp3", mono48, 48000, "libmp3lame")
    out["ogg"] = encode(d / "48k.ogg", mono48, 48000, "libopus")
    return out


@pytest.fixture(scope="module")
def base(tiny_model: Callable[..., Any]) -> Any:
    return tiny_model("base")


def _corr(a: np.ndarray, b: np.ndarray) -> float:
    n = min(a.size, b.size)
    return float(np.corrcoef(a[:n], b[:n])[0, 1])


# ---- reference audio -----------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["16000", "24k", "44100", "48000", "44100_stereo", "flac", "mp3", "ogg"])
def test_any_format_and_rate_becomes_24k_mono(refs: dict[str, Path], name: str) -> None:
    ref = load_reference(refs[name])
    expected, rate = read_float(refs["24k"])  # sox's own 24 kHz conversion of the same speech
    assert rate == TARGET_RATE and ref.samples.dtype == np.float32 and ref.samples.ndim == 1
    assert abs(ref.seconds - expected.size / TARGET_RATE) < (0.1 if name in ("mp3", "ogg") else 0.002)
    if name in ("mp3", "ogg"):  # encoder delay: align before comparing
        lag = int(np.argmax(np.correlate(ref.samples[:24000], expected[:12000], "valid")))
        assert lag < 2400
        assert _corr(ref.samples[lag:], expected) > 0.9
    else:
        assert _corr(ref.samples, expected) > 0.99
    assert ref.source_channels == (2 if name == "44100_stereo" else 1)
    assert len(ref.sha256) == 64 and ref.warnings == ()


def test_stereo_is_averaged_not_summed(refs: dict[str, Path], tmp_path: Path) -> None:
    mono, rate = read_float(refs["24k"])
    same = load_reference(refs["44100_stereo"]).samples
    assert np.array_equal(same, load_reference(refs["44100_mono"]).samples)  # L == R: the mono signal itself
    one_side = write_float_wav(tmp_path / "left.wav", np.stack([mono, np.zeros_like(mono)], 1), rate)
    got = load_reference(one_side).samples
    np.testing.assert_allclose(got, mono / 2, atol=1e-6)


def test_short_audio_warns(refs: dict[str, Path], tmp_path: Path) -> None:
    mono, rate = read_float(refs["24k"])
    ref = load_reference(write_float_wav(tmp_path / "2s.wav", mono[: 2 * rate], rate))
    assert ref.warnings and "3 s" in ref.warnings[0]


# ---- registry on a tiny Base checkpoint ----------------------------------------------------------

def test_add_list_load_remove_xvector_voice(base: Any, refs: dict[str, Path], tmp_path: Path) -> None:
    reg = VoiceRegistry(tmp_path / "voices")
    assert reg.list() == []
    saved = reg.add_cloned("Alice", base, refs["48000"], language="english", consent="Alice, by email 2026-11-30")
    assert (saved.name, saved.kind, saved.mode, saved.language) == ("Alice", "cloned", "xvector", "english")
    assert saved.path == tmp_path / "voices" / "Alice.voice.safetensors"
    listed = reg.list()
    assert [v.name for v in listed] == ["Alice"]
    d = listed[0].describe()
    assert d["consent"] == "Alice, by email 2026-11-30" and d["model_kind"] == "base"
    assert d["hidden_size"] == base.config.talker_config.hidden_size and len(d["source_sha256"]) == 64
    assert d["created"].endswith("Z")
    # the saved prompt is exactly what the model extracts from the 24 kHz reference
    prompt, meta = load_voice_prompt(saved.path)
    fresh = base.make_voice_prompt(load_reference(refs["48000"]).samples)
    assert torch.equal(prompt.xvector, fresh.xvector) and not prompt.icl
    assert meta["source"]["sample_rate"] == 48000 and meta["model"]["size"] == base.config.tts_model_size
    assert torch.equal(reg.load_prompt("alice").xvector, prompt.xvector)  # names are case-insensitive
    removed = reg.remove("ALICE")
    assert removed.name == "Alice" and reg.list() == [] and dir_state(tmp_path / "voices") == {}


def test_icl_voice_keeps_codes_and_transcript(base: Any, refs: dict[str, Path], tmp_path: Path) -> None:
    reg = VoiceRegistry(tmp_path)
    saved = reg.add_cloned("bob", base, refs["24k"], text="  This is a short reference recording.  ")
    assert saved.mode == "icl"
    prompt = reg.load_prompt("bob")
    n = load_reference(refs["24k"]).samples.size
    assert prompt.ref_codes is not None and prompt.ref_codes.shape == (-(-n // 1920), 16)
    assert prompt.ref_text == "This is a short reference recording."
    assert reg.list()[0].describe()["mode"] == "icl"


def test_designed_voice(tmp_path: Path) -> None:
    reg = VoiceRegistry(tmp_path)
    saved = reg.add_designed("narrator", "A calm, low voice, speaking slowly.", "English")
    assert (saved.kind, saved.language, saved.description) == ("designed", "english",
                                                               "A calm, low voice, speaking slowly.")
    assert json.loads((tmp_path / "narrator.voice.json").read_text())["description"] == saved.description


def test_force_replaces_and_duplicates_are_refused(base: Any, refs: dict[str, Path], tmp_path: Path) -> None:
    reg = VoiceRegistry(tmp_path)
    reg.add_designed("Sam", "a bright voice")
    before = dir_state(tmp_path)
    with pytest.raises(VoiceError, match="already exists"):
        reg.add_designed("sam", "another voice")
    with pytest.raises(VoiceError, match="already exists"):
        reg.add_cloned("SAM", base, refs["16000"])
    assert dir_state(tmp_path) == before
    reg.add_cloned("sam", base, refs["16000"], force=True)  # another kind and spelling: the old file goes
    assert [(v.name, v.kind) for v in reg.list()] == [("sam", "cloned")]
    assert sorted(dir_state(tmp_path)) == ["sam.voice.safetensors"]


def _bad_inputs(refs: dict[str, Path], d: Path) -> dict[str, Path]:
    mono, rate = read_float(refs["24k"])
    garbage = d / "notes.wav"
    garbage.write_text("this is not audio at all\n" * 50)
    noise = np.random.default_rng(0).standard_normal(rate * 3).astype(np.float32)
    return {
        "unreadable": garbage,
        "missing": d / "nope.wav",
        "too short": write_float_wav(d / "short.wav", mono[: rate // 2], rate, "PCM_16"),
        "too long": write_float_wav(d / "long.wav", np.tile(mono, 10)[: 31 * rate], rate, "PCM_16"),
        "silence": write_float_wav(d / "silence.wav", np.zeros(rate * 3, np.float32), rate, "PCM_16"),
        "almost silence": write_float_wav(d / "hiss.wav", noise * 3e-4, rate),
        "NaN samples": write_float_wav(d / "nan.wav", np.where(np.arange(rate * 3) % 100 == 0, np.nan,
                                                               0.1 * noise), rate),
        "unscaled floats": write_float_wav(d / "ints.wav", mono * 32767.0, rate),
    }


@pytest.mark.parametrize("case, message", [
    ("unreadable", "cannot read it as audio"), ("missing", "no such file"), ("too short", "too short"),
    ("too long", "more than 30 s"), ("silence", "silence"), ("almost silence", "silence"),
    ("NaN samples", "wrong sample format"), ("unscaled floats", "wrong sample format"),
])
def test_bad_audio_is_refused_and_nothing_written(base: Any, refs: dict[str, Path], tmp_path: Path,
                                                  case: str, message: str) -> None:
    reg = VoiceRegistry(tmp_path / "voices")
    reg.add_designed("keep", "an existing voice")
    before = dir_state(reg.root)
    path = _bad_inputs(refs, tmp_path)[case]
    with pytest.raises(ReferenceAudioError, match=message):
        reg.add_cloned("newvoice", base, path)
    assert dir_state(reg.root) == before


@pytest.mark.parametrize("kwargs, message", [
    ({"name": "../escape"}, "bad voice name"), ({"name": "a/b"}, "bad voice name"),
    ({"name": ".hidden"}, "bad voice name"), ({"name": ""}, "bad voice name"),
    ({"name": "with space"}, "bad voice name"), ({"name": "Vivian"}, "preset speaker"),
    ({"mode": "icl"}, "needs the transcript"), ({"mode": "icl", "text": "   "}, "needs the transcript"),
    ({"language": "klingon"}, "unknown language"),
])
def test_bad_requests_are_refused_and_nothing_written(base: Any, refs: dict[str, Path], tmp_path: Path,
                                                      kwargs: dict[str, Any], message: str) -> None:
    reg = VoiceRegistry(tmp_path / "voices")
    reg.add_designed("keep", "an existing voice")
    before = dir_state(tmp_path)
    args = {"name": "newvoice", **kwargs}
    with pytest.raises(VoiceError, match=message):
        reg.add_cloned(args.pop("name"), base, refs["24k"], **args)
    assert dir_state(tmp_path) == before


def test_wrong_checkpoint_kind_is_refused(tiny_model: Callable[..., Any], refs: dict[str, Path],
                                          tmp_path: Path) -> None:
    reg = VoiceRegistry(tmp_path)
    with pytest.raises(VoiceError, match=r"needs a Base checkpoint; .* is custom_voice"):
        reg.add_cloned("x", tiny_model("custom_voice"), refs["24k"])
    assert dir_state(tmp_path) == {}


def test_broken_voice_files_are_skipped(tmp_path: Path) -> None:
    reg = VoiceRegistry(tmp_path)
    reg.add_designed("good", "a voice")
    (tmp_path / "broken.voice.safetensors").write_bytes(b"\x00" * 10)
    (tmp_path / ".tmpfile.voice.json.123.tmp").write_text("{")
    assert [v.name for v in reg.list()] == ["good"]


# ---- the catalogue: presets, dialects, which saved voices fit which model -------------------------

def test_catalogue_per_model_kind(tiny_model: Callable[..., Any], base: Any, refs: dict[str, Path],
                                  tmp_path: Path) -> None:
    reg = VoiceRegistry(tmp_path)
    reg.add_cloned("alice", base, refs["24k"], language="english")
    reg.add_designed("narrator", "a calm low voice", "english")
    cv = catalogue(tiny_model("custom_voice"), reg)
    assert all(e.kind == "preset" for e in cv) and find(cv, "Vivian") is not None
    assert find(cv, "dylan").dialect == "beijing_dialect" and find(cv, "eric").dialect == "sichuan_dialect"  # type: ignore[union-attr]
    assert find(cv, "vivian").dialect is None and not find(cv, "vivian").instruct  # type: ignore[union-attr]  # tiny = 0.6B
    assert [(e.name, e.kind, e.mode) for e in catalogue(base, reg)] == [("alice", "cloned", "xvector")]
    vd = catalogue(tiny_model("voice_design"), reg)
    assert [(e.name, e.kind, e.instruct) for e in vd] == [("narrator", "designed", True)]
    info = ModelInfo.from_model(base, "tiny-base", tmp_path)
    assert info.voices == ["alice"] and info.describe()["voice_details"][0]["mode"] == "xvector"
    with pytest.raises(ValueError, match="unknown voice 'nobody'"):
        info.stream_args("nobody", "auto", None)


def test_designed_voice_speaks_its_description(tiny_model: Callable[..., Any], tmp_path: Path) -> None:
    vd = tiny_model("voice_design")
    reg = VoiceRegistry(tmp_path)
    reg.add_designed("narrator", "A calm, low voice.", "english")
    info = ModelInfo.from_model(vd, "tiny-vd", tmp_path)
    args = info.stream_args("narrator", "english", None)
    got = vd.synthesize("Hi there.", **args, greedy=True, max_frames=6)
    want = vd.synthesize("Hi there.", instruct="A calm, low voice.", language="english", greedy=True, max_frames=6)
    assert torch.equal(got.codes, want.codes)
    other = vd.synthesize("Hi there.", **info.stream_args("narrator", "english", "A shrill, fast voice."),
                          greedy=True, max_frames=6)
    assert not torch.equal(other.codes, want.codes)  # a session instruct replaces the saved description


# ---- the CLI, end to end -------------------------------------------------------------------------

def _cli(*args: str, env_dir: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = {"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin", "HOME": str(env_dir or REPO), "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "agent.cli.main", *args], capture_output=True, text=True, env=env,
                          cwd=REPO, timeout=300)


def test_cli_add_list_synth_remove(tiny_checkpoint: Callable[..., Path], base: Any, refs: dict[str, Path],
                                   tmp_path: Path) -> None:
    ckpt, voices = tiny_checkpoint("base"), tmp_path / "voices"
    added = _cli("voices", "add", "alice", "--audio", str(refs["ogg"]), "--model", str(ckpt), "--language", "english",
                 "--consent", "test fixture", "--voices-dir", str(voices))
    assert added.returncode == 0, added.stderr
    assert "ogg/opus, 48000 Hz, 1 ch" in added.stderr and "saved cloned voice 'alice' (xvector, english)" in added.stderr
    designed = _cli("voices", "add", "narrator", "--design", "a calm voice", "--voices-dir", str(voices))
    assert designed.returncode == 0, designed.stderr
    listed = _cli("voices", "list", "--json", "--voices-dir", str(voices))
    got = json.loads(listed.stdout)["voices"]
    assert [(v["name"], v["kind"], v.get("mode")) for v in got] == [("alice", "cloned", "xvector"),
                                                                     ("narrator", "designed", None)]
    table = _cli("voices", "list", "--voices-dir", str(voices)).stdout.splitlines()
    assert table[0].split() == ["NAME", "KIND", "LANGUAGE", "MODE", "CREATED"] and table[1].split()[:4] == [
        "alice", "cloned", "english", "xvector"]

    codes = tmp_path / "codes.npy"
    synth = _cli("synth", "--model", str(ckpt), "--voice", "alice", "--voices-dir", str(voices), "--text",
                 "Hello there.", "--greedy", "--out", str(tmp_path / "a.wav"), "--codes-out", str(codes))
    assert synth.returncode == 0, synth.stderr
    prompt = VoiceRegistry(voices).load_prompt("alice")
    want = base.synthesize("Hello there.", voice_prompt=prompt, language="english", greedy=True)
    assert np.array_equal(np.load(codes), want.codes.numpy())
    # the same voice straight from the recording (no saved file)
    raw_codes = tmp_path / "raw.npy"
    raw = _cli("synth", "--model", str(ckpt), "--ref-audio", str(refs["ogg"]), "--language", "english", "--text",
               "Hello there.", "--greedy", "--out", str(tmp_path / "b.wav"), "--codes-out", str(raw_codes))
    assert raw.returncode == 0, raw.stderr
    assert np.array_equal(np.load(raw_codes), want.codes.numpy())

    removed = _cli("voices", "remove", "alice", "--voices-dir", str(voices))
    assert removed.returncode == 0 and "removed cloned voice 'alice'" in removed.stderr
    assert [v["name"] for v in json.loads(_cli("voices", "list", "--json", "--voices-dir", str(voices)).stdout)[
        "voices"]] == ["narrator"]


def test_cli_errors_are_one_line_and_write_nothing(refs: dict[str, Path], tmp_path: Path) -> None:
    voices = tmp_path / "voices"
    cases = [
        (["--audio", str(refs["24k"]), "--mode", "icl", "--model", "x"], "--mode icl needs the transcript"),
        (["--audio", str(refs["24k"])], "cloning needs a Base checkpoint"),
        (["--audio", str(tmp_path / "none.wav"), "--model", "x"], "no such file"),
        (["--design", "x", "--text", "y"], "--text belongs to cloning"),
        ([], "give either --audio"),
    ]
    for extra, message in cases:
        out = _cli("voices", "add", "v1", *extra, "--voices-dir", str(voices))
        assert out.returncode == 2 and message in out.stderr and "Traceback" not in out.stderr, out.stderr
    bad_name = _cli("voices", "add", "a/b", "--design", "x", "--voices-dir", str(voices))
    assert bad_name.returncode == 2 and "bad voice name" in bad_name.stderr
    gone = _cli("voices", "remove", "ghost", "--voices-dir", str(voices))
    assert gone.returncode == 2 and "no saved voice 'ghost'" in gone.stderr
    assert not voices.exists()


def test_cli_default_dir_from_environment(tmp_path: Path) -> None:
    env = {"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "OMP_NUM_THREADS": "1",
           "VOICEGATE_VOICES_DIR": str(tmp_path / "envdir")}
    run = [sys.executable, "-m", "agent.cli.main", "voices"]
    subprocess.run([*run, "add", "zed", "--design", "a deep voice"], env=env, check=True, capture_output=True)
    assert (tmp_path / "envdir" / "zed.voice.json").is_file()
    out = subprocess.run([*run, "list", "--json"], env=env, check=True, capture_output=True, text=True)
    assert json.loads(out.stdout)["voices_dir"] == str(tmp_path / "envdir")


# ---- the server: a Base checkpoint with saved voices ---------------------------------------------

@pytest.fixture(scope="module")
def base_voices(base: Any, refs: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("served-voices")
    VoiceRegistry(d).add_cloned("alice", base, refs["48000"], language="english", consent="fixture")
    return d


@pytest.fixture(scope="module")
def base_server(tiny_checkpoint: Callable[..., Path], base_voices: Path) -> Iterator[ServerThread]:
    with serve_checkpoint(tiny_checkpoint("base"), "tiny-base", voices_dir=base_voices) as srv:
        yield srv


async def test_session_speaks_with_a_saved_voice(base_server: ServerThread, base: Any, base_voices: Path) -> None:
    from tts_engine import Engine

    text = "Hello there, how are you?"
    async with session_client(base_server.ws_url) as (client, created):
        assert created["model_kind"] == "base" and created["voices"] == ["alice"] and created["instruct"] is False
        detail = created["voice_details"][0]
        assert detail["kind"] == "cloned" and detail["mode"] == "xvector" and "english" in detail["languages"]
        assert created["config"]["voice"] == "alice" and created["config"]["language"] == "english"
        await client.send(type="session.update", voice="Alice", greedy=True, seed=7)
        cfg = (await client.expect("session.updated"))["config"]
        assert (cfg["voice"], cfg["language"], cfg["greedy"]) == ("alice", "english", True)
        for word in ("Hello ", "there, ", "how ", "are ", "you?"):
            await client.send(type="text.append", text=word)
        await client.send(type="text.flush")
        done = await client.expect("utterance.done", timeout=60)
        assert done["frames"] == len(client.frames) > 0
        served = b"".join(client.frames)

    prompt = VoiceRegistry(base_voices).load_prompt("alice")
    with Engine(base) as engine:  # the same engine path, on this side: codes and PCM frame by frame
        stream = engine.open_stream(language="english", voice_prompt=prompt, greedy=True, seed=7)
        stream.push_text(text)
        stream.finish()
        frames = list(stream)
    want = base.synthesize(text, voice_prompt=prompt, language="english", greedy=True, seed=7)
    assert np.array_equal(np.stack([f.codes for f in frames]), want.codes.numpy())
    assert served == b"".join(f.pcm.tobytes() for f in frames)


async def test_unknown_voice_and_instruct_on_base_are_errors(base_server: ServerThread) -> None:
    async with session_client(base_server.ws_url) as (client, _):
        await client.send(type="session.update", voice="vivian", id="u1")
        err = await client.expect("error")
        assert (err["code"], err["id"]) == (protocol.INVALID_VOICE, "u1") and "unknown voice 'vivian'" in err["message"]
        await client.send(type="session.update", instruct="whisper", id="u2")
        err = await client.expect("error")
        assert err["code"] == protocol.INVALID_VOICE and "no style instruction" in err["message"]
        await client.send(type="voices.list", id="l")
        assert (await client.expect("voices"))["voices"] == ["alice"]  # the session goes on


async def test_voices_added_while_serving_appear_in_voices_list(base_server: ServerThread, base: Any,
                                                               refs: dict[str, Path], base_voices: Path) -> None:
    async with session_client(base_server.ws_url) as (client, created):
        assert "carol" not in created["voices"]
        reg = VoiceRegistry(base_voices)
        reg.add_cloned("carol", base, refs["16000"], language="german")
        try:
            await client.send(type="voices.list")
            reply = await client.expect("voices")
            assert reply["voices"] == ["alice", "carol"]
            await client.send(type="session.update", voice="carol")
            assert (await client.expect("session.updated"))["config"]["language"] == "german"
        finally:
            reg.remove("carol")


async def test_instruct_on_06b_custom_voice_is_a_warning(server: ServerThread) -> None:
    async with session_client(server.ws_url) as (client, created):
        assert created["instruct"] is False  # the tiny checkpoint is a 0.6B
        dylan = next(v for v in created["voice_details"] if v["name"] == "dylan")
        assert dylan["kind"] == "preset" and dylan["dialect"] == "beijing_dialect"
        await client.send(type="session.update", voice="dylan", instruct="speak slowly", id="w")
        warning = await client.expect("warning")
        assert (warning["code"], warning["id"]) == (protocol.INSTRUCT_IGNORED, "w") and "0.6B" in warning["message"]
        cfg = (await client.expect("session.updated"))["config"]
        assert cfg["voice"] == "dylan" and cfg["instruct"] is None


async def test_session_speaks_with_a_designed_voice(tiny_checkpoint: Callable[..., Path],
                                                    tiny_model: Callable[..., Any], tmp_path: Path) -> None:
    from tts_engine import Engine, EngineSettings, load_model

    VoiceRegistry(tmp_path).add_designed("narrator", "A calm, low voice, speaking slowly.", "english")
    engine = Engine(load_model(tiny_checkpoint("voice_design"), device="cpu"), EngineSettings(max_streams=2))
    srv = ServerThread(engine, ServerSettings(port=0, voices_dir=tmp_path), name="tiny-vd")
    try:
        async with session_client(srv.ws_url) as (client, created):
            assert created["model_kind"] == "voice_design" and created["instruct"] is True
            assert created["voice_details"] == [{
                "name": "narrator", "kind": "designed", "language": "english", "languages": created["languages"],
                "instruct": True, "description": "A calm, low voice, speaking slowly.",
                "created": created["voice_details"][0]["created"]}]
            await client.send(type="session.update", voice="narrator", greedy=True)
            cfg = (await client.expect("session.updated"))["config"]
            assert (cfg["voice"], cfg["language"], cfg["instruct"]) == ("narrator", "english", None)
            done = await client.speak("Good evening.", timeout=60)
            assert done["type"] == "utterance.done" and done["frames"] == len(client.frames) > 0
            served = b"".join(client.frames)
    finally:
        srv.stop()
        engine.close()
    with Engine(tiny_model("voice_design")) as local:
        stream = local.open_stream(language="english", instruct="A calm, low voice, speaking slowly.", greedy=True)
        stream.push_text("Good evening.")
        stream.finish()
        assert served == b"".join(f.pcm.tobytes() for f in stream)
