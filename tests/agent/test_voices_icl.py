"""ICL voices end to end (reference codes + transcript in the prompt): saved by the registry, spoken by a
server session and by the engine."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from agent.voices.store import VoiceRegistry

from .conftest import ServerThread, serve_checkpoint, session_client
from .voice_helpers import espeak_wav, sox

TRANSCRIPT = "This is a short reference recording for a cloned voice, made by a speech synthesizer."


@pytest.fixture(scope="module")
def icl_voices(tiny_model: Callable[..., Any], tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("icl")
    ref = sox(espeak_wav(d / "espeak.wav", TRANSCRIPT), d / "ref44.wav", "-r", "44100", "-c", "2")
    voices = d / "voices"
    reg = VoiceRegistry(voices)
    reg.add_cloned("bob", tiny_model("base"), ref, text=TRANSCRIPT, language="english")
    reg.add_cloned("bob-x", tiny_model("base"), ref, mode="xvector", language="english")
    return voices


def test_icl_prompt_synthesizes_and_differs_from_xvector(tiny_model: Callable[..., Any], icl_voices: Path) -> None:
    base = tiny_model("base")
    reg = VoiceRegistry(icl_voices)
    icl, xv = reg.load_prompt("bob"), reg.load_prompt("bob-x")
    assert icl.icl and not xv.icl and torch.equal(icl.xvector, xv.xvector)
    a = base.synthesize("Good morning.", voice_prompt=icl, language="english", greedy=True)
    b = base.synthesize("Good morning.", voice_prompt=xv, language="english", greedy=True)
    assert a.codes.shape[0] > 0 and not torch.equal(a.codes, b.codes)


@pytest.fixture(scope="module")
def icl_server(tiny_checkpoint: Callable[..., Path], icl_voices: Path) -> Iterator[ServerThread]:
    with serve_checkpoint(tiny_checkpoint("base"), "tiny-base", voices_dir=icl_voices) as srv:
        yield srv


async def test_session_with_an_icl_voice(icl_server: ServerThread, tiny_model: Callable[..., Any],
                                         icl_voices: Path) -> None:
    from tts_engine import Engine

    text = "Good morning, nice to meet you."
    async with session_client(icl_server.ws_url) as (client, created):
        modes = {v["name"]: v["mode"] for v in created["voice_details"]}
        assert modes == {"bob": "icl", "bob-x": "xvector"}
        await client.send(type="session.update", voice="bob", greedy=True)
        assert (await client.expect("session.updated"))["config"]["voice"] == "bob"
        for word in text.split(" "):
            await client.send(type="text.append", text=word + " ")
        await client.send(type="text.flush")
        done = await client.expect("utterance.done", timeout=90)
        assert done["frames"] == len(client.frames) > 0
        served = b"".join(client.frames)

    base = tiny_model("base")
    prompt = VoiceRegistry(icl_voices).load_prompt("bob")
    with Engine(base) as engine:
        stream = engine.open_stream(language="english", voice_prompt=prompt, greedy=True)
        for word in text.split(" "):
            stream.push_text(word + " ")
        stream.finish()
        frames = list(stream)
    want = base.synthesize(text + " ", voice_prompt=prompt, language="english", greedy=True)
    assert np.array_equal(np.stack([f.codes for f in frames]), want.codes.numpy())
    assert served == b"".join(f.pcm.tobytes() for f in frames)
