"""agent/rtc.py: the receive jitter buffer, the outbound track on its own, and real aiortc peers on 127.0.0.1.

Timing bounds here are generous (the machine is shared); bench/bargein.py measures the real numbers.
"""

from __future__ import annotations

import asyncio
import time
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
from aiortc import RTCConfiguration, RTCPeerConnection
from aiortc.jitterbuffer import JitterBuffer
from aiortc.mediastreams import MediaStreamError
from aiortc.rtp import RtpPacket

from agent.media.aiortc_patches import LowLatencyAudioBuffer, use_host_addresses
from agent.media.audio import read_wav
from agent.media.rtc import RTP_FRAME_SAMPLES, OutboundAudio, RtcPeer, RtcSettings
from agent.media.vad import SPEECH_STARTED, SPEECH_STOPPED, VadSettings
from bench.rtc_client import RtcClient

SPEECH_48K = Path(__file__).resolve().parents[1] / "fixtures" / "speech" / "speech_48k.wav"
LOOPBACK = RtcSettings(host_addresses=["127.0.0.1"])


# ------------------------------------------------------------------------------------ receive jitter buffer

def packet(seq: int) -> RtpPacket:
    p = RtpPacket(sequence_number=seq & 0xFFFF, timestamp=(seq * 960) & 0xFFFFFFFF)
    p._data = seq.to_bytes(4, "big", signed=True)  # type: ignore[attr-defined]
    return p


def lags(buffer: JitterBuffer, seqs: list[int]) -> list[int]:
    """For each packet added: how many packets behind the newest arrival the released frame is (-1: none)."""
    out, newest = [], None
    for seq in seqs:
        newest = seq if newest is None else max(newest, seq)
        _, frame = buffer.add(packet(seq))
        out.append(-1 if frame is None else newest - int.from_bytes(frame.data, "big", signed=True))
    return out


def test_buffer_releases_in_order_packets_at_once() -> None:
    assert lags(LowLatencyAudioBuffer(), list(range(50))) == [0] * 50
    # aiortc's own audio buffer (prefetch 4) holds 4 packets
    assert lags(JitterBuffer(capacity=16, prefetch=4), list(range(50)))[10:] == [4] * 40


def test_one_lost_packet_costs_at_most_one_packet_of_latency() -> None:
    seqs = [s for s in range(100) if s != 10]
    lag = lags(LowLatencyAudioBuffer(), seqs)
    assert lag[:10] == [0] * 10
    assert lag[10] == -1  # 11 arrived: wait for 10 (reordering?)
    assert max(lag[11:]) <= 1  # 12 arrived: 10 is given up on; backlog of one from then on
    # aiortc's buffer stays 14 packets behind after one loss, prefetch 4 or 1: why we replace it
    for prefetch in (4, 1):
        assert lags(JitterBuffer(capacity=16, prefetch=prefetch), seqs)[-1] == 14


def test_reordered_packet_is_kept() -> None:
    seqs = [0, 1, 2, 4, 3, 5, 6, 7]
    buffer = LowLatencyAudioBuffer()
    released = []
    for seq in seqs:
        _, frame = buffer.add(packet(seq))
        if frame is not None:
            released.append(int.from_bytes(frame.data, "big", signed=True))
    assert released == [0, 1, 2, 3, 4, 5, 6]  # 7 is the backlog of one
    assert buffer.lost == 0 and buffer.dropped == 0


@pytest.mark.parametrize("seed", range(5))
def test_random_loss_and_reordering_keep_order_and_bound_latency(seed: int) -> None:
    rng = np.random.default_rng(seed)
    seqs = [s for s in range(65500, 65536 + 400) if rng.random() > 0.05]  # 5 % loss, across the wrap
    for i in range(len(seqs) - 1):  # swap neighbours now and then
        if rng.random() < 0.05:
            seqs[i], seqs[i + 1] = seqs[i + 1], seqs[i]
    buffer = LowLatencyAudioBuffer()
    released, lag_after_events = [], []
    newest = -1
    for seq in seqs:
        newest = max(newest, seq)
        _, frame = buffer.add(packet(seq))
        if frame is not None:
            value = int.from_bytes(frame.data, "big", signed=True)
            released.append(value)
            lag_after_events.append(newest - value)
    assert released == sorted(released) and len(set(released)) == len(released)
    # backlog (1) plus the reorder window (2) at most, in sequence numbers; aiortc's buffer: 14 after one loss
    assert max(lag_after_events) <= 3
    assert len(released) > 0.85 * len(seqs)


def test_burst_loss_and_sender_restart() -> None:
    buffer = LowLatencyAudioBuffer()
    assert lags(buffer, [0, 1, 2, 40, 41, 42]) == [0, 0, 0, 0, 0, 0]  # 37 lost: start over at 40
    assert lags(buffer, [41, 5000, 5001]) == [-1, 0, 0]  # duplicate ignored; a far jump restarts


# ---------------------------------------------------------------------------------------- OutboundAudio

def tone24k(frames: int, freq: float = 440.0, level: int = 8000) -> np.ndarray:
    t = np.arange(frames * 1920) / 24000
    return (np.sin(2 * np.pi * freq * t) * level).astype(np.int16)


async def recv_n(track: OutboundAudio, n: int) -> tuple[list[av.AudioFrame], list[float]]:
    frames, times = [], []
    for _ in range(n):
        frames.append(await track.recv())
        times.append(time.monotonic())
    return frames, times


def pcm(frames: list[av.AudioFrame]) -> np.ndarray:
    return np.concatenate([f.to_ndarray().reshape(-1) for f in frames])


async def test_frames_are_20ms_48k_s16_mono_with_sample_pts() -> None:
    track = OutboundAudio()
    frames, _ = await recv_n(track, 5)
    for i, frame in enumerate(frames):
        assert (frame.samples, frame.sample_rate, frame.format.name, frame.layout.name) == (960, 48000, "s16", "mono")
        assert frame.pts == i * RTP_FRAME_SAMPLES and frame.time_base == Fraction(1, 48000)
    assert not pcm(frames).any()  # idle = silence, never a pause
    track.stop()
    with pytest.raises(MediaStreamError):
        await track.recv()


async def test_audio_is_resampled_once_and_accounted_exactly() -> None:
    track = OutboundAudio()
    sent: dict[str, float] = {}
    track.on_sent = lambda utterance, ms: sent.__setitem__(utterance, sent.get(utterance, 0.0) + ms)
    audio = tone24k(10)
    for i in range(10):
        track.enqueue(audio[i * 1920:(i + 1) * 1920], "u1")
    assert track.queued_ms() == pytest.approx(800 - 32 / 48)  # the resampler holds 32 samples
    track.enqueue(tone24k(2, 880.0), "u2")
    frames, _ = await recv_n(track, 50)
    out = pcm(frames)
    assert sent == pytest.approx({"u1": 800.0, "u2": 160.0})  # every sample of each utterance, once
    # one persistent resampler: identical to resampling the whole utterance in one go
    reference = av.AudioResampler(format="s16", layout="mono", rate=48000)
    whole = av.AudioFrame.from_ndarray(audio.reshape(1, -1), format="s16", layout="mono")
    whole.sample_rate = 24000
    ref = np.concatenate([f.to_ndarray().reshape(-1) for f in reference.resample(whole) + reference.resample(None)])
    assert np.abs(out[:len(ref)].astype(int) - ref.astype(int)).max() <= 1
    loud = np.flatnonzero(np.abs(out) > 100)
    assert loud[0] < 10 and 2 * 12 * 1920 - 200 < loud[-1] < 2 * 12 * 1920 + 50  # no gaps, then silence
    assert track.stats.audio_frames == 48 and track.stats.underruns == 0
    assert track.queued_ms() == 0


async def test_paced_on_an_absolute_clock_from_the_first_recv() -> None:
    track = OutboundAudio()
    await asyncio.sleep(0.2)  # created early: must not burst on its first recv()s
    _, times = await recv_n(track, 10)
    assert times[-1] - times[0] >= 9 * 0.020 - 0.002  # paced from the first recv() (a burst would be ~0)
    time.sleep(0.1)  # the loop stalls for 5 frames: catch up, then back on the original schedule
    stalled = time.monotonic()
    _, later = await recv_n(track, 15)
    assert later[4] - stalled < 0.050  # the 5 late frames went out at once
    t0 = times[0]
    assert 24 * 0.020 - 0.002 <= later[-1] - t0 < 24 * 0.020 + 0.060  # original schedule: no drift (+0.1 s)
    assert track.stats.resyncs == 0


async def test_long_stall_resyncs_instead_of_bursting() -> None:
    track = OutboundAudio(resync_after_ms=200)
    await recv_n(track, 2)
    time.sleep(0.3)
    resumed = time.monotonic()
    _, times = await recv_n(track, 6)
    assert track.stats.resyncs == 1
    assert times[-1] - resumed >= 5 * 0.020 - 0.002  # resumed at 20 ms steps right away (no 15-frame burst)


async def test_flush_fades_and_drops_the_rest() -> None:
    track = OutboundAudio()
    sent: list[float] = []
    track.on_sent = lambda utterance, ms: sent.append(ms)
    for chunk in np.split(tone24k(10, level=20000), 10):
        track.enqueue(chunk, "u1")
    await recv_n(track, 5)  # 100 ms out
    queued = track.queued_ms()
    dropped = track.flush(fade_ms=10.0)
    assert dropped == pytest.approx(queued - 10.0)
    after, _ = await recv_n(track, 3)
    tail = pcm(after)
    assert np.abs(tail[:480]).max() > 1000  # the fade: the next 10 ms, ramping down
    assert np.abs(tail[440:480]).max() < 0.1 * 20000
    assert not tail[480:].any()  # then silence
    assert sum(sent) == pytest.approx(110.0)  # 100 ms + the 10 ms fade left recv()
    assert track.queued_ms() == 0
    track.enqueue(tone24k(1), "u2")  # a fresh utterance plays normally after a flush
    again, _ = await recv_n(track, 5)
    assert np.abs(pcm(again)).max() > 1000


async def test_enqueue_rejects_bad_pcm() -> None:
    track = OutboundAudio()
    with pytest.raises(TypeError):
        track.enqueue(np.zeros(1920, np.float32), "u")  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        track.enqueue(np.zeros((2, 960), np.int16), "u")


# -------------------------------------------------------------------------------- real peers on loopback

async def connect(peer: RtcPeer, client: RtcClient) -> None:
    await client.accept(await peer.answer(await client.offer()))
    await client.connected(timeout=10.0)


async def test_answer_is_complete_and_loopback_only() -> None:
    peer = RtcPeer(LOOPBACK, VadSettings(), lambda e, t, onset_t: None)
    client = RtcClient()
    try:
        answer = await peer.answer(await client.offer())
        candidates = [line for line in answer.splitlines() if line.startswith("a=candidate")]
        assert candidates and all(" 127.0.0.1 " in c and "typ host" in c for c in candidates)
        assert "a=end-of-candidates" in answer  # gathered before returning: no trickle needed
        assert "a=sendrecv" in answer
        assert peer.receive_buffer == "low_latency"
        receivers = [t.receiver for t in peer._pc.getTransceivers()]  # type: ignore[union-attr]
        assert all(isinstance(r._RTCRtpReceiver__jitter_buffer, LowLatencyAudioBuffer) for r in receivers)
        with pytest.raises(RuntimeError):
            await peer.answer(answer)
    finally:
        await client.close()
        await peer.close()


async def test_default_settings_offer_loopback_and_no_stun() -> None:
    settings = RtcSettings()
    assert settings.ice_servers == [] and settings.rtc_ice_servers() == []
    peer = RtcPeer(settings, VadSettings(), lambda e, t, onset_t: None)
    client = RtcClient()
    try:
        started = time.monotonic()
        answer = await peer.answer(await client.offer())
        assert time.monotonic() - started < 2.0  # no STUN round trip (aiortc's default waits up to 5 s)
        assert any(" 127.0.0.1 " in line for line in answer.splitlines() if line.startswith("a=candidate"))
    finally:
        await client.close()
        await peer.close()
    with pytest.raises(ValueError):
        RtcSettings(ice_servers=[{"username": "x"}])
    servers = RtcSettings(ice_servers=[{"url": "stun:stun.example:3478"}]).rtc_ice_servers()
    assert servers[0].urls == "stun:stun.example:3478"


async def test_host_address_choice_is_scoped_to_our_peers() -> None:
    """Gathering outside use_host_addresses() keeps aioice's behaviour (never 127.0.0.1)."""
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    pc.addTransceiver("audio")
    await pc.setLocalDescription(await pc.createOffer())
    assert " 127.0.0.1 " not in pc.localDescription.sdp
    await pc.close()
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    pc.addTransceiver("audio")
    with use_host_addresses(["127.0.0.1"]):
        await pc.setLocalDescription(await pc.createOffer())
    candidates = [line for line in pc.localDescription.sdp.splitlines() if line.startswith("a=candidate")]
    assert len(candidates) == 1 and " 127.0.0.1 " in candidates[0]
    await pc.close()
    peer = RtcPeer(RtcSettings(receive_buffer="aiortc", host_addresses=["127.0.0.1"]), VadSettings(),
                   lambda e, t, onset_t: None)
    client = RtcClient()
    await peer.answer(await client.offer())
    assert peer.receive_buffer == "aiortc"
    receiver = peer._pc.getTransceivers()[0].receiver  # type: ignore[union-attr]
    assert not isinstance(receiver._RTCRtpReceiver__jitter_buffer, LowLatencyAudioBuffer)
    await client.close()
    await peer.close()


async def test_bad_offers_are_refused() -> None:
    peer = RtcPeer(LOOPBACK, VadSettings(), lambda e, t, onset_t: None)
    with pytest.raises(ValueError):
        await peer.answer("v=0 this is not sdp")
    await peer.close()
    pc = RTCPeerConnection()
    pc.createDataChannel("x")
    await pc.setLocalDescription(await pc.createOffer())
    peer = RtcPeer(LOOPBACK, VadSettings(), lambda e, t, onset_t: None)
    with pytest.raises(ValueError, match="no audio"):
        await peer.answer(pc.localDescription.sdp)
    await peer.close()
    await pc.close()


async def test_client_receives_paced_frames_and_speech_after_silence() -> None:
    peer = RtcPeer(LOOPBACK, VadSettings(), lambda e, t, onset_t: None)
    client = RtcClient(mic=False)
    try:
        await connect(peer, client)
        await asyncio.sleep(0.6)
        silent = client.frames_after(0.0)
        assert all(r.peak == 0 for r in silent)  # idle: silence keeps flowing
        enqueued = time.monotonic()
        for chunk in np.split(tone24k(10, level=12000), 10):
            peer.outbound.enqueue(chunk, "u1")
        await asyncio.sleep(1.2)
        after = client.frames_after(enqueued)
        loud = [r for r in after if r.peak > 1000]
        assert 35 <= len(loud) <= 42  # 800 ms of tone = 40 frames (edges may be quieter)
        assert loud[0].t - enqueued < 0.25
        assert loud[-1].t < after[-1].t  # silence again afterwards
        arrivals = np.array([r.t for r in client.received])
        assert 0.017 < float(np.median(np.diff(arrivals))) < 0.023  # 20 ms cadence
        # no bursts: 3 frames per 60 ms nominal; a loaded loop may catch up a few frames late, but queued
        # audio must never leave faster than real time (unpaced, the 800 ms of tone would arrive at once)
        per_60ms = np.searchsorted(arrivals, arrivals + 0.060) - np.arange(len(arrivals))
        assert per_60ms.max() <= 8
        assert arrivals[-1] - arrivals[0] == pytest.approx((len(arrivals) - 1) * 0.020, abs=0.1)
        assert {r.samples for r in client.received} == {960} and all(
            b.pts - a.pts == 960 for a, b in zip(client.received, client.received[1:], strict=False))
    finally:
        await client.close()
        await peer.close()


async def test_flush_turns_the_received_audio_silent_quickly() -> None:
    peer = RtcPeer(LOOPBACK, VadSettings(), lambda e, t, onset_t: None)
    client = RtcClient(mic=False)
    try:
        await connect(peer, client)
        for chunk in np.split(tone24k(40, level=12000), 40):  # 3.2 s queued
            peer.outbound.enqueue(chunk, "u1")
        await asyncio.sleep(0.5)
        assert client.last_loud_t() is not None
        flushed = time.monotonic()
        dropped = peer.outbound.flush()
        assert dropped > 2000
        await asyncio.sleep(0.5)
        last = client.last_loud_t()
        assert last is not None and last - flushed < 0.15
        assert all(r.peak == 0 for r in client.frames_after(flushed + 0.15))
    finally:
        await client.close()
        await peer.close()


async def speak_and_collect(clip: np.ndarray, vad: VadSettings, settle: float = 1.0) -> tuple[list, float]:
    events: list[tuple[str, float]] = []
    peer = RtcPeer(LOOPBACK, vad, lambda e, t, onset_t: events.append((e, t)))
    client = RtcClient()
    try:
        await connect(peer, client)
        await asyncio.sleep(0.5)  # some silence first
        client.speak(clip, "clip")
        await asyncio.sleep(len(clip) / 48000 + settle)
        return events, client.mic_onsets.get("clip", float("nan"))
    finally:
        await client.close()
        await peer.close()


async def test_mic_speech_fires_started_then_stopped() -> None:
    speech, rate = read_wav(SPEECH_48K)
    assert rate == 48000
    vad = VadSettings()
    events, onset = await speak_and_collect(speech, vad)
    assert [e for e, _ in events] == [SPEECH_STARTED, SPEECH_STOPPED]
    started, stopped = events[0][1], events[1][1]
    assert vad.min_speech_ms / 1000 <= started - onset < 0.5
    assert stopped - onset > len(speech) / 48000 + vad.hangover_ms / 1000 - 0.1


@pytest.mark.parametrize("freq", [440.0, 1000.0])
async def test_mic_tone_and_silence_do_not_fire(freq: float) -> None:
    t = np.arange(48000) / 48000
    clip = (np.sin(2 * np.pi * freq * t) * 8000).astype(np.int16)
    events, _ = await speak_and_collect(clip, VadSettings(), settle=0.3)
    assert events == []


async def test_close_cancels_everything() -> None:
    peer = RtcPeer(LOOPBACK, VadSettings(), lambda e, t, onset_t: None)
    await peer.close()  # before answer: fine
    assert peer.connection_state == "closed"
    peer = RtcPeer(LOOPBACK, VadSettings(), lambda e, t, onset_t: None)
    client = RtcClient()
    await connect(peer, client)
    assert peer.connection_state == "connected"
    tasks = set(peer._tasks)
    assert tasks  # the mic reader
    await peer.close()
    await peer.close()
    assert all(task.done() for task in tasks) and not peer._tasks
    assert peer.outbound.readyState == "ended" and peer.connection_state == "closed"
    with pytest.raises(RuntimeError):
        await peer.answer("v=0")
    await client.close()


async def test_on_speech_gets_the_onset_estimate() -> None:
    got: list[tuple[str, float, float | None]] = []

    def on_speech(event: str, t: float, onset_t: float | None = None) -> None:
        got.append((event, t, onset_t))

    speech, _ = read_wav(SPEECH_48K)
    peer = RtcPeer(LOOPBACK, VadSettings(), on_speech)
    client = RtcClient()
    try:
        await connect(peer, client)
        await asyncio.sleep(0.3)
        client.speak(speech, "clip")
        await asyncio.sleep(len(speech) / 48000 + 0.5)
    finally:
        await client.close()
        await peer.close()
    assert [e for e, _, _ in got] == [SPEECH_STARTED, SPEECH_STOPPED]
    _, t, onset_t = got[0]
    assert onset_t is not None and t - onset_t == pytest.approx(0.120, abs=0.05)  # min_speech_ms of speech
    assert got[1][2] is None
    assert onset_t > client.mic_onsets["clip"]  # onset as the server saw it
    assert [e for e, _, _ in peer.mic_stats.events] == [SPEECH_STARTED, SPEECH_STOPPED]


def test_set_vad_keeps_the_speaking_state() -> None:
    peer = RtcPeer(LOOPBACK, VadSettings(), lambda e, t, onset_t: None)
    peer.vad.speaking, peer.vad.onset_t = True, 1.0
    before = peer.vad
    peer.set_vad(VadSettings())  # unchanged: same detector
    assert peer.vad is before
    peer.set_vad(VadSettings(aggressiveness=2, min_speech_ms=200, sample_rate=48000))
    assert peer.vad is not before and peer.vad.settings.min_speech_ms == 200
    assert peer.vad.speaking and peer.vad.onset_t == 1.0
