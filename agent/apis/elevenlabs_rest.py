"""ElevenLabs' REST text-to-speech: POST /v1/text-to-speech/{voice_id} (whole) and .../stream (chunked).

    body: {"text": ..., "model_id"?, "voice_settings"?, "language_code"?}   (model_id, voice_settings: ignored)
    query: output_format (default mp3_44100_128, ElevenLabs' own), xi_api_key; header xi-api-key

The text goes into the engine at once (split into engine-sized segments, agent.apis.speech); the stream
variant sends each 80 ms frame's encoded bytes as they are made, the whole one answers once the audio is
complete, with its length. Errors are ElevenLabs-shaped: {"detail": {"status", "message"}} with 400 (bad body
or format), 401 (key), 404 (unknown voice), 413/408 (body too large / too slow). LiveKit's ElevenLabs plugin
calls the stream variant from `synthesize()`.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING
from urllib.parse import parse_qs

from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import BaseRoute, Route

from agent.apis.context import ApiContext
from agent.apis.output_format import OutputEncoder, OutputFormat, parse_output_format
from agent.apis.speech import ApiError, ApiVoice, ApiVoiceError, read_body, resolve_voice, split_text
from agent.boundary import JsonInputError, clean_text, loads_object
from agent.media.encoder import FORMATS
from agent.media.frames import StreamFailed, frames
from agent.settings import ENGINE_FRAME_MS

if TYPE_CHECKING:
    from tts_engine import Stream

log = logging.getLogger(__name__)

REST_DEFAULT_FORMAT = "mp3_44100_128"


class RestError(Exception):
    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


def routes(ctx: ApiContext) -> list[BaseRoute]:
    rest = ElevenLabsRest(ctx)
    return [Route("/v1/text-to-speech/{voice_id}", rest.whole, methods=["POST"]),
            Route("/v1/text-to-speech/{voice_id}/stream", rest.stream, methods=["POST"])]


class ElevenLabsRest:
    def __init__(self, ctx: ApiContext) -> None:
        self.ctx = ctx

    async def whole(self, request: Request) -> Response:
        return await self._answer(request, streamed=False)

    async def stream(self, request: Request) -> Response:
        return await self._answer(request, streamed=True)

    async def _answer(self, request: Request, streamed: bool) -> Response:
        try:
            fmt, voice, text = await self._check(request)
            segments = split_text(text, self.ctx.settings.segment_chars)
            first = self._open(voice, segments[0])  # a voice the engine refuses is still a 400
        except RestError as err:
            return self._error(err)
        self.ctx.metrics.api_requests_total.inc(api="elevenlabs", status="200")
        media_type = "audio/pcm" if fmt.encoding == "pcm" else FORMATS[fmt.encoding].content_type
        chunks = self._chunks(first, voice, segments, fmt)
        if streamed:
            return StreamingResponse(chunks, media_type=media_type, headers={"Cache-Control": "no-store"})
        return Response(b"".join([chunk async for chunk in chunks]), media_type=media_type)

    async def _check(self, request: Request) -> tuple[OutputFormat, ApiVoice, str]:
        query = parse_qs(request.scope["query_string"].decode("latin-1"))
        if not self.ctx.key.authorized(request.headers, query):
            raise RestError(401, "invalid_api_key", "missing or wrong API key (xi-api-key header)")
        try:
            fmt = parse_output_format((query.get("output_format") or [REST_DEFAULT_FORMAT])[0])
        except ValueError as exc:
            raise RestError(400, "invalid_output_format", str(exc)) from None
        try:
            body = loads_object(await read_body(request) or b"null")
        except ApiError as err:
            raise RestError(err.status, err.code or "invalid_body", err.message) from None
        except JsonInputError as exc:
            raise RestError(400, "invalid_json", f"the body must be one JSON object: {exc}") from None
        text = body.get("text")
        if not isinstance(text, str) or not clean_text(text).strip():
            raise RestError(400, "invalid_text", "'text' must be a non-empty string")
        text = clean_text(text)
        if len(text) > self.ctx.settings.max_input_chars:
            raise RestError(400, "text_too_long", f"'text' is {len(text)} characters, over this server's limit of "
                                                  f"{self.ctx.settings.max_input_chars}")
        language = body.get("language_code")
        if language is not None and not isinstance(language, str):
            raise RestError(400, "invalid_language", "'language_code' must be a string")
        try:
            voice = resolve_voice(self.ctx.info, request.path_params["voice_id"], language)
        except ApiVoiceError as exc:
            status = 404 if exc.param == "voice" else 400
            raise RestError(status, "voice_not_found" if status == 404 else "invalid_language", exc.message) from None
        return fmt, voice, text

    def _open(self, voice: ApiVoice, text: str) -> Stream:
        try:
            return self.ctx.engine.open_stream(**voice.stream_args, seed=self.ctx.settings.seed, text=text)
        except ValueError as exc:
            raise RestError(400, "invalid_request", str(exc)) from None

    async def _chunks(self, first: Stream, voice: ApiVoice, segments: list[str],
                      fmt: OutputFormat) -> AsyncIterator[bytes]:
        """Each segment's frames, encoded as one continuous stream; every engine stream stops on any way out."""
        encoder = OutputEncoder(fmt)
        try:
            for i, segment in enumerate(segments):
                with first if i == 0 else self._open(voice, segment) as stream:
                    async for frame in frames(stream):
                        self.ctx.metrics.audio_seconds_total.inc(ENGINE_FRAME_MS / 1000.0)
                        if data := encoder.push(frame.pcm):
                            yield data
                    if tail := encoder.end_utterance(stopped=False):
                        yield tail
            if data := encoder.finish():
                yield data
        except (StreamFailed, RestError) as exc:  # after the first byte: the connection is cut, not ended
            log.warning("elevenlabs speech cut short: %s", exc)
            raise
        finally:
            first.cancel()
            encoder.close()

    def _error(self, err: RestError) -> Response:
        self.ctx.metrics.errors_total.inc(code=err.code)
        self.ctx.metrics.api_requests_total.inc(api="elevenlabs", status=str(err.status))
        return JSONResponse({"detail": {"status": err.code, "message": err.message}}, status_code=err.status)
