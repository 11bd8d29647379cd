"""What the compatible APIs share, and the streamed answer of POST /v1/audio/speech.

Shared: `ApiError` (OpenAI-shaped), `read_body` (bounded in size and time), `split_text` (long text -> engine-
sized segments) and `resolve_voice` (the catalogue's voice rules, its errors named by request parameter).

Long text -> pieces an engine stream can hold, cut where speech pauses anyway: an engine stream holds prompt +
frames in `max_positions` (about a minute of speech), so a long request is spoken as consecutive streams. Cuts
fall after a sentence end where one exists in the window, else at the last whitespace, else (one long word) at
the window's end. Pieces keep their whitespace: joined they are the text again.

The answer: the input (split into segments) goes into the engine's text track at once, and each 80 ms frame is
encoded (agent.media.encoder) and sent as one chunk as soon as the engine makes it; nothing waits for the whole
utterance. Sends wait while the client's socket is full (backpressure), and a client that disconnects cancels
the response at once: each segment's engine stream is stopped by the `with` block that holds it. The first
stream opens before the status line, so a voice the engine refuses is still a 400; after the first byte an
error can only cut the body short (no final chunk).
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import re
import time
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response, StreamingResponse
from starlette.types import Receive, Scope, Send

from agent.apis.context import ApiContext
from agent.media.encoder import AudioEncoder
from agent.media.frames import StreamFailed, frames
from agent.media.tempo import TimeStretch
from agent.settings import ENGINE_FRAME_MS
from agent.voices.catalogue import ModelInfo, ResolvedVoice
from agent.voices.errors import VoiceError

if TYPE_CHECKING:
    from tts_engine import Stream

log = logging.getLogger(__name__)

MAX_BODY_BYTES = 1024 * 1024  # more -> 413
BODY_TIMEOUT_S = 10.0  # the whole body must arrive this soon -> else 408 (a slow sender holds no task for long)


_SENTENCE_END = re.compile(r"[.!?;:。！？；：…]+[\"')\]»”’]*\s+|[。！？]")


def split_text(text: str, max_chars: int) -> list[str]:
    if max_chars < 1:
        raise ValueError("max_chars must be positive")
    pieces: list[str] = []
    pos = 0
    while len(text) - pos > max_chars:
        window = text[pos:pos + max_chars]
        cut = 0
        for match in _SENTENCE_END.finditer(window):
            cut = match.end()
        if cut == 0:
            space = max(window.rfind(" "), window.rfind("\n"), window.rfind("\t"))
            cut = space + 1 if space > 0 else max_chars
        pieces.append(window[:cut])
        pos += cut
    if pos < len(text) or not pieces:
        pieces.append(text[pos:])
    return pieces


ApiVoice = ResolvedVoice  # name, stream_args, warning: what the API modules read
PARAMS = {"instruct": "instructions"}  # VoiceError.field -> request parameter, where the two differ


class ApiVoiceError(VoiceError):
    """A VoiceError as an API reports it: `param` names the request parameter."""

    @property
    def param(self) -> str:
        return PARAMS.get(self.field, self.field)


def resolve_voice(info: ModelInfo, name: str, language: str | None = None,
                  instruct: str | None = None) -> ApiVoice:
    """An API request always names its voice (an empty name is an unknown voice, not the default)."""
    try:
        return info.resolve(name, language, instruct)
    except VoiceError as exc:
        raise ApiVoiceError(exc.message, exc.code, exc.field) from None


class ApiError(Exception):
    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None,
                 kind: str = "invalid_request_error", headers: Mapping[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.kind = status, message, param, code, kind
        self.headers = dict(headers or {})

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.code}}


async def read_body(request: Request) -> bytes:
    """The whole request body (Content-Length or chunked), bounded in size and time; ApiError otherwise."""
    too_large = ApiError(413, f"request body over {MAX_BODY_BYTES} bytes", code="request_too_large",
                         headers={"Connection": "close"})  # the rest of the body is not read
    declared = request.headers.get("content-length")  # digits only: the HTTP parser checked it
    if declared is not None and int(declared) > MAX_BODY_BYTES:
        raise too_large
    body = bytearray()
    try:
        async with asyncio.timeout(BODY_TIMEOUT_S):
            async for chunk in request.stream():
                body += chunk
                if len(body) > MAX_BODY_BYTES:
                    raise too_large
    except TimeoutError:
        raise ApiError(408, f"the request body did not arrive within {BODY_TIMEOUT_S:g} s",
                       code="request_timeout", headers={"Connection": "close"}) from None
    except ClientDisconnect:
        raise ApiError(400, "the client went away", code="client_disconnected") from None
    return bytes(body)



class StreamCut(Exception):
    """The audio cannot go on after its first byte: the connection closes without the final chunk."""


@dataclass(frozen=True)
class SpeechRequest:
    model: str
    input: str
    voice: str
    instructions: str | None
    response_format: str
    sse: bool
    speed: float = 1.0  # time-stretched without a pitch change (agent.media.tempo)


class SpeechResponse(Response):
    def __init__(self, ctx: ApiContext, req: SpeechRequest, voice: ApiVoice, segments: list[str],
                 on_error: Callable[[ApiError], Response]) -> None:
        self.ctx, self.req, self.voice, self.segments = ctx, req, voice, segments
        self.on_error = on_error  # the error response (and its metrics) of a refused first stream
        self.frames = 0
        self.background = None  # Response's field: nothing runs after the body

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            first = self._open(self.segments[0])
        except ApiError as err:
            await self.on_error(err)(scope, receive, send)
            return
        self.ctx.metrics.api_requests_total.inc(api="openai", status="200")
        encoder = AudioEncoder(self.req.response_format)
        # Content-Type as is: Starlette would append a charset to text/event-stream
        headers = {"Content-Type": "text/event-stream" if self.req.sse else encoder.content_type,
                   "X-Voicegate-Voice": self.voice.name, "Cache-Control": "no-store"}
        if self.voice.warning:
            headers["X-Voicegate-Warning"] = self.voice.warning
        started = time.monotonic()
        with first:
            body = StreamingResponse(self._chunks(first, encoder), headers=headers)
            try:
                await body(scope, receive, send)
            except StreamCut as exc:  # the server closes the connection: the client sees a truncated body
                log.warning("speech stream cut short: %s", exc)
                return
            finally:
                encoder.close()
        log.info("speech: %d chars, %d frames in %.2f s", len(self.req.input), self.frames,
                 time.monotonic() - started)

    async def _chunks(self, first: Stream, encoder: AudioEncoder) -> AsyncIterator[bytes]:
        stretch = TimeStretch(self.req.speed) if self.req.speed != 1.0 else None  # one across segments
        for i, segment in enumerate(self.segments):
            try:
                stream = first if i == 0 else self._open(segment)
            except ApiError as err:
                raise StreamCut(err.message) from None
            with stream:
                try:
                    async for frame in frames(stream):  # one small loop: each frame is one chunk
                        self.frames += 1
                        self.ctx.metrics.audio_seconds_total.inc(ENGINE_FRAME_MS / 1000.0)
                        pcm = stretch.push(frame.pcm) if stretch is not None else frame.pcm
                        if chunk := self._chunk(encoder.push(pcm)):
                            yield chunk
                except StreamFailed as failed:
                    raise StreamCut(f"engine stream failed: {failed.end.error}") from None
        tail = encoder.push(stretch.finish()) if stretch is not None else b""
        if chunk := self._chunk(tail + encoder.finish()):
            yield chunk
        if self.req.sse:
            usage = {"input_tokens": self._tokens(self.req.input), "output_tokens": self.frames}
            usage["total_tokens"] = usage["input_tokens"] + usage["output_tokens"]
            yield _sse({"type": "speech.audio.done", "usage": usage})

    def _open(self, text: str) -> Stream:
        """A stream holding the whole segment (the engine takes no row for text it refuses)."""
        try:
            return self.ctx.engine.open_stream(**self.voice.stream_args, seed=self.ctx.settings.seed, text=text)
        except ValueError as exc:
            raise ApiError(400, str(exc), "voice", "invalid_value") from None

    def _chunk(self, data: bytes) -> bytes:
        if data and self.req.sse:
            return _sse({"type": "speech.audio.delta", "audio": base64.b64encode(data).decode()})
        return data

    def _tokens(self, text: str) -> int:
        tok = self.ctx.tokenizer
        return len(tok.encode(text, add_special_tokens=False).ids) if tok is not None else len(text.split())


def _sse(event: dict[str, Any]) -> bytes:
    return f"data: {json.dumps(event)}\n\n".encode()
