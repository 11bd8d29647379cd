"""Voice in: user turns cut from the mic (turns), a pluggable local recognizer (recognizer, faster_whisper),
one shared recognizer service off the event loop (service), and a session's turns -> transcripts (transcriber).

faster-whisper is imported only when that backend is built (the `stt` extra)."""

from agent.speech_in.recognizer import (
    STT_BUSY,
    STT_FAILED,
    STT_UNAVAILABLE,
    Recognizer,
    SttChoice,
    SttError,
    Transcript,
    Word,
    load_recognizer,
    parse_stt,
)
from agent.speech_in.service import RecognizerService, ServiceSettings
from agent.speech_in.transcriber import TranscriberSettings, UserTranscriber
from agent.speech_in.turns import TurnAudio, TurnCutter, TurnEnded, TurnSettings, TurnStarted

__all__ = ["STT_BUSY", "STT_FAILED", "STT_UNAVAILABLE", "Recognizer", "RecognizerService", "ServiceSettings",
           "SttChoice", "SttError", "TranscriberSettings", "Transcript", "TurnAudio", "TurnCutter", "TurnEnded",
           "TurnSettings", "TurnStarted", "UserTranscriber", "Word", "load_recognizer", "parse_stt"]
