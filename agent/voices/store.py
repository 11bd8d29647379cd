"""The voices directory: saved voices that outlive a process.

Two kinds live here, one file each, named after the voice:
- cloned   `NAME.voice.safetensors`: a Base checkpoint's voice prompt (x-vector, and for ICL the reference
           codes and transcript) with its metadata as JSON in the safetensors header (tts_engine.voice_prompt).
- designed `NAME.voice.json`: a VoiceDesign description (the instruct) and a language.

Every write is a temp file in the same directory renamed over the target, and every check (name, audio, model
kind, transcript) runs before it, so a failed `add` leaves the directory as it was. Loading a saved voice reads
one small file: no audio, no model.

Preset speakers are not stored: they belong to a CustomVoice checkpoint (agent.voices.catalogue lists them).
"""

from __future__ import annotations

import json
import logging
import os
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from agent.voices.errors import UNKNOWN_VOICE, VoiceError
from agent.voices.languages import language_name
from agent.voices.reference_audio import ReferenceAudio, load_reference
from tts_engine.files import atomic_file

if TYPE_CHECKING:
    from tts_engine import TTSModel, VoicePrompt

log = logging.getLogger(__name__)

ENV_DIR = "VOICEGATE_VOICES_DIR"
CLONED_SUFFIX = ".voice.safetensors"
DESIGNED_SUFFIX = ".voice.json"
DESIGNED_FORMAT = "voicegate.designed_voice/1"
MODES = ("xvector", "icl")
MAX_DESCRIPTION_CHARS = 1000  # the protocol's instruct limit
NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
# The official CustomVoice speakers: a saved voice may not shadow one of them.
PRESET_NAMES = ("vivian", "serena", "uncle_fu", "ryan", "aiden", "ono_anna", "sohee", "eric", "dylan")


def default_voices_dir() -> Path:
    env = os.environ.get(ENV_DIR)
    if env:
        return Path(env).expanduser()
    data = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(data) / "voicegate" / "voices"


def check_name(name: str) -> str:
    if not NAME_RE.fullmatch(name) or name.endswith((".", ".tmp")):
        raise VoiceError(f"bad voice name {name!r}: use 1-64 letters, digits, '_', '-' or '.', starting with a "
                         f"letter or digit (no path separators, no spaces)")
    if name.casefold() in PRESET_NAMES:
        raise VoiceError(f"{name!r} is a preset speaker of the CustomVoice models; choose another name")
    return name


@dataclass(frozen=True)
class SavedVoice:
    name: str
    kind: str  # "cloned" | "designed"
    path: Path
    language: str = "auto"
    created: str | None = None
    mode: str | None = None  # cloned: "xvector" | "icl"
    description: str | None = None  # designed: the VoiceDesign instruct
    consent: str | None = None
    hidden_size: int | None = None  # cloned: the talker width the x-vector was made for
    metadata: dict[str, Any] = field(default_factory=dict, repr=False)
    prompt: VoicePrompt | None = field(default=None, repr=False, compare=False)  # cloned: read with the file

    def describe(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name, "kind": self.kind, "language": self.language,
                               "created": self.created}
        if self.kind == "cloned":
            model = self.metadata.get("model", {})
            out.update(mode=self.mode, consent=self.consent, model_kind=model.get("kind"),
                       model_size=model.get("size"), hidden_size=self.hidden_size,
                       source_sha256=self.metadata.get("source", {}).get("sha256"))
        else:
            out["description"] = self.description
        return out


@dataclass
class AddTimings:
    """Seconds per stage of `add_cloned` (the CLI prints them, bench/voices.py reports them)."""

    decode_s: float = 0.0  # read, downmix, resample, check
    prompt_s: float = 0.0  # the x-vector (speaker encoder), plus the reference codes (codec encoder) for ICL
    write_s: float = 0.0


def _now() -> str:
    return datetime.now(UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z")


def _write_atomic(path: Path, text: str) -> None:
    with atomic_file(path) as tmp:
        Path(tmp).write_text(text, encoding="utf-8")


class VoiceRegistry:
    """Saved voices in one directory (created on the first add)."""

    def __init__(self, root: str | os.PathLike[str] | None = None) -> None:
        self.root = Path(root).expanduser() if root is not None else default_voices_dir()

    # ---- reading ---------------------------------------------------------------------------------
    def _files(self) -> list[Path]:
        if not self.root.is_dir():
            return []
        return sorted(p for p in self.root.iterdir()
                      if not p.name.startswith(".") and p.name.endswith((CLONED_SUFFIX, DESIGNED_SUFFIX)))

    def list(self) -> list[SavedVoice]:
        """Every readable saved voice, by name; a broken file is logged and left out."""
        voices = []
        for path in self._files():
            try:
                voices.append(self._read(path))
            except (ValueError, OSError) as exc:
                log.warning("skipping %s: %s", path, exc)
        return sorted(voices, key=lambda v: v.name.casefold())

    def _read(self, path: Path) -> SavedVoice:
        if path.name.endswith(DESIGNED_SUFFIX):
            meta = json.loads(path.read_text(encoding="utf-8"))
            if meta.get("format") != DESIGNED_FORMAT:
                raise ValueError(f"not a designed voice (format {meta.get('format')!r})")
            return SavedVoice(name=meta["name"], kind="designed", path=path, language=meta.get("language", "auto"),
                              created=meta.get("created"), description=meta["description"], metadata=meta)
        prompt, meta = self._load_prompt(path)
        return SavedVoice(name=meta.get("name", path.name[:-len(CLONED_SUFFIX)]), kind="cloned", path=path,
                          language=meta.get("language", "auto"), created=meta.get("created"),
                          mode="icl" if prompt.icl else "xvector", consent=meta.get("consent"),
                          hidden_size=prompt.hidden_size, metadata=meta, prompt=prompt)

    @staticmethod
    def _load_prompt(path: Path) -> tuple[VoicePrompt, dict[str, Any]]:
        from tts_engine import load_voice_prompt

        return load_voice_prompt(path)

    def find(self, name: str) -> SavedVoice | None:
        """The saved voice of this name (case-insensitive), or None."""
        key = name.casefold()
        return next((v for v in self.list() if v.name.casefold() == key), None)

    def get(self, name: str) -> SavedVoice:
        voice = self.find(name)
        if voice is None:
            known = ", ".join(v.name for v in self.list()) or "none yet"
            raise VoiceError(f"no saved voice {name!r} in {self.root} (saved: {known})", UNKNOWN_VOICE)
        return voice

    def load_prompt(self, name: str) -> VoicePrompt:
        """A cloned voice's prompt, straight from its file (no audio processing)."""
        voice = self.get(name)
        if voice.prompt is None:
            raise VoiceError(f"{voice.name!r} is a {voice.kind} voice, not a cloned one")
        return voice.prompt

    # ---- writing ---------------------------------------------------------------------------------
    def _claim(self, name: str, force: bool) -> SavedVoice | None:
        """Check the name and whether it is taken; returns the voice `force` will replace."""
        check_name(name)
        old = self.find(name)
        if old is not None and not force:
            raise VoiceError(f"a voice named {old.name!r} already exists ({old.kind}); pick another name, or "
                             f"pass --force to replace it")
        return old

    def _commit(self, target: Path, old: SavedVoice | None, write: Callable[[Path], object]) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        write(target)
        if old is not None and old.path != target:  # replaced under another spelling or kind
            old.path.unlink(missing_ok=True)

    def check_new(self, name: str, force: bool = False) -> None:
        """Fail early (before decoding audio or loading a model) on a bad or taken name."""
        self._claim(name, force)

    def add_designed(self, name: str, description: str, language: str = "auto", force: bool = False) -> SavedVoice:
        from tts_engine import LANGUAGES

        old = self._claim(name, force)
        description = description.strip()
        if not description:
            raise VoiceError("a designed voice needs a description, e.g. --design \"a warm, low male voice\"")
        if len(description) > MAX_DESCRIPTION_CHARS:
            raise VoiceError(f"the description is over {MAX_DESCRIPTION_CHARS} characters")
        language = language_name(["auto", *LANGUAGES], language or "auto")
        meta = {"format": DESIGNED_FORMAT, "name": name, "kind": "designed", "description": description,
                "language": language, "created": _now(), "model": {"kind": "voice_design"}}
        target = self.root / f"{name}{DESIGNED_SUFFIX}"
        self._commit(target, old, lambda p: _write_atomic(p, json.dumps(meta, ensure_ascii=False, indent=1) + "\n"))
        return self._read(target)

    def add_cloned(self, name: str, model: TTSModel, audio: str | os.PathLike[str] | ReferenceAudio,
                   text: str | None = None, language: str = "auto", consent: str | None = None,
                   mode: str | None = None, force: bool = False,
                   timings: AddTimings | None = None) -> SavedVoice:
        """Clone a voice from a reference recording with a Base checkpoint and save its prompt.

        mode: "xvector" (speaker vector only) or "icl" (also the reference codes and `text`, its transcript);
        default: "icl" when a transcript is given."""
        from tts_engine import save_voice_prompt

        timings = timings if timings is not None else AddTimings()
        old = self._claim(name, force)
        mode = mode or ("icl" if text else "xvector")
        if mode not in MODES:
            raise VoiceError(f"unknown cloning mode {mode!r}; use one of {', '.join(MODES)}")
        text = text.strip() if text else None
        if mode == "icl" and not text:
            raise VoiceError("ICL cloning needs the transcript of the reference audio: pass --text \"...\" (or "
                             "--mode xvector)")
        cfg = model.config
        if cfg.tts_model_type != "base":
            raise VoiceError(f"cloning needs a Base checkpoint; {model.path} is {cfg.tts_model_type}")
        language = language_name(model.languages, language or "auto")
        started = time.perf_counter()
        if isinstance(audio, ReferenceAudio):
            ref = audio
        else:
            ref = load_reference(audio)
            timings.decode_s = time.perf_counter() - started
        started = time.perf_counter()
        prompt = model.make_voice_prompt(ref.samples, ref_text=text if mode == "icl" else None)
        timings.prompt_s = time.perf_counter() - started
        meta: dict[str, Any] = {
            "name": name, "kind": "cloned", "mode": mode, "language": language, "created": _now(),
            "consent": consent, "transcript": text,
            "source": {"sha256": ref.sha256, "format": ref.source_format, "sample_rate": ref.source_rate,
                       "channels": ref.source_channels, "seconds": round(ref.seconds, 3)},
            "model": {"kind": cfg.tts_model_type, "size": cfg.tts_model_size,
                      "hidden_size": cfg.talker_config.hidden_size, "path": str(model.path)},
        }
        started = time.perf_counter()
        target = self.root / f"{name}{CLONED_SUFFIX}"
        self._commit(target, old, lambda p: save_voice_prompt(p, prompt, meta))
        timings.write_s = time.perf_counter() - started
        return self._read(target)

    def remove(self, name: str) -> SavedVoice:
        voice = self.get(name)
        voice.path.unlink()
        return voice

