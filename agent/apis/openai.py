"""OpenAI's speech API on the serve port: POST /v1/audio/speech, GET /v1/models, GET /v1/audio/voices
(and ElevenLabs' GET /v1/voices listing), as Starlette routes over an `ApiContext`.

A request is checked whole before any engine work: the key, the body (at most `speech.MAX_BODY_BYTES`, by
Content-Length or chunked, within `speech.BODY_TIMEOUT_S`), its fields, the voice. Errors are OpenAI-shaped JSON
({"error": {message, type, param, code}}); docs/openai.md has the table. The audio itself is an
`agent.apis.speech.SpeechResponse`: streamed frame by frame as the engine makes it.
"""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import parse_qs

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from agent.apis.context import ApiContext
from agent.apis.speech import (
    ApiError,
    ApiVoiceError,
    SpeechRequest,
    SpeechResponse,
    read_body,
    resolve_voice,
    split_text,
)
from agent.boundary import JsonInputError, clean_text, loads_object
from agent.media.encoder import FORMATS
from agent.media.tempo import MAX_SPEED, MIN_SPEED

SPEECH_PATH = "/v1/audio/speech"
STREAM_FORMATS = ("audio", "sse")
DEFAULT_FORMAT = "mp3"  # OpenAI's default


def error_response(err: ApiError) -> Response:
    """The JSON error of an OpenAI-shaped route (also the server's 404/405 on /v1/ paths)."""
    headers = dict(err.headers)
    if err.status == 401:
        headers["WWW-Authenticate"] = "Bearer"
    return JSONResponse(err.body(), err.status, headers={"Cache-Control": "no-store", **headers})


def routes(ctx: ApiContext) -> list[BaseRoute]:
    api = OpenAIApi(ctx)
    return [Route(SPEECH_PATH, api.speech, methods=["POST"]),
            Route("/v1/models", api.listing(api.models), methods=["GET"]),
            Route("/v1/audio/voices", api.listing(api.voices), methods=["GET"]),
            Route("/v1/voices", api.listing(api.elevenlabs_voices), methods=["GET"])]


class OpenAIApi:
    def __init__(self, ctx: ApiContext) -> None:
        self.ctx = ctx

    # ---- listings ----------------------------------------------------------------------------------
    def models(self) -> dict[str, Any]:
        info = self.ctx.info
        return {"object": "list", "data": [{"id": info.name, "object": "model", "created": int(self.ctx.started),
                                            "owned_by": "voicegate", "kind": info.kind}]}

    def voices(self) -> dict[str, Any]:
        aliases = self.ctx.info.aliases
        return {"object": "list", "data": [{"id": e.name, "object": "voice", "name": e.name, "kind": e.kind,
                                            "language": e.language, "instructions": e.instruct,
                                            "aliases": sorted(a for a, v in aliases.items() if v == e.name)}
                                           for e in self.ctx.info.entries]}

    def elevenlabs_voices(self) -> dict[str, Any]:
        return {"voices": [{"voice_id": e.name, "name": e.name, "category": e.kind,
                            "labels": {"language": e.language}} for e in self.ctx.info.entries]}

    def listing(self, build: Any) -> Any:
        async def endpoint(request: Request) -> Response:
            try:
                self._authorize(request)
            except ApiError as err:
                return self.error(err)
            self.ctx.metrics.api_requests_total.inc(api="openai", status="200")
            return JSONResponse(build(), headers={"Cache-Control": "no-store"})
        return endpoint

    # ---- the speech endpoint ---------------------------------------------------------------------
    async def speech(self, request: Request) -> Response:
        try:
            self._authorize(request)
            req = self._parse(await read_body(request))
            try:
                voice = resolve_voice(self.ctx.info, req.voice, None, req.instructions)
            except ApiVoiceError as exc:
                raise ApiError(400, exc.message, exc.param, "invalid_value") from None
        except ApiError as err:
            return self.error(err)
        segments = split_text(req.input, self.ctx.settings.segment_chars)
        return SpeechResponse(self.ctx, req, voice, segments, self.error)

    def error(self, err: ApiError) -> Response:
        self.ctx.metrics.errors_total.inc(code=err.code or "invalid_request")
        self.ctx.metrics.api_requests_total.inc(api="openai", status=str(err.status))
        return error_response(err)

    def _authorize(self, request: Request) -> None:
        query = parse_qs(request.scope["query_string"].decode("latin-1"))
        if not self.ctx.key.authorized(request.headers, query):
            raise ApiError(401, "missing or wrong API key (Authorization: Bearer KEY)", code="invalid_api_key")

    def _parse(self, raw: bytes) -> SpeechRequest:
        try:
            body = loads_object(raw or b"null")
        except JsonInputError as exc:
            raise ApiError(400, f"the body must be one JSON object: {exc}", code="invalid_json") from None

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

        model, text_in, instructions = text("model", True), text("input", True), text("instructions")
        assert model is not None and text_in is not None
        limit = self.ctx.settings.max_input_chars
        if len(text_in) > limit:
            raise ApiError(400, f"'input' is {len(text_in)} characters, over this server's limit of {limit} "
                                f"(split the text into several requests)", "input", "string_above_max_length")
        voice = body.get("voice")
        if isinstance(voice, dict):  # the newer SDKs may send {"id": name}
            voice = voice.get("id")
        if not isinstance(voice, str) or not voice:
            raise ApiError(400, "'voice' must name a voice (GET /v1/audio/voices lists them)", "voice",
                           "invalid_value")
        fmt = body.get("response_format") or DEFAULT_FORMAT
        if not isinstance(fmt, str) or fmt not in FORMATS:  # a list or an object is no format either
            raise ApiError(400, f"unsupported response_format {_short(fmt)}; choose one of {', '.join(FORMATS)}",
                           "response_format", "invalid_value")
        stream_format = body.get("stream_format") or "audio"
        if not isinstance(stream_format, str) or stream_format not in STREAM_FORMATS:
            raise ApiError(400, f"stream_format must be 'audio' or 'sse', not {_short(stream_format)}",
                           "stream_format", "invalid_value")
        speed = body.get("speed")
        if speed is None:
            speed = 1.0
        if not isinstance(speed, int | float) or isinstance(speed, bool) or not MIN_SPEED <= speed <= MAX_SPEED:
            raise ApiError(400, f"'speed' must be a number from {MIN_SPEED} to {MAX_SPEED}, not {_short(speed)}",
                           "speed", "invalid_value")
        return SpeechRequest(model, text_in, voice, instructions, fmt, stream_format == "sse", float(speed))


def _short(value: Any) -> str:
    return json.dumps(value)[:60]
