"""`voicegate voices list|add|remove`: the voices directory from the command line (agent.voices.store)."""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

from agent.voices.errors import VoiceError
from agent.voices.reference_audio import MAX_SECONDS, MIN_SECONDS, WARN_SECONDS, load_reference
from agent.voices.store import MODES, AddTimings, VoiceRegistry, default_voices_dir


def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def cmd_list(args: argparse.Namespace) -> int:
    registry = VoiceRegistry(args.voices_dir)
    voices = registry.list()
    if args.json:
        print(json.dumps({"voices_dir": str(registry.root), "voices": [v.describe() for v in voices]},
                         ensure_ascii=False))
        return 0
    if not voices:
        _say(f"no saved voices in {registry.root} (add one: voicegate voices add NAME --audio FILE --model BASE)")
        return 0
    rows = [("NAME", "KIND", "LANGUAGE", "MODE", "CREATED")]
    rows += [(v.name, v.kind, v.language, v.mode or "-", v.created or "-") for v in voices]
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
    return 0


def cmd_add(args: argparse.Namespace) -> int:
    registry = VoiceRegistry(args.voices_dir)
    if (args.audio is None) == (args.design is None):
        raise VoiceError("give either --audio FILE (clone a voice with a Base model) or --design \"description\" "
                         "(a VoiceDesign voice)")
    if args.design is not None:
        for flag in ("text", "mode", "model"):
            if getattr(args, flag) is not None:
                raise VoiceError(f"--{flag} belongs to cloning (--audio), not to --design")
        voice = registry.add_designed(args.name, args.design, args.language, force=args.force)
        _say(f"saved designed voice {voice.name!r} ({voice.language}) to {voice.path}")
        return 0
    if args.model is None:
        raise VoiceError("cloning needs a Base checkpoint: pass --model DIR (e.g. Qwen/Qwen3-TTS-12Hz-0.6B-Base)")
    if args.mode == "icl" and not (args.text and args.text.strip()):
        raise VoiceError("--mode icl needs the transcript of the reference audio: pass --text \"...\"")
    registry.check_new(args.name, args.force)  # before any slow work
    timings = AddTimings()
    started = time.perf_counter()
    ref = load_reference(args.audio)
    timings.decode_s = time.perf_counter() - started
    _say(f"read {args.audio}: {ref.source_format}, {ref.source_rate} Hz, {ref.source_channels} ch, "
         f"{ref.seconds:.2f} s, {ref.rms_dbfs:.1f} dBFS ({timings.decode_s:.2f} s)")
    for warning in ref.warnings:
        _say(f"warning: {warning}")
    if not args.consent:
        _say("note: no --consent given; record who agreed to this voice being cloned (kept in the voice file)")
    from tts_engine import load_model

    started = time.perf_counter()
    _say(f"loading {args.model} ...")
    model = load_model(args.model, device=args.device)
    _say(f"loaded in {time.perf_counter() - started:.1f} s; extracting the voice prompt ...")
    voice = registry.add_cloned(args.name, model, ref, text=args.text, language=args.language,
                                consent=args.consent, mode=args.mode, force=args.force, timings=timings)
    _say(f"saved cloned voice {voice.name!r} ({voice.mode}, {voice.language}) to {voice.path}: "
         f"prompt {timings.prompt_s:.2f} s, write {timings.write_s * 1000:.1f} ms")
    return 0


def cmd_remove(args: argparse.Namespace) -> int:
    voice = VoiceRegistry(args.voices_dir).remove(args.name)
    _say(f"removed {voice.kind} voice {voice.name!r} ({voice.path})")
    return 0


def add_voices_dir(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--voices-dir", default=None,
                        help=f"saved voices (default: $VOICEGATE_VOICES_DIR or {default_voices_dir()})")


def add_parser(sub: Any) -> None:
    vo = sub.add_parser("voices", help="saved voices: list, add (clone or design), remove")
    vsub = vo.add_subparsers(dest="voices_command", required=True)

    ls = vsub.add_parser("list", help="the saved voices")
    add_voices_dir(ls)
    ls.add_argument("--json", action="store_true", help="one JSON object on stdout")
    ls.set_defaults(func=cmd_list)

    ad = vsub.add_parser("add", help="clone a voice from reference audio (Base model) or save a designed voice",
                         description=f"Reference audio: any format FFmpeg reads, any rate, mono or not; "
                                     f"{MIN_SECONDS:.0f}-{MAX_SECONDS:.0f} s (under {WARN_SECONDS:.0f} s warns).")
    ad.add_argument("name")
    ad.add_argument("--audio", help="reference recording of the voice to clone")
    ad.add_argument("--text", help="its transcript (enables ICL cloning)")
    ad.add_argument("--mode", choices=MODES, help="xvector (speaker vector only) or icl (with --text; default "
                                                  "when --text is given)")
    ad.add_argument("--design", help="a VoiceDesign description instead of audio, e.g. \"a calm, low voice\"")
    ad.add_argument("--language", default="auto", help="the voice's default language")
    ad.add_argument("--consent", help="who agreed to this voice being cloned, and how (stored with it)")
    ad.add_argument("--model", help="Base checkpoint directory or hub id (cloning)")
    ad.add_argument("--device", default="cpu", help="cpu | cuda[:N] | auto")
    ad.add_argument("--force", action="store_true", help="replace a voice of the same name")
    add_voices_dir(ad)
    ad.set_defaults(func=cmd_add)

    rm = vsub.add_parser("remove", help="delete a saved voice")
    rm.add_argument("name")
    add_voices_dir(rm)
    rm.set_defaults(func=cmd_remove)
