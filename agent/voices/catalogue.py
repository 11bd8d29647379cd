"""What a loaded checkpoint can speak with: its preset speakers and the saved voices that fit it.

- CustomVoice: the preset speakers (dialect speakers force their dialect for chinese/auto, as the official code).
- VoiceDesign: the designed voices of the voices directory (each a saved description and language).
- Base: the cloned voices made for a model of the same width (an x-vector is as wide as the talker).

`ModelInfo` is the single catalogue (session.created, `voices`, Wyoming's info, the compatible APIs, the CLI's
synth). Its `resolve` holds the voice rules every front-end follows, so a request means the same everywhere:
- a name is looked up exactly, then case-insensitively, then as an alias (OpenAI's voice names, agent.voices.aliases);
  no name: the catalogue's first voice (the default);
- a language is a name or an ISO code of the checkpoint's languages; none named: a saved voice brings its own,
  a preset has none (the caller's fallback, "auto" by default);
- a style instruction is kept where the model follows one, dropped with a warning by the 0.6B CustomVoice
  (as the official package does), refused by Base checkpoints;
- anything else is a `VoiceError` with a stable code and the field it concerns.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from agent.voices.aliases import alias_table, saved_aliases
from agent.voices.errors import INSTRUCT_UNSUPPORTED, UNKNOWN_VOICE, VoiceError
from agent.voices.languages import language_name
from agent.voices.store import VoiceRegistry

if TYPE_CHECKING:
    from tts_engine import Engine, TTSModel, VoicePrompt

log = logging.getLogger(__name__)


def honours_instruct(kind: str, size: str) -> bool:
    """VoiceDesign and the 1.7B CustomVoice follow style instructions; the 0.6B CustomVoice drops them
    (as the official package does) and Base takes none."""
    return kind == "voice_design" or (kind == "custom_voice" and size != "0b6")


@dataclass(frozen=True)
class VoiceEntry:
    name: str
    kind: str  # "preset" | "designed" | "cloned"
    language: str = "auto"  # the language a session switches to when it picks this voice
    instruct: bool = False  # whether a session's style instruction is honoured with this voice
    dialect: str | None = None  # preset: the dialect forced for chinese/auto
    mode: str | None = None  # cloned: "xvector" | "icl"
    description: str | None = None  # designed: the VoiceDesign instruct
    created: str | None = None
    consent: str | None = None
    prompt: VoicePrompt | None = field(default=None, repr=False, compare=False)  # cloned: loaded once, reused

    def describe(self, languages: list[str]) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name, "kind": self.kind, "language": self.language,
                               "languages": languages, "instruct": self.instruct}
        for key in ("dialect", "mode", "description", "created"):
            value = getattr(self, key)
            if value is not None:
                out[key] = value
        return out

    def stream_args(self, language: str, instruct: str | None) -> dict[str, Any]:
        """Keywords for `Engine.open_stream` / `TTSModel.synthesize`."""
        if self.kind == "preset":
            return {"speaker": self.name, "language": language, "instruct": instruct}
        if self.kind == "designed":
            # a session's own instruction replaces the saved description (both are VoiceDesign prompts)
            return {"language": language, "instruct": instruct or self.description}
        return {"language": language, "instruct": instruct, "voice_prompt": self.prompt}


def preset_entries(model: TTSModel) -> list[VoiceEntry]:
    cfg = model.config
    if cfg.tts_model_type != "custom_voice":
        return []
    instruct = honours_instruct(cfg.tts_model_type, cfg.tts_model_size)
    dialects = cfg.talker_config.spk_is_dialect
    return [VoiceEntry(name=name, kind="preset", instruct=instruct, dialect=dialects.get(name) or None)
            for name in model.speakers]


def saved_entries(model: TTSModel, registry: VoiceRegistry) -> list[VoiceEntry]:
    """The saved voices this checkpoint can use (the others are logged at INFO and left out)."""
    cfg = model.config
    kind, hidden = cfg.tts_model_type, cfg.talker_config.hidden_size
    out = []
    for saved in registry.list():
        if saved.kind == "designed" and kind == "voice_design":
            out.append(VoiceEntry(name=saved.name, kind="designed", language=saved.language, instruct=True,
                                  description=saved.description, created=saved.created))
        elif saved.kind == "cloned" and kind == "base" and saved.hidden_size == hidden:
            out.append(VoiceEntry(name=saved.name, kind="cloned", language=saved.language, mode=saved.mode,
                                  created=saved.created, consent=saved.consent, prompt=saved.prompt))
        else:
            log.info("saved voice %s (%s, hidden size %s) does not fit this %s checkpoint", saved.name,
                     saved.kind, saved.hidden_size, kind)
    return out


def catalogue(model: TTSModel, registry: VoiceRegistry | None) -> list[VoiceEntry]:
    """Presets first, then saved voices by name."""
    return preset_entries(model) + (saved_entries(model, registry) if registry is not None else [])


def find(entries: list[VoiceEntry], name: str) -> VoiceEntry | None:
    """By exact name, else case-insensitively (saved names keep their case; presets are lower case)."""
    exact = next((e for e in entries if e.name == name), None)
    if exact is not None:
        return exact
    key = name.casefold()
    return next((e for e in entries if e.name.casefold() == key), None)


@dataclass(frozen=True)
class ResolvedVoice:
    """A voice request the catalogue can serve."""

    name: str | None  # the catalogue's spelling; None: no voice (a VoiceDesign checkpoint with instruct only)
    language: str  # a language name of the checkpoint, or "auto"
    instruct: str | None  # the request's instruction as kept (None when dropped or not given)
    stream_args: dict[str, Any]  # `Engine.open_stream` / `TTSModel.synthesize` keywords
    warning: str | None = None  # the request was served with a caveat (the instruction was dropped)


@dataclass
class ModelInfo:
    """What the loaded checkpoint offers: the single voice catalogue of the server (session.created, the
    `voices` reply, Wyoming's info). `voices` are names (presets, then saved voices that fit the model);
    `entries` carry their kind, mode, languages and what `Engine.open_stream` needs (`stream_args`)."""

    name: str
    kind: str  # custom_voice | base | voice_design
    voices: list[str]
    languages: list[str]
    instruct: bool  # whether style instructions are honoured
    entries: list[VoiceEntry] = field(default_factory=list)
    size: str = ""  # "0b6" | "1b7"
    voices_dir: Path | None = None  # saved voices; None: presets only
    model: Any = field(default=None, repr=False, compare=False)  # the TTSModel (for reload)
    alias_overrides: dict[str, str] = field(default_factory=dict)  # `--voice-alias` (agent.voices.aliases)
    aliases: dict[str, str] = field(default_factory=dict)  # alias -> voice name, rebuilt with the catalogue

    def __post_init__(self) -> None:
        if not self.entries and self.kind == "custom_voice":
            self.entries = [VoiceEntry(name=v, kind="preset", instruct=self.instruct) for v in self.voices]
        self._saved_aliases = saved_aliases(self.voices_dir)
        self._build_aliases()

    def _build_aliases(self) -> None:
        self.aliases = alias_table(self.voices, self._saved_aliases, self.alias_overrides)

    @classmethod
    def from_engine(cls, engine: Engine, name: str, voices_dir: str | os.PathLike[str] | None = None,
                    aliases: dict[str, str] | None = None) -> ModelInfo:
        return cls.from_model(engine.model, name, voices_dir, aliases)

    @classmethod
    def from_model(cls, model: TTSModel, name: str, voices_dir: str | os.PathLike[str] | None = None,
                   aliases: dict[str, str] | None = None) -> ModelInfo:
        """Blocking when `voices_dir` is given (reads the saved voices): call it off the event loop."""
        cfg = model.config
        kind, size = cfg.tts_model_type, cfg.tts_model_size
        root = Path(voices_dir) if voices_dir is not None else None
        entries = catalogue(model, VoiceRegistry(root) if root is not None else None)
        return cls(name=name, kind=kind, voices=[e.name for e in entries], languages=list(model.languages),
                   instruct=honours_instruct(kind, size), entries=entries, size=size, voices_dir=root, model=model,
                   alias_overrides=dict(aliases or {}))

    def reload(self) -> list[VoiceEntry]:
        """The catalogue as the voices directory holds it now (blocking: run it in a thread, then `adopt`)."""
        if self.voices_dir is None or self.model is None:
            return list(self.entries)
        self._saved_aliases = saved_aliases(self.voices_dir)  # read here, off the loop; applied by adopt
        return catalogue(self.model, VoiceRegistry(self.voices_dir))

    def adopt(self, entries: list[VoiceEntry]) -> None:
        self.entries = entries
        self.voices = [e.name for e in entries]
        self._build_aliases()

    def entry(self, name: str) -> VoiceEntry | None:
        """A voice by name, else by alias (a real voice of the same name wins)."""
        found = find(self.entries, name)
        if found is None and name.casefold() in self.aliases:
            found = find(self.entries, self.aliases[name.casefold()])
        return found

    @property
    def default_voice(self) -> VoiceEntry | None:
        return self.entries[0] if self.entries else None

    def resolve(self, voice: str | VoiceEntry | None = None, language: str | None = None,
                instruct: str | None = None, fallback_language: str = "auto") -> ResolvedVoice:
        """The voice rules (see the module docstring). `voice`: a catalogue name, an entry made on the spot (a
        reference recording cloned for one synth), or None for the default voice. `language`: a name or ISO
        code; None: the voice's own, else `fallback_language`. VoiceError when it cannot be served."""
        entry = self._entry(voice) if isinstance(voice, str) else voice if voice is not None else self.default_voice
        if language is not None:
            language = language_name(self.languages, language)
        elif entry is not None and entry.kind != "preset":
            language = entry.language  # a saved voice brings its language
        else:
            language = fallback_language
        instruct, warning = self._instruct(instruct or None)
        args = entry.stream_args(language, instruct) if entry is not None else {"language": language,
                                                                                "instruct": instruct}
        return ResolvedVoice(entry.name if entry is not None else None, language, instruct, args, warning)

    def _entry(self, name: str) -> VoiceEntry:
        entry = self.entry(name)
        if entry is None:
            known = ", ".join(self.voices) or "none (add one with `voicegate voices add`)"
            raise VoiceError(f"unknown voice {name!r}; this {self.kind} model's voices: {known}", UNKNOWN_VOICE)
        return entry

    def _instruct(self, instruct: str | None) -> tuple[str | None, str | None]:
        """(the instruction kept, a warning)."""
        if instruct is None or self.instruct:
            return instruct, None
        if self.kind == "base":
            raise VoiceError("Base checkpoints take no style instruction: a cloned voice speaks like its "
                             "reference recording", INSTRUCT_UNSUPPORTED, "instruct")
        return None, ("this model (0.6B CustomVoice) ignores style instructions, as the official package does; "
                      "the instruction was dropped (the 1.7B CustomVoice and VoiceDesign models follow them)")

    def stream_args(self, voice: str | None, language: str, instruct: str | None) -> dict[str, Any]:
        """`Engine.open_stream` keywords for a choice (`resolve(...).stream_args`)."""
        return self.resolve(voice, language, instruct).stream_args

    def describe(self) -> dict[str, Any]:
        return {"model": self.name, "model_kind": self.kind, "voices": self.voices, "languages": self.languages,
                "instruct": self.instruct, "voice_details": [e.describe(self.languages) for e in self.entries]}
