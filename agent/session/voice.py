"""A session's voice: the producer's choice (voice, language, instruct, sampling), checked by the catalogue's
rules (agent.voices.catalogue `ModelInfo.resolve`) and by the engine, and what each utterance's stream opens with.

A choice is checked as a whole when `session.update` changes it and resolved again when an utterance opens its
stream, so a saved voice removed meanwhile fails that utterance (not the session).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from agent.voices.catalogue import ModelInfo, ResolvedVoice

if TYPE_CHECKING:
    from tts_engine import Engine


@dataclass(frozen=True)
class VoiceConfig:
    voice: str | None
    language: str = "auto"
    instruct: str | None = None
    seed: int = 0
    greedy: bool = False


class SessionVoice:
    """The session's current `VoiceConfig` (`config`) and its resolution against the catalogue."""

    def __init__(self, engine: Engine, info: ModelInfo) -> None:
        self.engine, self.info = engine, info
        default = info.default_voice
        self.config = VoiceConfig(voice=default.name if default else None,
                                  language=default.language if default else "auto")

    def check(self, voice: str | None = None, language: str | None = None, instruct: str | None = None,
              seed: int | None = None, greedy: bool | None = None) -> tuple[VoiceConfig, str | None]:
        """The config these changes (None: unchanged; instruct "": cleared) would make, and a warning; nothing is
        applied. VoiceError (or the engine's ValueError) when it cannot be served."""
        c = self.config
        c = replace(c, seed=c.seed if seed is None else seed, greedy=c.greedy if greedy is None else greedy)
        if voice is None and language is None and instruct is None:
            return c, None
        if language is None and voice is None:
            language = c.language  # the session keeps its language unless a new voice brings one
        resolved = self.info.resolve(c.voice if voice is None else voice, language,
                                     c.instruct if instruct is None else instruct, fallback_language=c.language)
        self._check_engine(resolved)
        return replace(c, voice=resolved.name, language=resolved.language, instruct=resolved.instruct), \
            resolved.warning

    def stream_args(self) -> dict[str, Any]:
        """`Engine.open_stream` keywords for the current config (VoiceError: its voice is gone)."""
        c = self.config
        resolved = self.info.resolve(c.voice, c.language, c.instruct)
        return {**resolved.stream_args, "greedy": c.greedy, "seed": c.seed}

    def _check_engine(self, resolved: ResolvedVoice) -> None:
        """What only the checkpoint knows (a preset it lacks, a cloned voice made for another width)."""
        from tts_engine import validate_voice

        model = self.engine.model
        validate_voice(model.config, model.voice(**resolved.stream_args))
