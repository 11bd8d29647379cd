"""ElevenLabs' `output_format` names -> what to make: a sample rate, an encoding and a bit rate.

    pcm_{8000,16000,22050,24000,44100,48000}    raw s16le
    mp3_{22050,24000,44100}_{32,48,64,96,128,192}   MP3 at that rate and kbit/s
    opus_48000_{32,64,96,128,192}              Ogg Opus at that kbit/s
    ulaw_8000, alaw_8000                       headerless G.711

`OutputEncoder` takes the engine's 24 kHz frames: resampled (one persistent filter) and encoded frame by frame
(agent.media.encoder), so each 80 ms frame's bytes go out as soon as the codec gives them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

from agent.media.audio import Resampler
from agent.media.encoder import AudioEncoder
from agent.settings import SAMPLE_RATE

PCM_RATES = (8000, 16000, 22050, 24000, 44100, 48000)
MP3_RATES, MP3_KBPS = (22050, 24000, 44100), (32, 48, 64, 96, 128, 192)
OPUS_KBPS = (32, 64, 96, 128, 192)
SUPPORTED = (f"pcm_{{{','.join(map(str, PCM_RATES))}}}, mp3_{{{','.join(map(str, MP3_RATES))}}}_"
             f"{{{','.join(map(str, MP3_KBPS))}}}, opus_48000_{{{','.join(map(str, OPUS_KBPS))}}}, ulaw_8000, "
             f"alaw_8000")


@dataclass(frozen=True)
class OutputFormat:
    name: str
    encoding: str  # agent.media.encoder FORMATS key: pcm | mp3 | opus | ulaw | alaw
    sample_rate: int
    bit_rate: int | None = None


def parse_output_format(name: str) -> OutputFormat:
    """ValueError (naming the supported formats) for anything else."""
    match = re.fullmatch(r"(pcm|mp3|opus|ulaw|alaw)_(\d+)(?:_(\d+))?", name)
    if match is not None:
        kind, rate, kbps = match.group(1), int(match.group(2)), match.group(3)
        if kind == "pcm" and kbps is None and rate in PCM_RATES:
            return OutputFormat(name, "pcm", rate)
        if kind == "mp3" and rate in MP3_RATES and kbps is not None and int(kbps) in MP3_KBPS:
            return OutputFormat(name, "mp3", rate, int(kbps) * 1000)
        if kind == "opus" and rate == 48000 and kbps is not None and int(kbps) in OPUS_KBPS:
            return OutputFormat(name, "opus", rate, int(kbps) * 1000)
        if kind in ("ulaw", "alaw") and rate == 8000 and kbps is None:
            return OutputFormat(name, kind, rate)
    raise ValueError(f"unsupported output_format {name[:40]!r}; this server makes {SUPPORTED}")


class OutputEncoder:
    """The engine's frames (24 kHz int16) -> bytes of `fmt`, frame by frame."""

    def __init__(self, fmt: OutputFormat) -> None:
        self.format = fmt
        self._resampler = Resampler(SAMPLE_RATE, fmt.sample_rate)
        self._encoder = AudioEncoder(fmt.encoding, fmt.sample_rate, fmt.bit_rate)

    def push(self, pcm: np.ndarray) -> bytes:
        return self._encoder.push(self._resampler.push(pcm))

    def end_utterance(self, stopped: bool) -> bytes:
        """Between utterances: the resampler's tail (dropped if the utterance was stopped: nothing of it after
        its stop); the encoder keeps going, so one context is one continuous stream."""
        tail = self._resampler.drain()
        return b"" if stopped else self._encoder.push(tail)

    def finish(self) -> bytes:
        return self._encoder.finish()

    def close(self) -> None:
        self._encoder.close()
