"""Per-character timing of an utterance's audio (ElevenLabs' `alignment`), released as the audio is made.

The model gives no alignment, so this is an estimate, the same one `spoken_text` uses (agent.session.spoken):
a character starts at the later of
1. its place at a speaking rate: the weighted characters before it (CJK ideographs, kana and hangul weigh
   `cjk_weight`, whitespace and punctuation nothing) at `chars_per_second`, and
2. the time the model read it: the dual-track schedule feeds one text token per 80 ms frame, and a frame's
   `text_tokens_consumed` says how many it had read, so no character is spoken before the frame that read
   its token (the model reads ahead of the audio: about three frames of speech per English token).
Each audio frame releases the characters that start before the end of the audio made so far; the rest come
with the last frame (`finish`), clamped to the audio's end. Start times are in ms from the start of the
timeline (a context's first audio), never decrease, and the characters concatenate to the text.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from tokenizers import Tokenizer

from agent.session.spoken import char_weight, read_prefix
from agent.settings import ENGINE_FRAME_MS


@dataclass
class Alignment:
    chars: list[str] = field(default_factory=list)
    starts_ms: list[int] = field(default_factory=list)
    durations_ms: list[int] = field(default_factory=list)

    def as_elevenlabs(self) -> dict[str, list[str] | list[int]]:
        return {"chars": self.chars, "charStartTimesMs": self.starts_ms, "charDurationsMs": self.durations_ms}


class CharTimeline:
    """One timeline (an ElevenLabs context): utterances one after another, frame by frame."""

    def __init__(self, tokenizer: Tokenizer | None, chars_per_second: float, cjk_weight: float) -> None:
        self.tokenizer, self.rate, self.cjk_weight = tokenizer, chars_per_second, cjk_weight
        self.audio_ms = 0.0  # audio made so far on this timeline
        self._start_ms = 0.0  # where the current utterance's audio began
        self._spoken_ms = 0.0  # rate time of the current utterance's characters placed so far
        self._read_at: list[float] = []  # per character of the current utterance: when its token was read
        self._last_start = 0.0  # start of the last released character of the current utterance
        self._text = ""
        self._released = 0  # characters of the current utterance released

    def frame(self, text: str, tokens_consumed: int) -> Alignment:
        """After one 80 ms frame of the utterance whose text (so far) is `text`: the characters it releases."""
        self._text = text
        read = read_prefix(self.tokenizer, text, tokens_consumed)
        while len(self._read_at) < read:
            self._read_at.append(self.audio_ms - self._start_ms)  # read by the frame that starts now
        self.audio_ms += ENGINE_FRAME_MS
        return self._release(until_ms=self.audio_ms - self._start_ms)

    def finish(self) -> Alignment:
        """The utterance's audio ended: the rest of its characters, clamped to the end; the next utterance
        starts after it."""
        while len(self._read_at) < len(self._text):
            self._read_at.append(self.audio_ms - self._start_ms)
        out = self._release(until_ms=float("inf"), clamp_ms=self.audio_ms - self._start_ms)
        self._start_ms, self._spoken_ms, self._read_at, self._text, self._released = self.audio_ms, 0.0, [], "", 0
        self._last_start = 0.0
        return out

    def _release(self, until_ms: float, clamp_ms: float | None = None) -> Alignment:
        out = Alignment()
        while self._released < len(self._read_at):
            i = self._released
            ch = self._text[i]
            weight = char_weight(ch, self.cjk_weight)
            start = max(self._spoken_ms * 1000.0 / self.rate, self._read_at[i], self._last_start)
            if clamp_ms is not None:
                start = min(start, clamp_ms)
            if start >= until_ms:
                break
            # never past the audio made so far (at the end: the utterance's last sample)
            end = until_ms if clamp_ms is None else clamp_ms
            duration = max(0.0, min(weight * 1000.0 / self.rate, end - start))
            self._spoken_ms += weight
            self._released += 1
            self._last_start = start
            out.chars.append(ch)
            out.starts_ms.append(round(self._start_ms + start))
            out.durations_ms.append(round(duration))
        return out
