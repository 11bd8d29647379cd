"""Wyoming with saved voices (issue 6 catalogue): a VoiceDesign checkpoint whose voices live in a voices dir."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
from wyoming.info import Describe, Info
from wyoming.tts import Synthesize, SynthesizeVoice

from agent.voices.store import VoiceRegistry
from agent.wyoming.handler import WyomingService, WyomingSettings

from .test_wyoming import client, pcm_of, read, read_until, wait_engine_idle


async def test_designed_voices_are_listed_spoken_and_picked_up_while_serving(
        tiny_checkpoint: Callable[..., Path], tmp_path: Path) -> None:
    from tts_engine import Engine, load_model

    registry = VoiceRegistry(tmp_path)
    registry.add_designed("narrator", "A calm, low voice, speaking slowly.", "english")
    engine = Engine(load_model(tiny_checkpoint("voice_design"), device="cpu"))
    svc = WyomingService(engine, WyomingSettings(uri="tcp://127.0.0.1:0", voices_dir=tmp_path), model_name="vd")
    await svc.start()
    try:
        async with client(svc) as c:
            await c.write_event(Describe().event())
            assert [v.name for v in Info.from_event(await read(c)).tts[0].voices] == ["narrator"]
            await c.write_event(Synthesize(text="Hi there.", voice=SynthesizeVoice(name="narrator")).event())
            got = pcm_of(await read_until(c, "audio-stop"))

            registry.add_designed("Sam", "A bright, quick voice.", "english")  # while serving
            await c.write_event(Describe().event())
            assert [v.name for v in Info.from_event(await read(c)).tts[0].voices] == ["narrator", "Sam"]
            await c.write_event(Synthesize(text="Hi there.", voice=SynthesizeVoice(name="sam")).event())
            other = pcm_of(await read_until(c, "audio-stop"))

        def direct(instruct: str) -> np.ndarray:
            stream = engine.open_stream(None, "english", instruct)  # the saved voices' language
            stream.push_text("Hi there.")
            stream.finish()
            frames, _ = stream.collect()
            return np.concatenate([f.pcm for f in frames])

        assert np.array_equal(got, direct("A calm, low voice, speaking slowly."))  # the saved description
        assert np.array_equal(other, direct("A bright, quick voice."))
    finally:
        await svc.stop()
        await wait_engine_idle(engine)
        engine.close()
