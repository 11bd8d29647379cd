"""ElevenLabs' streaming-input WebSockets on the serve port (docs/elevenlabs.md lists what is honoured).

    /v1/text-to-speech/{voice_id}/stream-input          one implicit context; {"text": ""} ends it
    /v1/text-to-speech/{voice_id}/multi-stream-input    up to `max_contexts` contexts, named by context_id

Text of any size goes straight into the context's engine stream (`push_text`): nothing is buffered, so
`chunk_length_schedule` and `try_trigger_generation` have nothing to do. `flush` ends the current utterance
(the engine finishes it at once); text after it starts the next one, which plays after it in the same
context. `close_context` ends a context: flushed text is spoken to its end, unflushed text is dropped and its
engine stream stopped at once (pipecat sends flush + close_context at the end of a turn, and close_context
alone on an interruption), then {"isFinal": true} follows the context's last audio.

Each context has one task that sends its audio, utterance after utterance, base64 in the socket's
`output_format` (raw PCM at a rate, MP3, Ogg Opus or G.711: agent.apis.output_format), encoded frame by frame
as one continuous stream per context; with `sync_alignment=true` each audio message carries `alignment` (and
the same as `normalizedAlignment`): the characters it speaks and their estimated times (agent.session.alignment),
in ms from the context's first audio. A context holds at most `max_queued_utterances` flushed utterances waiting
for their turn (more: `queue_full`); an engine failure ends the context with `engine_error`, then isFinal. The reader never waits on audio; a socket that closes cancels every context's task
and engine stream. Bad messages get {"error", "message"} and the socket stays usable. A handshake that cannot
open (unknown voice or language, a format we do not make, a wrong key) is answered with an HTTP status and a
text body instead of the upgrade; docs/elevenlabs.md has the table of statuses, error codes and close codes.
"""

from __future__ import annotations

import asyncio
import base64
import collections
import contextlib
import json
import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs

from starlette.responses import PlainTextResponse
from starlette.routing import BaseRoute, WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect, WebSocketDisconnected

from agent.apis.context import ApiContext
from agent.apis.output_format import OutputEncoder, OutputFormat, parse_output_format
from agent.apis.speech import ApiVoice, ApiVoiceError, resolve_voice
from agent.boundary import JsonInputError, clean_text, loads_object
from agent.media.frames import StreamFailed, frames
from agent.session.alignment import Alignment, CharTimeline
from agent.session.protocol import CLOSE_GOING_AWAY, CLOSE_POLICY
from agent.settings import ENGINE_FRAME_MS, SessionSettings

if TYPE_CHECKING:
    from tts_engine import Stream

log = logging.getLogger(__name__)

DEFAULT_FORMAT = "pcm_24000"  # sockets (ElevenLabs' own default is mp3_44100_128: ask for it by name)
DEFAULT_CONTEXT = "default"  # multi-stream-input text without a context_id


class SocketGone(Exception):
    """The socket closed under a send (the reader learns it from the close itself)."""


def routes(ctx: ApiContext) -> list[BaseRoute]:
    async def stream_input(ws: WebSocket) -> None:
        await serve_socket(ctx, ws, multi=False)

    async def multi_stream_input(ws: WebSocket) -> None:
        await serve_socket(ctx, ws, multi=True)

    return [WebSocketRoute("/v1/text-to-speech/{voice_id}/stream-input", stream_input),
            WebSocketRoute("/v1/text-to-speech/{voice_id}/multi-stream-input", multi_stream_input)]


async def serve_socket(ctx: ApiContext, ws: WebSocket, multi: bool) -> None:
    """One socket: refused before the upgrade (a status and a text body), or served until it closes."""
    query = parse_qs(ws.scope["query_string"].decode("latin-1"))
    refusal = refuse_reason(ctx, ws.path_params["voice_id"], query)
    # no key at all: the first message may bring it (ElevenLabs' xi_api_key); a wrong one: refused now
    present = ctx.key.present(ws.headers, query)
    if present and not ctx.key.authorized(ws.headers, query):
        refusal = (401, "wrong API key")
    if refusal is not None:
        ctx.metrics.api_requests_total.inc(api="elevenlabs", status=str(refusal[0]))
        ctx.metrics.errors_total.inc(code="unauthorized" if refusal[0] == 401 else "bad_request")
        await ws.send_denial_response(PlainTextResponse(refusal[1] + "\n", refusal[0]))
        return
    await ws.accept()
    voice = handshake_voice(ctx, ws.path_params["voice_id"], query)
    align = (query.get("sync_alignment") or ["false"])[0].lower() == "true"
    await ElevenLabsSocket(ctx, ws, multi, voice, output_format(query), align,
                           True if present else None).run()


def output_format(query: dict[str, list[str]]) -> OutputFormat:
    """The `output_format` query parameter (ValueError for formats we do not make)."""
    return parse_output_format((query.get("output_format") or [DEFAULT_FORMAT])[0])


def handshake_voice(ctx: ApiContext, voice_id: str, query: dict[str, list[str]]) -> ApiVoice:
    """The voice and language of a socket, checked before the WebSocket opens (ApiVoiceError, ValueError)."""
    output_format(query)
    language = (query.get("language_code") or [None])[0]
    return resolve_voice(ctx.info, voice_id, language)


@dataclass(eq=False)
class Context:
    """One context's utterances (engine streams, in order) and the task that sends their audio."""

    id: str | None  # None: stream-input's implicit context
    streams: collections.deque[Stream] = field(default_factory=collections.deque)
    open: Stream | None = None  # taking text (unflushed)
    closing: bool = False
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task[None] | None = None


class ElevenLabsSocket:
    def __init__(self, ctx: ApiContext, ws: WebSocket, multi: bool, voice: ApiVoice, fmt: OutputFormat,
                 align: bool, authed: bool | None) -> None:
        self.ctx, self.ws, self.multi, self.voice, self.format, self.align = ctx, ws, multi, voice, fmt, align
        self.authed = authed  # None: no key at the handshake (the first message must bring it, when one is set)
        self.contexts: dict[str | None, Context] = {}
        self.closing = False

    # ---- reading -------------------------------------------------------------------------------
    async def run(self) -> None:
        self.ctx.metrics.api_requests_total.inc(api="elevenlabs", status="101")
        try:
            while not self.closing:
                message = await self.ws.receive()
                if message["type"] == "websocket.disconnect":
                    return
                text = message.get("text")
                await self.handle(text if text is not None else message.get("bytes") or b"")
            # close_socket, or the end of a stream-input: the audio first, then the close
            await asyncio.gather(*(c.task for c in self.contexts.values() if c.task is not None),
                                 return_exceptions=True)
            await self._close_socket(1000, "done")
        except asyncio.CancelledError:  # the server is shutting down
            await self._close_socket(CLOSE_GOING_AWAY, "server shutting down")
            raise
        except SocketGone:
            pass
        finally:
            for ctx in self.contexts.values():
                self._stop(ctx)
            tasks = [c.task for c in self.contexts.values() if c.task is not None]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    async def handle(self, data: str | bytes) -> None:
        limit = self.ctx.settings.max_message_bytes
        if isinstance(data, bytes):
            return await self._error("invalid_message", "binary frames are not part of this API; send JSON text")
        if len(data) > limit:
            return await self._error("message_too_large", f"a message may hold {limit} bytes")
        try:
            msg = loads_object(data)
        except JsonInputError as exc:
            return await self._error("invalid_message", f"a message is one JSON object: {exc}")
        if self.authed is None:  # no key at the handshake: the first message must bring it
            self.authed = self.ctx.key.authorized(self.ws.headers, {}, str(msg.get("xi_api_key") or ""))
        if not self.authed:
            await self._error("invalid_api_key", "missing or wrong API key (xi-api-key header, ?xi_api_key=, "
                                                 "or the init message's xi_api_key)")
            await self._close_socket(CLOSE_POLICY, "unauthorized")
            self.closing = True
            return None
        text, cid = msg.get("text"), msg.get("context_id", msg.get("contextId"))
        if text is not None and not isinstance(text, str):
            return await self._error("invalid_message", "'text' must be a string")
        if text:
            text = clean_text(text)
        if cid is not None and not isinstance(cid, str):
            return await self._error("invalid_message", "'context_id' must be a string")
        return await self._apply(msg, text, cid if self.multi else None)

    async def _apply(self, msg: dict[str, Any], text: str | None, cid: str | None) -> None:
        """One well-formed message's verbs (see the module docstring)."""
        if msg.get("close_socket") is True:
            for ctx in self.contexts.values():
                self._close(ctx)
            self.closing = True
            return None
        if self.multi and cid is None:
            if not text:
                return None  # a keepalive
            cid = DEFAULT_CONTEXT
        ctx = self.contexts.get(cid)
        if msg.get("close_context") is True:
            if ctx is None:
                return await self._error("context_not_found", f"no open context {cid!r}", cid)
            self._close(ctx)
            return None
        if ctx is None or ctx.closing:
            if self.multi and not text and not msg.get("flush"):
                return None  # the keepalive of a context that is gone, or an empty init
            if ctx is not None:  # its id names a new context once its audio is done
                return await self._error("context_closing", f"context {cid!r} is closing", cid)
            live = sum(1 for c in self.contexts.values() if not c.closing)
            limit = self.ctx.settings.max_contexts
            if self.multi and live >= limit:
                return await self._error("max_active_conversations",
                                         f"{live} contexts are open (limit {limit}); close one first", cid)
            ctx = self._new_context(cid)
        if text == "" and not self.multi:  # stream-input's end of input: all of it spoken, isFinal, close
            self._flush(ctx)
            self._close(ctx)
            self.closing = True
            return None
        init = not self.multi and ctx.open is None and not ctx.streams and not (text or "").strip()
        if text and not init:  # (stream-input's init message is a lone space)
            refused = self._push(ctx, text)
            if refused is not None:
                code = "queue_full" if refused.endswith("wait for their audio") else "text_limit"
                return await self._error(code, refused, cid)
        if msg.get("flush") is True:
            self._flush(ctx)
        return None

    async def _error(self, code: str, message: str, cid: str | None = None) -> None:
        self.ctx.metrics.errors_total.inc(code=code)
        body: dict[str, Any] = {"error": code, "message": message}
        if cid is not None:
            body["contextId"] = cid
        await self._send_text(json.dumps(body))

    async def _send_text(self, text: str) -> None:
        try:
            await self.ws.send_text(text)
        except (WebSocketDisconnect, WebSocketDisconnected):
            raise SocketGone from None

    async def _close_socket(self, code: int, reason: str) -> None:
        with contextlib.suppress(WebSocketDisconnect, WebSocketDisconnected):  # closed already
            await self.ws.close(code, reason)

    # ---- contexts ------------------------------------------------------------------------------
    def _new_context(self, cid: str | None) -> Context:
        ctx = Context(cid)
        self.contexts[cid] = ctx
        ctx.task = asyncio.get_running_loop().create_task(self._play(ctx), name=f"elevenlabs-{cid}")

        def forget(task: asyncio.Task[None]) -> None:
            if not task.cancelled() and task.exception() is not None and not isinstance(
                    task.exception(), SocketGone):
                log.error("elevenlabs context %r failed", cid, exc_info=task.exception())
            if self.contexts.get(cid) is ctx and not self.closing:
                del self.contexts[cid]  # done: its id may open a new context

        ctx.task.add_done_callback(forget)
        return ctx

    def _push(self, ctx: Context, text: str) -> str | None:
        """Text into the context's open utterance (opened by the first text after a flush); an error or None."""
        if ctx.open is None:
            waiting = len(ctx.streams)
            if waiting >= self.ctx.settings.max_queued_utterances:  # each waiting stream holds an engine slot
                return (f"{waiting} utterances of this context are waiting (limit "
                        f"{self.ctx.settings.max_queued_utterances}); wait for their audio")
            ctx.open = self.ctx.engine.open_stream(**self.voice.stream_args, seed=self.ctx.settings.seed)
            ctx.streams.append(ctx.open)
            ctx.wake.set()
        try:
            ctx.open.push_text(text)
        except ValueError as exc:  # over the engine's per-utterance limit
            return f"{exc}; flush between sentences"
        return None

    @staticmethod
    def _flush(ctx: Context) -> None:
        """End the open utterance: the engine speaks it to its end; the next text opens another."""
        if ctx.open is not None:
            ctx.open.finish()
            ctx.open = None

    def _close(self, ctx: Context) -> None:
        """No more text: unflushed text is dropped (its stream stops now); flushed text plays to its end."""
        ctx.closing = True
        if ctx.open is not None:
            ctx.open.cancel()
            ctx.open = None
        ctx.wake.set()

    @staticmethod
    def _stop(ctx: Context) -> None:
        ctx.closing = True
        for stream in ctx.streams:
            stream.cancel()
        ctx.wake.set()

    async def _play(self, ctx: Context) -> None:
        """The context's audio: each utterance in order; {"isFinal": true} once it is closed and done."""
        encoder = OutputEncoder(self.format)
        session = SessionSettings()  # the speaking rate spoken_text assumes (the alignment is the same estimate)
        timeline = CharTimeline(self.ctx.tokenizer, session.chars_per_second, session.cjk_char_weight)
        try:
            while True:
                while not ctx.streams:
                    if ctx.closing:
                        await self._audio(ctx, encoder.finish(), None)
                        await self._send(ctx, {"isFinal": True})
                        return
                    ctx.wake.clear()
                    await ctx.wake.wait()
                stream = ctx.streams[0]
                try:
                    async for frame in frames(stream):
                        align = timeline.frame(stream.text, frame.text_tokens_consumed) if self.align else None
                        await self._audio(ctx, encoder.push(frame.pcm), align)
                        self.ctx.metrics.audio_seconds_total.inc(ENGINE_FRAME_MS / 1000.0)
                except StreamFailed as failed:  # the context ends here: its later utterances are dropped
                    await self._error("engine_error", f"the engine failed this utterance: {failed.end.error}",
                                      ctx.id)
                    self._stop(ctx)
                    ctx.streams.clear()
                    continue
                stopped = stream.end is not None and stream.end.reason == "cancelled"
                # a stopped utterance: nothing of it after its stop (the resampler's tail is dropped)
                tail = encoder.end_utterance(stopped)
                rest = timeline.finish() if self.align else None  # (the timeline moves on either way)
                await self._audio(ctx, tail, None if stopped else rest)
                ctx.streams.popleft()
        finally:
            encoder.close()
            for stream in ctx.streams:
                stream.cancel()

    async def _audio(self, ctx: Context, data: bytes, align: Alignment | None) -> None:
        """One message: audio bytes (possibly none yet: MP3 holds a frame back) and their characters."""
        timed = align.as_elevenlabs() if align is not None and align.chars else None
        if data or timed:
            await self._send(ctx, {"audio": base64.b64encode(data).decode(), "isFinal": False,
                                   "normalizedAlignment": timed, "alignment": timed})

    async def _send(self, ctx: Context, body: dict[str, Any]) -> None:
        if ctx.id is not None:
            body["contextId"] = ctx.id
        await self._send_text(json.dumps(body))


def refuse_reason(ctx: ApiContext, voice_id: str, query: dict[str, list[str]]) -> tuple[int, str] | None:
    """(status, message) when a socket cannot open: an unknown voice or language, an output format we lack."""
    try:
        handshake_voice(ctx, voice_id, query)
    except ApiVoiceError as exc:
        return 404 if exc.param == "voice" else 400, exc.message
    except ValueError as exc:
        return 400, str(exc)
    return None


__all__ = ["ApiVoice", "ElevenLabsSocket", "refuse_reason", "routes"]
