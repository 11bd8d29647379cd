"""OpenAI's speech API on the serve port: POST /v1/audio/speech, GET /v1/models, GET /v1/audio/voices
(and ElevenLabs' GET /v1/voices listing).

One request is one flow, in the task agent.server.http_front gives it: the input (split into segments an engine
stream can hold, agent.apis.segments) goes into the engine's text track at once, and each 80 ms frame is encoded
(agent.media.encoder) and sent as a chunk as soon as the engine makes it; nothing waits for the whole utterance.
A client that disconnects cancels the task, and the `finally` cancels the engine stream before the next
step. Errors before the first byte are OpenAI-shaped JSON ({"error": {message, type, param, code}}); after
it, the stream is cut short (an HTTP status cannot change then). docs/openai.md lists what is honoured.
"""

from __future__ import annotations

import base64
import json
import logging
import time
from typing import TYPE_CHECKING, Any

from agent.apis.segments import split_text
from agent.json_input import JsonInputError, loads_object
from agent.media.encoder import FORMATS, AudioEncoder
from agent.media.frames import frames as stream_frames
from agent.server.http_front import HttpError, HttpExchange, HttpRequest, HttpRoutes
from agent.settings import ENGINE_FRAME_MS
from agent.text_input import clean_text
from agent.voices.resolve import ApiVoice, ApiVoiceError, resolve_voice

if TYPE_CHECKING:
    from agent.server.app import Server
    from tts_engine import Stream

log = logging.getLogger(__name__)

SPEECH_PATH = "/v1/audio/speech"
LISTINGS = ("/v1/models", "/v1/audio/voices", "/v1/voices")  # GET; /v1/voices is ElevenLabs' shape
STREAM_FORMATS = ("audio", "sse")
DEFAULT_FORMAT = "mp3"  # OpenAI's default


class ApiError(Exception):
    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None,
                 kind: str = "invalid_request_error") -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.kind = status, message, param, code, kind

    def body(self) -> bytes:
        return (json.dumps({"error": {"message": self.message, "type": self.kind, "param": self.param,
                                      "code": self.code}}) + "\n").encode()


class OpenAIRoutes(HttpRoutes):
    """The diverted (non-GET) requests of the serve port; today only the speech endpoint takes one."""

    def __init__(self, server: Server) -> None:
        self.server = server

    def claims(self, method: str, path: str) -> bool:
        # the listings too: websockets half-closes after a plain response and waits for the client, which a
        # keep-alive client (httpx, the openai SDK) never does until it is collected
        return method != "GET" or path in LISTINGS

    # ---- listings ----------------------------------------------------------------------------------
    def models(self) -> dict[str, Any]:
        info = self.server.info
        return {"object": "list", "data": [{"id": info.name, "object": "model", "created": int(self.server.started),
                                            "owned_by": "voicegate", "kind": info.kind}]}

    def voices(self) -> dict[str, Any]:
        info = self.server.info
        return {"object": "list", "data": [{"id": e.name, "object": "voice", "name": e.name, "kind": e.kind,
                                            "language": e.language, "instructions": e.instruct}
                                           for e in info.entries]}

    def listing(self, path: str) -> dict[str, Any]:
        if path == "/v1/models":
            return self.models()
        if path == "/v1/audio/voices":
            return self.voices()
        return {"voices": [{"voice_id": e.name, "name": e.name, "category": e.kind,
                            "labels": {"language": e.language}} for e in self.server.info.entries]}

    # ---- diverted requests -----------------------------------------------------------------------
    async def refuse(self, exchange: HttpExchange, error: HttpError) -> None:
        await self._error(exchange, ApiError(error.status, error.message))

    async def serve(self, request: HttpRequest, exchange: HttpExchange) -> None:
        metrics = self.server.metrics
        try:
            method = "GET" if request.path in LISTINGS else "POST"
            if request.path != SPEECH_PATH and method == "POST":
                raise ApiError(404, f"no route {request.method} {request.path}", code="not_found")
            if request.method != method:
                raise ApiError(405, f"{request.path} takes {method}", code="method_not_allowed")
            if not self.server.authorized(request.headers, request.query):
                raise ApiError(401, "missing or wrong API key (Authorization: Bearer KEY)", code="invalid_api_key")
            if method == "GET":
                listing = self.listing(request.path)
                await exchange.respond(200, (json.dumps(listing) + "\n").encode(), "application/json")
                return
            await self._speech(request, exchange)
        except ApiError as err:
            await self._error(exchange, err)
        except ConnectionError:
            log.info("POST %s: the client went away", request.path)
        except Exception:
            log.exception("POST %s failed", request.path)
            if not exchange.started and not exchange.closed:
                await self._error(exchange, ApiError(500, "internal error", kind="server_error"))
        finally:
            metrics.api_requests_total.inc(api="openai", status=str(exchange.status or 499))

    async def _error(self, exchange: HttpExchange, err: ApiError) -> None:
        if exchange.started:  # the audio has begun: nothing to do but end it early
            return
        self.server.metrics.errors_total.inc(code=err.code or "invalid_request")
        await exchange.respond(err.status, err.body(), "application/json",
                               {"WWW-Authenticate": "Bearer"} if err.status == 401 else None)

    def _parse(self, request: HttpRequest) -> dict[str, Any]:
        try:
            body = loads_object(request.body or b"null")
        except JsonInputError as exc:
            raise ApiError(400, f"the body must be one JSON object: {exc}", code="invalid_json") from None
        limit = self.server.settings.api.max_input_chars

        def text(name: str, required: bool = False) -> str | None:
            value = body.get(name)
            if value is None and not required:
                return None
            if isinstance(value, str):
                value = clean_text(value)
            if not isinstance(value, str) or (required and not value.strip()):
                raise ApiError(400, f"'{name}' must be a non-empty string", name,
                               "missing_required_parameter" if value is None else "invalid_value")
            return value

        req: dict[str, Any] = {"model": text("model", True), "input": text("input", True),
                               "instructions": text("instructions")}
        if len(req["input"]) > limit:
            raise ApiError(400, f"'input' is {len(req['input'])} characters, over this server's limit of {limit} "
                                f"(split the text into several requests)", "input", "string_above_max_length")
        voice = body.get("voice")
        if isinstance(voice, dict):  # the newer SDKs may send {"id": name}
            voice = voice.get("id")
        if not isinstance(voice, str) or not voice:
            raise ApiError(400, "'voice' must name a voice (GET /v1/audio/voices lists them)", "voice",
                           "invalid_value")
        req["voice"] = voice
        fmt = body.get("response_format") or DEFAULT_FORMAT
        if fmt not in FORMATS:
            raise ApiError(400, f"unsupported response_format {fmt!r}; choose one of {', '.join(FORMATS)}",
                           "response_format", "invalid_value")
        req["response_format"] = fmt
        stream_format = body.get("stream_format") or "audio"
        if stream_format not in STREAM_FORMATS:
            raise ApiError(400, f"stream_format must be 'audio' or 'sse', not {stream_format!r}", "stream_format",
                           "invalid_value")
        req["stream_format"] = stream_format
        speed = body.get("speed")
        if speed is not None and (not isinstance(speed, int | float) or isinstance(speed, bool) or speed != 1.0):
            raise ApiError(400, "only speed 1.0 is supported (the model has no rate control; time-stretching "
                                "would change the voice)", "speed", "unsupported_value")
        return req

    async def _speech(self, request: HttpRequest, exchange: HttpExchange) -> None:
        req = self._parse(request)
        info = self.server.info
        try:
            voice = resolve_voice(info, req["voice"], None, req["instructions"])
        except ApiVoiceError as exc:
            raise ApiError(400, exc.message, exc.param, "invalid_value") from None
        segments = split_text(req["input"], self.server.settings.api.segment_chars)
        encoder = AudioEncoder(req["response_format"])
        sse = req["stream_format"] == "sse"
        headers = {"X-Voicegate-Voice": voice.name}
        if voice.warning:
            headers["X-Voicegate-Warning"] = voice.warning
        frames = 0
        started = time.monotonic()
        try:
            for i, segment in enumerate(segments):
                # each segment's stream lives in its block: cancelled on every way out (an error, a client
                # that went away); a voice the engine refuses fails the first one before any byte is sent
                with self._open(voice, segment) as stream:
                    if i == 0:
                        await exchange.start(200, "text/event-stream" if sse else encoder.content_type, headers)
                    async for frame in stream_frames(stream):
                        frames += 1
                        await self._send(exchange, encoder.push(frame.pcm), sse)
                        self.server.metrics.audio_seconds_total.inc(ENGINE_FRAME_MS / 1000.0)
                    end = stream.end
                if end is not None and end.reason == "error":
                    log.warning("speech stream failed: %s", end.error)
                    return  # cut short: the client sees a truncated body
            await self._send(exchange, encoder.finish(), sse)
            if sse:
                usage = {"input_tokens": self._tokens(req["input"]), "output_tokens": frames}
                usage["total_tokens"] = usage["input_tokens"] + usage["output_tokens"]
                await exchange.write(_sse({"type": "speech.audio.done", "usage": usage}))
            await exchange.end()
            log.info("speech: %d chars, %d frames in %.2f s", len(req["input"]), frames, time.monotonic() - started)
        finally:
            encoder.close()

    def _open(self, voice: ApiVoice, text: str) -> Stream:
        """A stream holding the whole segment (the engine takes no row for text it refuses)."""
        try:
            return self.server.engine.open_stream(**voice.stream_args, seed=self.server.settings.api.seed,
                                                  text=text)
        except ValueError as exc:
            raise ApiError(400, str(exc), "voice", "invalid_value") from None

    @staticmethod
    async def _send(exchange: HttpExchange, data: bytes, sse: bool) -> None:
        if not data:
            return
        if sse:
            data = _sse({"type": "speech.audio.delta", "audio": base64.b64encode(data).decode()})
        await exchange.write(data)

    def _tokens(self, text: str) -> int:
        tok = self.server.tokenizer
        return len(tok.encode(text, add_special_tokens=False).ids) if tok is not None else len(text.split())


def _sse(event: dict[str, Any]) -> bytes:
    return f"data: {json.dumps(event)}\n\n".encode()
