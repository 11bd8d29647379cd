"""Speech faster or slower without a pitch change, frame by frame: FFmpeg's `atempo` filter through PyAV.

The model has no speaking-rate control, so the OpenAI API's `speed` (0.25-4.0) is a time-stretch of the
engine's PCM: WSOLA (atempo) keeps the pitch and the voice, changing only the duration. It streams: each
80 ms frame goes in as it comes and whatever the filter has ready comes out (atempo holds back a few tens of
milliseconds of look-ahead, given out at `finish`). One atempo stage takes 0.5-100, so a speed under 0.5 is a
chain of stages whose product is the speed.
"""

from __future__ import annotations

import av
import numpy as np
from av.filter import Graph

from agent.media.audio import audio_frame

MIN_SPEED, MAX_SPEED = 0.25, 4.0


def atempo_stages(speed: float) -> list[float]:
    """Factors of atempo stages (each in 0.5-2.0, where WSOLA sounds best) whose product is `speed`."""
    if not MIN_SPEED <= speed <= MAX_SPEED:
        raise ValueError(f"speed must be between {MIN_SPEED} and {MAX_SPEED}, not {speed}")
    stages: list[float] = []
    while speed < 0.5 or speed > 2.0:
        stage = 0.5 if speed < 0.5 else 2.0
        stages.append(stage)
        speed /= stage
    return [*stages, speed]


class TimeStretch:
    """int16 mono PCM at `sample_rate` in, the same at `speed` times the pace out (pitch unchanged)."""

    def __init__(self, speed: float, sample_rate: int = 24000) -> None:
        self.speed, self.sample_rate = speed, sample_rate
        self._pts = 0
        self._graph = Graph()
        node = self._graph.add_abuffer(format="s16", sample_rate=sample_rate, layout="mono")
        source = node
        for factor in atempo_stages(speed):
            stage = self._graph.add("atempo", f"{factor:.6f}")
            node.link_to(stage)
            node = stage
        sink = self._graph.add("abuffersink")
        node.link_to(sink)
        self._graph.configure()
        self._source = source

    def push(self, pcm: np.ndarray) -> np.ndarray:
        """One chunk in; the stretched samples the filter has ready (possibly none yet)."""
        if len(pcm) == 0:
            return np.zeros(0, dtype=np.int16)
        self._graph.push(audio_frame(pcm, self.sample_rate, self._pts))
        self._pts += len(pcm)
        return self._drain()

    def finish(self) -> np.ndarray:
        """The end of the input: the rest of the stretched audio."""
        self._graph.push(None)
        return self._drain()

    def _drain(self) -> np.ndarray:
        parts = []
        while True:
            try:
                frame = self._graph.pull()
            except (av.error.BlockingIOError, av.error.EOFError):
                break
            parts.append(frame.to_ndarray().reshape(-1))
        return np.concatenate(parts).astype(np.int16, copy=False) if parts else np.zeros(0, dtype=np.int16)
