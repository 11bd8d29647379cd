"""Voice activity detection for barge-in: the mic's audio in the VAD's format (`MicConverter`), then webrtcvad
per frame plus a small start/stop state machine.

Pure and synchronous: `VoiceActivityDetector.process` is called on the event loop for every mic frame
(20 ms), costs a few microseconds, and returns the events it decided on. No I/O, no tasks, no clock reads:
the caller passes the time the audio arrived.

Per frame (`frame_ms` of s16 mono at `sample_rate`):
  speech = webrtcvad.is_speech(frame) and rms >= min_rms_dbfs and tonality <= max_tonality
- webrtcvad flags the first 4 frames a fresh detector sees, and ~4 frames after any short loud sound (its
  overhang): hence the default min_speech_ms of 120 ms (6 frames); the energy gate removes the overhang
  after a knock in a quiet room.
- Limits of webrtcvad (measured, tests/agent/test_vad.py): loud broadband noise (about -25 dBFS and up) is
  speech throughout, and a steady noise that *starts* mid-stream (a fan switched on after quiet) stays
  "speech" until it stops, because webrtcvad adapts its noise model only on frames it calls non-speech.
  A noise floor present from the start (any real mic) is learned and not speech.
- webrtcvad calls a steady tone (e.g. 1 kHz) speech forever and flags the first ~4 frames of almost any
  onset (its noise model starts empty); the energy gate drops near-silence, and the tonality gate (the
  share of the frame's power in the strongest 5 FFT bins; 0.9999 for a pure tone, <= 0.92 on espeak
  speech) drops pure tones. Both gates are cheap and only run on frames webrtcvad already calls speech.
State machine:
- quiet -> speaking after `min_speech_ms` of consecutive speech frames: ("speech_started", t), where t is
  the arrival time of the frame that completed the run. `onset_t` is then the estimated start of the run.
- speaking -> quiet after `hangover_ms` of consecutive non-speech frames: ("speech_stopped", t).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import av
import numpy as np
import webrtcvad

SPEECH_STARTED = "speech_started"
SPEECH_STOPPED = "speech_stopped"

# (frame, speech, t): every classified frame as int16 samples, its speech flag and the arrival time of its
# last sample; the session's voice in (turns, transcripts, raw turn audio) is fed from here
OnFrame = Callable[[np.ndarray, bool, float], None]


class MicConverter:
    """Any decoded av.AudioFrame (aiortc gives s16 stereo packed 48 kHz) -> int16 mono at `rate`.

    swresample holds a few samples back, so its first output is short (304 of 320 samples for 20 ms at
    48 -> 16 kHz). With `align` (the VAD frame size) that first output is left-padded with zeros to a whole
    number of VAD frames: every later 20 ms packet then fills exactly one VAD frame, instead of each VAD
    frame waiting ~19 ms for the next packet to complete it.
    """

    def __init__(self, rate: int, align: int = 0) -> None:
        self.rate = rate
        self.align = align
        self._resampler = av.AudioResampler(format="s16", layout="mono", rate=rate)
        self._started = False

    def convert(self, frame: av.AudioFrame) -> np.ndarray:
        out = self._resampler.resample(frame)
        if not out:
            return np.zeros(0, np.int16)
        parts = [f.to_ndarray().reshape(-1)[:f.samples] for f in out]
        pcm = parts[0] if len(parts) == 1 else np.concatenate(parts)
        if not self._started:
            self._started = True
            if self.align and len(pcm) % self.align:
                pcm = np.concatenate([np.zeros(self.align - len(pcm) % self.align, np.int16), pcm])
        return pcm

@dataclass(frozen=True)
class VadSettings:
    aggressiveness: int = 3  # webrtcvad mode 0-3; 2-3 gave 0 false positives on silence (notes §2)
    # Consecutive speech before "speech_started". webrtcvad calls the first 4-5 frames (80-100 ms) of almost
    # any onset speech, steady noise at -30..-50 dBFS included; 120 ms (6 frames) rides over that.
    min_speech_ms: int = 120
    hangover_ms: int = 300  # consecutive non-speech before "speech_stopped"
    frame_ms: int = 20  # 10, 20 or 30 (webrtcvad's frame sizes)
    sample_rate: int = 16000  # 8000, 16000, 32000 or 48000 (webrtcvad's rates)
    min_rms_dbfs: float | None = -50.0  # frames quieter than this are not speech; None disables
    max_tonality: float | None = 0.97  # frames with more of their power in one spectral peak are not speech

    def __post_init__(self) -> None:
        if self.aggressiveness not in (0, 1, 2, 3):
            raise ValueError(f"aggressiveness must be 0-3, got {self.aggressiveness}")
        if self.frame_ms not in (10, 20, 30):
            raise ValueError(f"frame_ms must be 10, 20 or 30, got {self.frame_ms}")
        if self.sample_rate not in (8000, 16000, 32000, 48000):
            raise ValueError(f"sample_rate must be 8000, 16000, 32000 or 48000, got {self.sample_rate}")
        if self.min_speech_ms < 0 or self.hangover_ms < 0:
            raise ValueError("min_speech_ms and hangover_ms must be >= 0")

    @property
    def frame_samples(self) -> int:
        return self.sample_rate * self.frame_ms // 1000

    @property
    def start_frames(self) -> int:
        """Consecutive speech frames needed for "speech_started" (at least 1)."""
        return max(1, math.ceil(self.min_speech_ms / self.frame_ms))

    @property
    def stop_frames(self) -> int:
        """Consecutive non-speech frames needed for "speech_stopped" (at least 1)."""
        return max(1, math.ceil(self.hangover_ms / self.frame_ms))


class VoiceActivityDetector:
    """Feed any amount of s16 mono PCM at `settings.sample_rate`; get ("speech_started"|"speech_stopped", t)."""

    def __init__(self, settings: VadSettings | None = None) -> None:
        self.settings = settings or VadSettings()
        self._vad = webrtcvad.Vad(self.settings.aggressiveness)
        self._frame_bytes = self.settings.frame_samples * 2
        self._pending = bytearray()  # < one frame of samples carried to the next call
        self._window = np.hanning(self.settings.frame_samples).astype(np.float32)
        rms_floor = self.settings.min_rms_dbfs
        # mean square threshold in int16 units: (10^(dBFS/20) * 32768)^2
        self._min_ms = None if rms_floor is None else (10.0 ** (rms_floor / 20.0) * 32768.0) ** 2
        self.speaking = False
        self.onset_t: float | None = None  # estimated start of the current (or last) speech run
        self._run = 0  # consecutive frames agreeing with the pending state change
        self._run_start_t = 0.0

    def reset(self) -> None:
        """Forget buffered samples and state (webrtcvad's adaptive noise model is kept)."""
        self._pending.clear()
        self.speaking = False
        self.onset_t = None
        self._run = 0

    def is_speech(self, frame: bytes) -> bool:
        """Classify one frame of exactly `frame_samples` samples (the gates included)."""
        if not self._vad.is_speech(frame, self.settings.sample_rate):
            return False
        if self._min_ms is None and self.settings.max_tonality is None:
            return True
        x = np.frombuffer(frame, dtype="<i2").astype(np.float32)
        if self._min_ms is not None and float(np.dot(x, x)) / x.size < self._min_ms:
            return False
        if self.settings.max_tonality is not None:
            power = np.abs(np.fft.rfft(x * self._window)) ** 2
            peak = int(power.argmax())
            total = float(power.sum())
            if total > 0.0 and float(power[max(0, peak - 2):peak + 3].sum()) / total > self.settings.max_tonality:
                return False
        return True

    def process(self, pcm: bytes | bytearray | memoryview | np.ndarray, t: float,
                on_frame: OnFrame | None = None) -> list[tuple[str, float]]:
        """Add samples that arrived at time `t` (the arrival of their last sample); return decided events.

        `on_frame`, if given, gets each frame with its speech flag, in order, before the events are returned
        (so a turn the frames opened exists when "speech_started" is handled)."""
        if isinstance(pcm, np.ndarray):
            if pcm.dtype != np.int16:
                raise TypeError(f"pcm must be int16, got {pcm.dtype}")
            pcm = pcm.tobytes()
        self._pending += pcm
        n_frames = len(self._pending) // self._frame_bytes
        if n_frames == 0:
            return []
        events: list[tuple[str, float]] = []
        frame_s = self.settings.frame_ms / 1000.0
        leftover_s = (len(self._pending) - n_frames * self._frame_bytes) / 2 / self.settings.sample_rate
        view = memoryview(self._pending)
        for i in range(n_frames):
            frame = bytes(view[i * self._frame_bytes:(i + 1) * self._frame_bytes])
            # arrival time of this frame's last sample
            t_frame = t - leftover_s - (n_frames - 1 - i) * frame_s
            speech = self.is_speech(frame)
            if on_frame is not None:
                on_frame(np.frombuffer(frame, dtype=np.int16), speech, t_frame)
            event = self._step(speech, t_frame, frame_s)
            if event is not None:
                events.append(event)
        view.release()
        del self._pending[:n_frames * self._frame_bytes]
        return events

    def _step(self, speech: bool, t: float, frame_s: float) -> tuple[str, float] | None:
        if speech != self.speaking:  # this frame argues for a state change
            if self._run == 0:
                self._run_start_t = t - frame_s
            self._run += 1
            needed = self.settings.stop_frames if self.speaking else self.settings.start_frames
            if self._run >= needed:
                self._run = 0
                self.speaking = speech
                if speech:
                    self.onset_t = self._run_start_t
                    return SPEECH_STARTED, t
                return SPEECH_STOPPED, t
        else:
            self._run = 0
        return None
