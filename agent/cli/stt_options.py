"""Command-line options of the local speech recognizer, shared by `serve` and `wyoming`: --stt and friends.

`--stt none|faster-whisper[:MODEL_OR_DIR]` is checked at parse time (a typo fails before any model loads);
`open_recognizer_service(args)` loads the model (local files only) and returns the one RecognizerService
the server shares between all its sessions, or None for `--stt none`.
"""

from __future__ import annotations

import argparse
import sys
import time

from agent.speech_in.recognizer import SttChoice, SttError, load_recognizer, parse_stt
from agent.speech_in.service import RecognizerService, ServiceSettings

STT_HELP = ("local speech recognition of the user's turns: none (default), or faster-whisper[:MODEL_OR_DIR] "
            "(a CTranslate2 Whisper directory, or a model name already in the local Hugging Face cache; "
            "default model: small); needs the stt extra")


def _stt_spec(spec: str) -> SttChoice | None:
    try:
        return parse_stt(spec)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc).removeprefix("--stt: ")) from None


def add_stt_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--stt", type=_stt_spec, default=None, metavar="none|faster-whisper[:MODEL_OR_DIR]",
                        help=STT_HELP)
    parser.add_argument("--stt-device", default="cpu", choices=("cpu", "cuda", "auto"),
                        help="where the recognizer runs (cuda: float16; cpu: int8) (default: cpu)")
    parser.add_argument("--stt-threads", type=int, default=0,
                        help="recognizer CPU threads (0: CTranslate2's default)")
    parser.add_argument("--stt-max-pending", type=int, default=16,
                        help="recognition requests waiting, all sessions together; a final beyond it is "
                             "refused with stt_busy (default: 16)")


def open_recognizer_service(args: argparse.Namespace) -> RecognizerService | None:
    """Load the chosen recognizer: None for --stt none; ValueError (one clear line) when it cannot load."""
    choice: SttChoice | None = args.stt
    if choice is None:
        return None
    if args.stt_max_pending < 1:
        raise ValueError("--stt-max-pending must be >= 1")
    started = time.perf_counter()
    try:
        recognizer = load_recognizer(choice, device=args.stt_device, threads=args.stt_threads)
    except SttError as exc:
        raise ValueError(f"--stt {choice.backend}: {exc.message}") from None
    print(f"voicegate: speech recognizer {choice.backend} ({choice.model or 'default model'}) loaded in "
          f"{time.perf_counter() - started:.1f} s", file=sys.stderr, flush=True)
    return RecognizerService(recognizer, ServiceSettings(max_pending=args.stt_max_pending))
