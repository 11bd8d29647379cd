"""A session with WebRTC audio: an aiortc client on loopback offers over the WebSocket, hears the speech,
and barges in by playing an espeak-ng speech recording into its mic track."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import numpy as np

from agent.media.audio import read_wav
from bench.rtc_client import RtcClient

from .conftest import Client, ServerThread, session_client

SPEECH_48K = Path(__file__).resolve().parents[1] / "fixtures" / "speech" / "speech_48k.wav"
LONG_TEXT = ("This reply goes on for quite a while, sentence after sentence, so that the listener has "
             "every chance to interrupt it before it reaches the end of what it meant to say. ")
LOUD = 64  # the tiny model's noise-like speech peaks far above this; silence is 0


async def connect_rtc(client: Client, **update: Any) -> RtcClient:
    rtc = RtcClient()
    await client.send(type="session.update", audio="webrtc", **update)
    await client.expect("session.updated")
    await client.send(type="webrtc.offer", sdp=await rtc.offer(), id="offer-1")
    answer = await client.expect("webrtc.answer")
    assert answer["id"] == "offer-1" and "a=candidate" in answer["sdp"]
    await rtc.accept(answer["sdp"])
    await rtc.connected(timeout=10)
    return rtc


async def test_webrtc_speech_then_barge_in_turns_the_audio_silent(server: ServerThread) -> None:
    speech, rate = read_wav(SPEECH_48K)
    assert rate == 48000
    async with session_client(server.ws_url) as (client, _):
        rtc = await connect_rtc(client, vad={"min_speech_ms": 60})
        try:
            await asyncio.sleep(0.3)
            assert all(r.peak == 0 for r in rtc.received)  # idle: silence flows, no speech yet
            sent_text = time.monotonic()
            await client.send(type="text.append", text=LONG_TEXT)
            await client.send(type="text.flush")
            first = await client.expect("audio.first")
            while not any(r.peak > LOUD for r in rtc.frames_after(sent_text)):
                await asyncio.sleep(0.02)
            assert client.frames == []  # WebRTC mode: no PCM over the WebSocket
            # cadence: 20 ms frames, no bursts
            times = [r.t for r in rtc.received]
            intervals = np.diff(times)
            assert 0.015 < float(np.median(intervals)) < 0.025
            assert {r.samples for r in rtc.received} == {960}
            await asyncio.sleep(0.3)
            rtc.speak(speech, "user")
            started = await client.expect("user.speech_started", timeout=10)
            interrupted_at = time.monotonic()
            evt = await client.expect("utterance.interrupted")
            assert started["interrupted"] == [first["utterance"]] and started["ignored"] is False
            assert evt["utterance"] == first["utterance"] and evt["reason"] == "barge_in"
            assert evt["text_fed"] == LONG_TEXT and evt["played_ms"] > 0
            assert evt["spoken_text"] + evt["unspoken_text"] == LONG_TEXT
            assert evt["awaiting_flush"] is False  # it had been flushed
            await asyncio.sleep(0.6)
            last_loud = rtc.last_loud_t(LOUD)
            # audio sent before the barge-in still arrives (a few frames); nothing after (bench/bargein.py
            # measures the real stop latency; the bound here only tolerates a busy test machine)
            assert last_loud is not None and last_loud - interrupted_at < 0.3
            assert all(r.peak <= LOUD for r in rtc.frames_after(interrupted_at + 0.3))
            onset = rtc.mic_onsets["user"]
            assert onset < interrupted_at
            metrics = server.server.metrics  # type: ignore[union-attr]
            assert server.call(lambda: metrics.bargein.count) >= 1
        finally:
            await rtc.close()


async def test_barge_in_while_text_still_streams_drops_the_rest_until_flush(server: ServerThread) -> None:
    speech, _ = read_wav(SPEECH_48K)
    async with session_client(server.ws_url) as (client, _):
        rtc = await connect_rtc(client)
        try:
            await client.send(type="text.append", text=LONG_TEXT)  # no flush: the LLM is still talking
            await client.expect("audio.first")
            await asyncio.sleep(0.2)
            rtc.speak(speech, "user")
            evt = await client.expect("utterance.interrupted", timeout=10)
            assert evt["reason"] == "barge_in" and evt["awaiting_flush"] is True
            await client.send(type="text.append", text="the rest of the interrupted reply ")
            await client.send(type="text.flush")
            assert [m for m in await client.quiet_for(0.5) if isinstance(m, str) and "utterance.started" in m] == []
            done = await client.speak("A new reply. ")  # after the flush, text starts a new utterance
            assert done["type"] == "utterance.done" and done["text_fed"] == "A new reply. "
        finally:
            await rtc.close()


async def test_echo_guard_ignores_speech_right_after_playback_starts(server: ServerThread) -> None:
    speech, _ = read_wav(SPEECH_48K)
    async with session_client(server.ws_url) as (client, _):
        rtc = await connect_rtc(client, echo_guard_ms=30000)
        try:
            await client.send(type="text.append", text=LONG_TEXT)
            await client.send(type="text.flush")
            await client.expect("audio.first")
            rtc.speak(speech, "echo")
            started = await client.expect("user.speech_started", timeout=10)
            assert started["ignored"] is True and started["interrupted"] == []
            done = await client.expect("utterance.done", "utterance.interrupted", timeout=40)
            assert done["type"] == "utterance.done"
        finally:
            await rtc.close()
