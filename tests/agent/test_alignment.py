"""agent.session.alignment: per-character timing released frame by frame (ElevenLabs' `alignment`)."""

from __future__ import annotations

from typing import Any

from agent.session.alignment import Alignment, CharTimeline
from agent.settings import SessionSettings

TEXT = "Hello there, how are you today? 你好世界。"


def _timeline(engine: Any) -> CharTimeline:
    s = SessionSettings()
    return CharTimeline(engine.tokenizer, s.chars_per_second, s.cjk_char_weight)


def _join(parts: list[Alignment]) -> Alignment:
    whole = Alignment()
    for part in parts:
        whole.chars += part.chars
        whole.starts_ms += part.starts_ms
        whole.durations_ms += part.durations_ms
    return whole


def test_an_engine_utterance_is_timed_char_by_char(engine: Any) -> None:
    timeline = _timeline(engine)
    with engine.open_stream(speaker="vivian", greedy=True, text=TEXT) as stream:
        parts = []
        for i, frame in enumerate(stream):
            part = timeline.frame(stream.text, frame.text_tokens_consumed)
            # nothing is released before the audio that carries it exists, nor before its token was read
            assert all(start < (i + 1) * 80 for start in part.starts_ms)
            parts.append(part)
        parts.append(timeline.finish())
        audio_ms = timeline.audio_ms
    whole = _join(parts)
    assert "".join(whole.chars) == stream.text == TEXT
    assert whole.starts_ms == sorted(whole.starts_ms) and whole.starts_ms[0] == 0
    assert all(s >= 0 and s + d <= audio_ms + 1 for s, d in zip(whole.starts_ms, whole.durations_ms, strict=True))
    assert all(d == 0 for c, d in zip(whole.chars, whole.durations_ms, strict=True) if c in " ,?。")
    assert len(parts[0].chars) < len(TEXT)  # streamed: the first frame does not carry the whole text


def test_a_second_utterance_continues_the_timeline(engine: Any) -> None:
    timeline = _timeline(engine)
    ends = []
    for text in ("First one.", "Second one."):
        with engine.open_stream(speaker="vivian", greedy=True, text=text) as stream:
            parts = [timeline.frame(stream.text, f.text_tokens_consumed) for f in stream]
        parts.append(timeline.finish())
        whole = _join(parts)
        assert "".join(whole.chars) == text
        ends.append((whole.starts_ms[0], timeline.audio_ms))
    assert ends[1][0] >= ends[0][1]  # the second utterance starts where the first one's audio ended


def test_characters_wait_for_the_frame_that_reads_them(engine: Any) -> None:
    """A slow speaking rate keeps characters back until audio reaches them; the model's reading bounds them too."""
    slow = CharTimeline(engine.tokenizer, chars_per_second=1.0, cjk_weight=1.0)
    first = slow.frame("abc def", tokens_consumed=1)
    assert first.chars and "".join(first.chars) in "abc def" and len(first.chars) < 7
    unread = CharTimeline(engine.tokenizer, chars_per_second=1000.0, cjk_weight=1.0)
    assert unread.frame("abc def", tokens_consumed=0).chars == []  # nothing read yet: nothing timed
    assert "".join(unread.finish().chars) == "abc def"
