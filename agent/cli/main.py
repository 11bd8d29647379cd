"""`voicegate` command line: make-checkpoint, synth, serve, wyoming, voices."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
import wave
from pathlib import Path
from typing import TYPE_CHECKING

from agent.cli.engine_options import add_engine_arguments
from agent.cli.fleet_options import add_fleet_arguments, fleet_settings
from agent.cli.ice_options import add_ice_arguments, check_ice_arguments, rtc_settings
from agent.cli.stt_options import add_stt_arguments, open_recognizer_service
from agent.cli.voices import add_parser as add_voices_parser
from agent.cli.voices import add_voices_dir
from agent.voices.aliases import parse_aliases
from agent.voices.store import default_voices_dir

if TYPE_CHECKING:
    from agent.voices.catalogue import ResolvedVoice

DEFAULT_MODEL = "Qwen/Qwen3-TTS-12Hz-0.6B-CustomVoice"
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s %(message)s"
# tts_engine.checkpoints.precision.PRECISION_CHOICES (not imported: no torch at parse time)
PRECISIONS = ("auto", "fp32", "bf16", "int8")
PRECISION_HELP = ("talker/code-predictor weights: auto (default) = bf16 on CUDA, fp32 on a CPU; fp32 is exact "
                  "(the official codes; TF32 off on CUDA); bf16 halves and int8 quarters the weight bytes per "
                  "frame, with codes that may differ from fp32's (int8 runs as bf16 on CUDA); the codec decoder "
                  "stays fp32 in every mode")


def _alias_spec(spec: str) -> str:
    try:
        parse_aliases(spec)  # a bad spec is a usage error at parse time
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return spec


def add_precision(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--precision", choices=PRECISIONS, default="auto", help=PRECISION_HELP)


def _write_wav(path: Path, audio, sample_rate: int = 24000) -> None:  # type: ignore[no-untyped-def]
    import numpy as np

    pcm = (np.clip(audio, -1.0, 1.0) * 32767.0).round().astype("<i2")
    with wave.open(str(path), "wb") as wav:
        wav.setnchannels(1)
        wav.setsampwidth(2)
        wav.setframerate(sample_rate)
        wav.writeframes(pcm.tobytes())


def cmd_make_checkpoint(args: argparse.Namespace) -> int:
    from tts_engine import make_checkpoint

    started = time.perf_counter()
    out = make_checkpoint(args.dir, size=args.size, kind=args.kind, seed=args.seed)
    print(f"wrote a random {args.size} {args.kind} checkpoint (seed {args.seed}) to {out} "
          f"in {time.perf_counter() - started:.1f} s", file=sys.stderr)
    return 0


def cmd_synth(args: argparse.Namespace) -> int:
    import numpy as np
    import torch

    from tts_engine import load_model

    if args.feed != "all" and args.non_streaming:
        print("error: --feed word|char streams text into the streaming layout; drop --non-streaming",
              file=sys.stderr)
        return 2
    chosen = [flag for flag in ("speaker", "voice", "ref_audio", "xvector") if getattr(args, flag)]
    if len(chosen) > 1:
        print(f"error: choose one of --speaker, --voice, --ref-audio, --xvector (got {', '.join(chosen)})",
              file=sys.stderr)
        return 2
    if args.ref_text and not args.ref_audio:
        print("error: --ref-text is the transcript of --ref-audio", file=sys.stderr)
        return 2
    ref = None
    if args.ref_audio:  # decode and check before loading the model: a bad file fails at once
        from agent.voices.reference_audio import load_reference

        ref = load_reference(args.ref_audio)
        for warning in ref.warnings:
            print(f"warning: {warning}", file=sys.stderr)
    torch.manual_seed(args.seed)
    model = load_model(args.model, device=args.device, precision=args.precision)
    resolved = _synth_voice(model, args, ref)
    if resolved.warning:
        print(f"warning: --instruct: {resolved.warning}", file=sys.stderr)
    voice = resolved.stream_args
    from agent.cli.engine_options import resolve_compile

    # The compiled frame step is the streaming engine's: a compiled synth runs through it (same codes).
    compiled = resolve_compile(args.compile, model.device.type)
    if compiled and args.non_streaming:
        print("error: --non-streaming runs the offline path, which is never compiled; add --compile off",
              file=sys.stderr)
        return 2
    started = time.perf_counter()
    first_audio_s = None
    if args.feed == "all" and not compiled:
        result = model.synthesize(args.text, **voice, non_streaming=args.non_streaming, greedy=args.greedy,
                                  seed=args.seed, max_frames=args.max_frames, eos_policy=args.eos_policy)
        audio, codes, ended_by = result.audio, result.codes.numpy(), result.ended_by
    else:
        audio, codes, ended_by, first_audio_s = _synth_streaming(model, args, voice)
    speaker = resolved.name
    elapsed = time.perf_counter() - started
    _write_wav(Path(args.out), audio)
    if args.codes_out:
        np.save(args.codes_out, codes.astype(np.int64))
    report = {"out": args.out, "frames": int(codes.shape[0]), "audio_s": round(audio.shape[0] / 24000, 3),
              "elapsed_s": round(elapsed, 3), "ended_by": ended_by, "speaker": speaker, "feed": args.feed}
    if first_audio_s is not None:
        report["first_audio_s"] = round(first_audio_s, 3)
    print(json.dumps(report), file=sys.stderr)
    return 0


def _synth_voice(model, args: argparse.Namespace, ref) -> ResolvedVoice:  # type: ignore[no-untyped-def]
    """--speaker | --voice (catalogue names) or --ref-audio | --xvector (a voice cloned for this run), by the
    catalogue's rules (language, instruct, the default voice)."""
    import numpy as np
    import torch

    from agent.voices.catalogue import ModelInfo, VoiceEntry
    from agent.voices.errors import UNKNOWN_VOICE, VoiceError
    from tts_engine import VoicePrompt

    info = ModelInfo.from_model(model, args.model, args.voices_dir or default_voices_dir())
    voice: str | VoiceEntry | None = args.voice or args.speaker
    if ref is not None:
        started = time.perf_counter()
        prompt = model.make_voice_prompt(ref.samples, ref_text=args.ref_text or None)
        print(f"voice prompt from {args.ref_audio} in {time.perf_counter() - started:.2f} s", file=sys.stderr)
        voice = VoiceEntry(name=Path(args.ref_audio).stem, kind="cloned", prompt=prompt)
    elif args.xvector:
        prompt = VoicePrompt(torch.from_numpy(np.load(args.xvector)).float())
        voice = VoiceEntry(name=Path(args.xvector).stem, kind="cloned", prompt=prompt)
    try:
        return info.resolve(voice, args.language, args.instruct)
    except VoiceError as exc:
        if exc.code == UNKNOWN_VOICE and args.speaker:
            raise ValueError(f"unknown speaker {args.speaker!r}; this model's speakers: "
                             f"{', '.join(model.speakers) or 'none (a CustomVoice checkpoint has them)'}") from None
        raise


def _synth_streaming(model, args: argparse.Namespace, voice: dict):  # type: ignore[no-untyped-def]
    """Feed the text word by word or character by character into the streaming engine."""
    import numpy as np

    from agent.cli.engine_options import build_engine

    text = args.text
    if args.feed == "char":
        pieces = list(text)
    elif args.feed == "all":
        pieces = [text]
    else:
        words = text.split(" ")
        pieces = [w + " " for w in words[:-1]] + [words[-1]]
    with build_engine(model, args.compile, max_streams=1) as engine:  # one stream: one bucket to compile
        started = time.perf_counter()
        stream = engine.open_stream(**voice, greedy=args.greedy, seed=args.seed, eos_policy=args.eos_policy)
        for piece in pieces:
            stream.push_text(piece)
        stream.finish()
        frames, first_audio_s = [], None
        for frame in stream:
            if first_audio_s is None:
                first_audio_s = time.perf_counter() - started
            frames.append(frame)
            if args.max_frames is not None and len(frames) >= args.max_frames:
                stream.cancel()
                break
        end = stream.end
    pcm = np.concatenate([f.pcm for f in frames]) if frames else np.zeros(0, np.int16)
    codes = np.stack([f.codes for f in frames]) if frames else np.zeros((0, 16), np.int64)
    ended_by = "max_frames" if end is not None and end.reason == "cancelled" else (end.reason if end else "?")
    return pcm.astype(np.float32) / 32767.0, codes, ended_by, first_audio_s


def cmd_serve(args: argparse.Namespace) -> int:
    import asyncio

    from agent.server.middleware import RequestIdFormatter

    for handler in logging.getLogger().handlers:  # an HTTP request's lines carry its x-request-id
        handler.setFormatter(RequestIdFormatter(LOG_FORMAT))
    from agent.settings import ServerSettings, SessionSettings

    settings = ServerSettings(host=args.host, port=args.port, api_key=args.api_key or None,
                              max_sessions=args.max_sessions, max_message_bytes=args.max_message_bytes,
                              engine_nice=args.engine_nice,
                              static_dir=Path(args.static_dir) if args.static_dir else None,
                              voices_dir=Path(args.voices_dir) if args.voices_dir else default_voices_dir(),
                              cors_origins=tuple(args.cors_origin or ()),
                              voice_aliases=parse_aliases(",".join(args.voice_alias or ())),
                              **fleet_settings(args),
                              session=SessionSettings(max_utterance_chars=args.max_utterance_chars,
                                                      audio_lead_ms=args.audio_lead_ms,
                                                      start_buffer_ms=args.start_buffer_ms,
                                                      echo_guard_ms=args.echo_guard_ms))
    settings.check_exposure()  # before loading a model: refuse an open port without a key at once
    check_ice_arguments(args)
    stt = open_recognizer_service(args)  # before the TTS model too: a bad --stt fails fast (ValueError: exit 2)
    logging.getLogger("agent.server.websocket").setLevel(logging.WARNING)  # one line per connection is too chatty
    import torch

    from agent.cli.engine_options import build_engine
    from agent.server.app import Server
    from tts_engine import load_model

    if args.threads:
        torch.set_num_threads(args.threads)
    model = load_model(args.model, device=args.device, precision=args.precision)
    engine = build_engine(model, args.compile, max_streams=args.max_streams)
    server = Server(engine, settings, model_name=args.model, rtc_settings=rtc_settings(args), stt=stt)

    def started(srv: Server) -> None:
        print(f"voicegate: serving {args.model} on http://{args.host}:{srv.port}/ (WebSocket /v1/session; "
              f"OpenAI POST /v1/audio/speech; ElevenLabs /v1/text-to-speech/VOICE/stream-input)",
              file=sys.stderr, flush=True)

    try:
        drained = asyncio.run(server.run(on_started=started))
    finally:
        engine.close()
    print("voicegate: stopped" if drained else "voicegate: stopped without draining (second signal)",
          file=sys.stderr)
    return 0 if drained else 1


def cmd_wyoming(args: argparse.Namespace) -> int:
    try:
        from agent.wyoming.handler import serve, settings_from_args
    except ImportError as exc:  # the `wyoming` package comes with the server extra
        print(f"error: voicegate wyoming needs the server extra (pip install 'voicegate[server]'): {exc}",
              file=sys.stderr)
        return 2
    settings = settings_from_args(args)  # bad flags fail before the model loads
    recognizer = open_recognizer_service(args)  # before the TTS model: a bad --stt fails in a second
    import torch

    from agent.cli.engine_options import build_engine
    from tts_engine import load_model

    if args.threads:
        torch.set_num_threads(args.threads)
    model = load_model(args.model, device=args.device, precision=args.precision)
    engine = build_engine(model, args.compile, max_streams=args.max_streams)
    try:
        return serve(engine, settings, args.model, recognizer)  # closes the recognizer service
    finally:
        engine.close()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="voicegate", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="log at INFO level")
    sub = parser.add_subparsers(dest="command", required=True)

    mk = sub.add_parser("make-checkpoint", help="write random weights in the official checkpoint layout")
    mk.add_argument("dir")
    mk.add_argument("--size", choices=("tiny", "0.6b", "1.7b"), default="tiny")
    mk.add_argument("--kind", choices=("custom_voice", "base", "voice_design"), default="custom_voice")
    mk.add_argument("--seed", type=int, default=0)
    mk.set_defaults(func=cmd_make_checkpoint)

    sy = sub.add_parser("synth", help="synthesize text to a WAV file")
    sy.add_argument("--model", default=DEFAULT_MODEL, help="checkpoint directory or hub id")
    sy.add_argument("--text", required=True)
    sy.add_argument("--speaker", help="preset speaker (CustomVoice; default: the first one)")
    sy.add_argument("--voice", help="a preset speaker or a saved voice (`voicegate voices list`)")
    sy.add_argument("--ref-audio", help="clone this recording on the fly (Base checkpoint; any format and rate)")
    sy.add_argument("--ref-text", help="transcript of --ref-audio (ICL cloning)")
    sy.add_argument("--language", default=None, help="default: auto, or the saved voice's language")
    sy.add_argument("--instruct", help="style instruction (1.7B CustomVoice, VoiceDesign)")
    sy.add_argument("--xvector", help=".npy speaker x-vector for a Base checkpoint")
    add_voices_dir(sy)
    sy.add_argument("--greedy", action="store_true", help="argmax after the official logits processors")
    sy.add_argument("--seed", type=int, default=0)
    sy.add_argument("--max-frames", type=int)
    sy.add_argument("--feed", choices=("all", "word", "char"), default="all")
    sy.add_argument("--non-streaming", action="store_true", help="the official non-streaming prompt layout")
    sy.add_argument("--eos-policy", choices=("default", "official"), default="default")
    sy.add_argument("--device", default="auto", help="auto | cpu | cuda[:N]")
    add_engine_arguments(sy, default="off")
    add_precision(sy)
    sy.add_argument("--out", required=True, help="output WAV (24 kHz mono 16-bit)")
    sy.add_argument("--codes-out", help="write the codes as int64 .npy of shape (T, 16)")
    sy.set_defaults(func=cmd_synth)

    sv = sub.add_parser("serve", help="the media server: browser page, WebSocket API, WebRTC, barge-in")
    sv.add_argument("--model", default=DEFAULT_MODEL, help="checkpoint directory or hub id")
    sv.add_argument("--host", default="127.0.0.1", help="bind address (non-loopback needs --api-key)")
    sv.add_argument("--port", type=int, default=8080)
    sv.add_argument("--device", default="auto", help="auto | cpu | cuda[:N]")
    add_engine_arguments(sv)
    add_precision(sv)
    sv.add_argument("--api-key", default=os.environ.get("VOICEGATE_API_KEY"),
                    help="required on /v1/session and /metrics (default: $VOICEGATE_API_KEY)")
    sv.add_argument("--max-sessions", type=int, default=32)
    sv.add_argument("--max-streams", type=int, default=16, help="engine cache rows (streams batched together)")
    sv.add_argument("--max-message-bytes", type=int, default=64 * 1024)
    sv.add_argument("--max-utterance-chars", type=int, default=4000)
    sv.add_argument("--audio-lead-ms", type=float, default=120.0, help="headless audio sent ahead of real time")
    sv.add_argument("--start-buffer-ms", type=float, default=0.0,
                    help="hold each utterance's first audio until this much is ready (an engine slower than "
                         "real time then plays without gaps, later)")
    sv.add_argument("--echo-guard-ms", type=float, default=0.0,
                    help="default: ignore user speech that starts this soon after playback starts")
    add_ice_arguments(sv)
    sv.add_argument("--engine-nice", type=int, default=5,
                    help="nice value of the engine thread, so that paced audio and barge-in win the CPU (0: off)")
    sv.add_argument("--static-dir", help="serve this folder at / instead of the bundled web_client")
    sv.add_argument("--cors-origin", action="append", metavar="ORIGIN",
                    help="a browser origin allowed to call the HTTP APIs cross-origin, e.g. https://app.example "
                         "(repeatable; '*' for any; default: none)")
    sv.add_argument("--voice-alias", action="append", metavar="NAME=VOICE[,NAME=VOICE]",
                    type=_alias_spec, help="answer to NAME as VOICE, e.g. alloy=vivian (repeatable; OpenAI's voice "
                                           "names have a default mapping: see docs/openai.md)")
    sv.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    add_stt_arguments(sv)
    add_voices_dir(sv)
    add_fleet_arguments(sv)
    sv.set_defaults(func=cmd_serve)

    wy = sub.add_parser("wyoming", help="Home Assistant: a Wyoming TTS server with streaming synthesis (and "
                                        "speech-to-text with --stt)")
    wy.add_argument("--model", default=DEFAULT_MODEL, help="checkpoint directory or hub id")
    wy.add_argument("--uri", default="tcp://127.0.0.1:10200",
                    help="tcp://HOST:PORT or unix://PATH (for Home Assistant on another machine: "
                         "tcp://0.0.0.0:10200; Wyoming has no authentication, expose it to your network only)")
    wy.add_argument("--zeroconf", nargs="?", const="voicegate", metavar="NAME",
                    help="announce the service to Home Assistant over mDNS (default name: voicegate; tcp:// only)")
    wy.add_argument("--device", default="auto", help="auto | cpu | cuda[:N]")
    add_engine_arguments(wy)
    add_precision(wy)
    wy.add_argument("--voice", help="voice for requests that name none (default: the catalogue's first)")
    wy.add_argument("--language", default="auto", help="language for requests that name none (name or ISO code)")
    wy.add_argument("--instruct", help="style instruction for every utterance (1.7B CustomVoice, VoiceDesign)")
    wy.add_argument("--seed", type=int, default=0, help="per-utterance sampling seed")
    wy.add_argument("--greedy", action="store_true", help="argmax after the official logits processors")
    wy.add_argument("--max-streams", type=int, default=16, help="engine cache rows (streams batched together)")
    wy.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    add_stt_arguments(wy)
    add_voices_dir(wy)
    wy.set_defaults(func=cmd_wyoming)
    add_voices_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format=LOG_FORMAT)
    try:
        return int(args.func(args))
    except (ValueError, FileNotFoundError) as exc:  # CheckpointError and bad input: one clear line
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
