"""Barge-in end to end: the real server (tiny model), a WebSocket session, an aiortc client on 127.0.0.1
whose mic track plays the committed espeak-ng WAV while the agent speaks.

Bounds are generous; bench/bargein.py measures the real latencies.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import numpy as np
import pytest

from agent.media.audio import read_wav
from agent.media.rtc import RtcSettings
from agent.media.vad import SPEECH_STARTED, VadSettings
from agent.server.app import Server
from agent.settings import ServerSettings
from bench.bargein import barge_in_trial
from tts_engine import Engine, EngineSettings

SPEECH_48K = Path(__file__).resolve().parents[1] / "fixtures" / "speech" / "speech_48k.wav"


@pytest.fixture(scope="module")
def engine(tiny_model: Callable[..., object]) -> Iterator[Engine]:
    with Engine(tiny_model("custom_voice"), EngineSettings(max_streams=2)) as eng:  # type: ignore[arg-type]
        yield eng


@pytest.fixture
async def server(engine: Engine) -> AsyncIterator[Server]:
    srv = Server(engine, ServerSettings(port=0), model_name="tiny",
                 rtc_settings=RtcSettings(host_addresses=["127.0.0.1"]), vad_defaults=VadSettings())
    await srv.start()
    try:
        yield srv
    finally:
        await srv.shutdown()


async def test_mic_speech_interrupts_playback(server: Server) -> None:
    speech, rate = read_wav(SPEECH_48K)
    assert rate == 48000
    trial = await barge_in_trial(server, speech, speak_after=0.4, settle=0.6)

    # speech frames arrived after the text, then the mic's speech interrupted them
    assert np.isfinite(trial.first_loud) and trial.first_loud < trial.onset
    assert trial.interrupted is not None
    assert trial.interrupted["reason"] == "barge_in"
    # played_ms counts what left the server: some audio, and no more than the time it had been playing
    # (the tiny model on a busy CPU can be slower than real time, so not necessarily all of that time)
    assert 80 <= trial.interrupted["played_ms"] <= (trial.decision - trial.first_loud) * 1000 + 100
    fed = trial.interrupted["text_fed"]
    assert fed and trial.interrupted["spoken_text"] + trial.interrupted["unspoken_text"] == fed
    assert trial.interrupted["unspoken_text"]  # the rest of the long reply was not spoken
    assert "user.speech_started" in trial.events
    assert trial.events.index("user.speech_started") > trial.events.index("utterance.started")

    # the decision follows the onset (min_speech_ms of speech) and the audio turns silent right after it
    assert VadSettings().min_speech_ms / 1000 <= trial.decision - trial.onset < 1.0
    assert trial.interrupted_received - trial.decision < 0.2
    assert trial.last_loud - trial.decision < 0.2
    assert trial.silent_after
    assert trial.onset_at_server - trial.onset < 0.2  # low-latency receive buffer on the server's mic path


async def test_no_barge_in_without_playback(server: Server) -> None:
    """Mic speech while nothing plays: user.speech_started is reported, nothing is interrupted."""
    import json

    import websockets

    from bench.rtc_client import RtcClient

    speech, _ = read_wav(SPEECH_48K)
    client = RtcClient()
    async with websockets.connect(f"ws://127.0.0.1:{server.port}/v1/session") as ws:
        created = json.loads(await ws.recv())
        assert created["type"] == "session.created"
        await ws.send(json.dumps({"type": "session.update", "audio": "webrtc"}))
        await ws.send(json.dumps({"type": "webrtc.offer", "sdp": await client.offer()}))
        while (msg := json.loads(await ws.recv()))["type"] != "webrtc.answer":
            assert msg["type"] != "error", msg
        await client.accept(msg["sdp"])
        await client.connected()
        client.speak(speech, "speech")
        while (msg := json.loads(await ws.recv()))["type"] != "user.speech_started":
            assert msg["type"] not in ("error", "utterance.interrupted"), msg
        assert msg["interrupted"] == []
        peer = server.sessions[created["session"]].peer
        assert [e for e, _, _ in peer.mic_stats.events] == [SPEECH_STARTED]
        await client.close()
