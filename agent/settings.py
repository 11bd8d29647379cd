"""The media server's limits and defaults, in one place (the CLI maps its flags onto these).

Every bound that protects the server from a client (sizes, counts, queues) is a named field here, so a
test or a deployment can change it without touching the code that enforces it.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from pathlib import Path

SAMPLE_RATE = 24000  # engine PCM: s16le mono
ENGINE_FRAME_MS = 80  # one engine frame (12.5 Hz codec)
ENGINE_FRAME_SAMPLES = SAMPLE_RATE * ENGINE_FRAME_MS // 1000  # 1920
ENGINE_FRAME_BYTES = ENGINE_FRAME_SAMPLES * 2  # 3840 bytes of s16le per binary WebSocket frame
RTP_FRAME_MS = 20  # one WebRTC audio frame: what the outbound track sends (80 ms frames break Chrome)


@dataclass
class SessionSettings:
    """Per-session limits and playout behaviour."""

    max_utterance_chars: int = 4000  # text accepted into one utterance; more -> error "text_limit"
    max_queued_utterances: int = 16  # utterances waiting behind the current one; more -> "queue_full"
    max_connections: int = 4  # the creating connection plus joined producers
    audio_lead_ms: float = 120.0  # headless ("websocket"/"none"): audio sent at most this far ahead of play
    start_buffer_ms: float = 0.0  # hold an utterance's first audio until this much is ready (slow engines)
    rtc_queue_ms: float = 160.0  # WebRTC: engine audio kept queued in the outbound track (flushed on barge-in)
    max_outgoing_bytes: int = 512 * 1024  # per connection; a reader this far behind is closed (slow consumer)
    webrtc_playout_delay_ms: float = 50.0  # sent -> heard in a browser (jitter buffer + output), for spoken_text
    chars_per_second: float = 14.0  # speaking rate for spoken_text, in weighted characters per second
    cjk_char_weight: float = 3.0  # a CJK ideograph / kana / hangul syllable counts as this many characters
    echo_guard_ms: float = 0.0  # default of the session setting (see docs/protocol.md, "Echo guard")
    barge_in: bool = True  # default of the session setting: user speech interrupts playback


@dataclass
class ApiSettings:
    """The compatible APIs (docs/openai.md, docs/elevenlabs.md): their limits and fixed choices."""

    max_input_chars: int = 4096  # POST /v1/audio/speech `input` (OpenAI's own limit); more -> 400
    segment_chars: int = 400  # a long input is spoken as engine streams of at most this (split at sentences)
    seed: int = 0  # sampling seed of every API stream: the same text and voice give the same audio
    max_contexts: int = 5  # ElevenLabs multi-stream-input: open contexts per socket (ElevenLabs' own limit)
    max_message_bytes: int = 64 * 1024  # one ElevenLabs text message; more -> error, socket lives on
    max_queued_utterances: int = 8  # ElevenLabs: flushed utterances waiting per context; more -> queue_full


@dataclass
class ServerSettings:
    host: str = "127.0.0.1"
    port: int = 8080
    api_key: str | None = None  # required on /v1/session and /metrics when set; required off loopback
    max_sessions: int = 32
    max_message_bytes: int = 64 * 1024  # a larger client message gets error "message_too_large"
    max_frame_bytes: int = 1024 * 1024  # hard WebSocket limit: larger frames close the connection (1009)
    max_incoming_queue: int = 16  # websockets receive queue (frames) before TCP backpressure
    write_limit: int = 32 * 1024  # websockets write buffer high-water mark (bytes)
    socket_send_buffer: int | None = None  # SO_SNDBUF for accepted sockets (None: the kernel's autotuning)
    compression: bool = False  # permessage-deflate: costs ~0.4 ms per PCM frame (noise does not compress)
    ping_interval: float | None = 20.0
    ping_timeout: float | None = 20.0
    # The engine thread's CPU priority below the event loop's (Linux nice value of that thread). On a busy CPU the
    # loop (paced audio, barge-in) must win: nice 5 cut frame lateness p99 from 22 to 1.8 ms at 8 sessions
    # on 2 cores (bench/server.py) and the engine's throughput did not drop. 0 leaves it alone.
    engine_nice: int = 5
    shutdown_grace_s: float = 5.0  # Server.shutdown() called directly: time left for in-flight utterances
    # SIGTERM/SIGINT (Server.drain): how long utterances in flight may play on before their sessions close for a
    # restart. Kubernetes' terminationGracePeriodSeconds must exceed it plus the preStop sleep (docs/scaling.md)
    drain_grace_s: float = 30.0
    # Streams this replica serves in real time (the autoscaler's target; set it from bench figures). None: the
    # engine's max_streams
    capacity_streams: int | None = None
    static_dir: Path | None = None  # the page at "/" (default: the installed web_client package)
    voices_dir: Path | None = None  # saved voices next to the presets (None: presets only; CLI: default dir)
    # browser origins allowed to call the HTTP APIs cross-origin (CORS), e.g. "https://app.example"; "*" for any.
    # Empty: no CORS headers (same-origin pages and non-browser clients only)
    cors_origins: tuple[str, ...] = ()
    voice_aliases: dict[str, str] = field(default_factory=dict)  # alias -> voice (agent.voices.aliases)
    # A fleet of replicas (docs/protocol.md, "Replicas"): session ids start with `replica_id.` (None: the host
    # name); `join_url` is absolute under `public_url` when set, else the path alone
    replica_id: str | None = None
    public_url: str | None = None
    session: SessionSettings = field(default_factory=SessionSettings)
    api: ApiSettings = field(default_factory=ApiSettings)

    def check_exposure(self) -> None:
        """A server reachable from other machines must have an API key (ValueError says why)."""
        if self.api_key:
            return
        if not is_loopback(self.host):
            raise ValueError(f"refusing to listen on {self.host!r} without an API key: anyone who can reach "
                             f"this address could speak through the server. Pass --api-key KEY (or set "
                             f"VOICEGATE_API_KEY), or bind to 127.0.0.1.")


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a host name: may resolve anywhere
