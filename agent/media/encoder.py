"""Engine PCM -> the bytes of an audio file format, incrementally (PyAV), for streamed HTTP responses.

`AudioEncoder(fmt).push(pcm)` returns the bytes the muxer has written so far and `finish()` the rest, so a
response sends each 80 ms frame's worth as soon as the codec gives it out; the work per call is one frame's
(well under a millisecond), cheap enough for the event loop. The output is never seekable: WAV goes out
with its sizes unknown (0xFFFFFFFF, as ffmpeg streams it; every decoder that streams reads it), the others
are streaming formats by design (MP3 frames, Ogg Opus pages, ADTS AAC, FLAC frames).
"""

from __future__ import annotations

from dataclasses import dataclass

import av
import numpy as np

from agent.media.audio import audio_frame


@dataclass(frozen=True)
class Format:
    container: str | None  # None: raw PCM, no encoder
    codec: str | None
    content_type: str
    bit_rate: int | None = None
    options: dict[str, str] | None = None  # the muxer's


FORMATS: dict[str, Format] = {
    "pcm": Format(None, None, "audio/pcm"),
    "wav": Format("wav", "pcm_s16le", "audio/wav"),
    "mp3": Format("mp3", "libmp3lame", "audio/mpeg", 64_000),
    # an Ogg page per packet (20 ms), not per second (the muxer's default): pages go out as they are made
    "opus": Format("ogg", "libopus", "audio/ogg", 48_000, {"page_duration": "20000"}),
    "aac": Format("adts", "aac", "audio/aac", 64_000),
    "flac": Format("flac", "flac", "audio/flac"),
    # headerless G.711 (telephony; ElevenLabs' ulaw_8000 / alaw_8000): one byte per sample
    "ulaw": Format("mulaw", "pcm_mulaw", "audio/basic"),
    "alaw": Format("alaw", "pcm_alaw", "audio/x-alaw-basic"),
}


class _Sink:
    """A write-only file for the muxer (no seek: the output streams)."""

    def __init__(self) -> None:
        self.parts: list[bytes] = []

    def write(self, data: bytes) -> int:
        self.parts.append(bytes(data))
        return len(data)

    def take(self) -> bytes:
        out = b"".join(self.parts)
        self.parts.clear()
        return out


class AudioEncoder:
    """s16le mono PCM at `sample_rate` in, `fmt` bytes out (see FORMATS)."""

    def __init__(self, fmt: str, sample_rate: int = 24000, bit_rate: int | None = None) -> None:
        """`bit_rate` (bits/s) overrides the format's default for the lossy codecs."""
        self.format = FORMATS[fmt]
        self.sample_rate = sample_rate
        self._pts = 0
        self._sink = _Sink()
        self._container: av.container.OutputContainer | None = None
        if self.format.container is not None:
            self._container = av.open(self._sink, mode="w", format=self.format.container,
                                      options=self.format.options or {})
            stream = self._container.add_stream(self.format.codec, rate=sample_rate, layout="mono")
            if bit_rate or self.format.bit_rate:
                stream.bit_rate = bit_rate or self.format.bit_rate
            self._stream = stream

    @property
    def content_type(self) -> str:
        return self.format.content_type

    def push(self, pcm: np.ndarray) -> bytes:
        if self._container is None:
            return np.ascontiguousarray(pcm, dtype="<i2").tobytes()
        frame = audio_frame(pcm, self.sample_rate, self._pts)
        self._pts += len(pcm)
        for packet in self._stream.encode(frame):
            self._container.mux(packet)
        return self._sink.take()

    def finish(self) -> bytes:
        """The codec's tail and the container's trailer; the encoder is done after this."""
        if self._container is None:
            return b""
        for packet in self._stream.encode(None):
            self._container.mux(packet)
        self._container.close()
        self._container = None
        return self._sink.take()

    def close(self) -> None:
        """Drop the encoder without its tail (the response was abandoned)."""
        if self._container is not None:
            self._container.close()
            self._container = None
