"""Reading Wyoming frames from a client, with limits and without tracebacks.

A frame is one JSON header line {type, data?, data_length?, payload_length?}, then `data_length` bytes of JSON
(merged into `data`), then `payload_length` bytes. The wyoming package's reader turns some broken input into
"end of stream" and lets the rest escape as exceptions (a header that is a JSON array, a `data_length` that is
a string, a client gone mid-frame), which end the connection's task with a traceback. Here:

- `FramingError`: the byte stream cannot be followed any further (the header line is not a JSON object, is
  not UTF-8 or is too long, a length is not a small non-negative integer, the connection ended or broke
  mid-frame). The handler closes the connection with one INFO line.
- `BadEvent`: the frame was read whole, so the next one can be, but its content is not an event (no string
  `type`, `data` not an object). The handler answers `bad_event` and reads on.
"""

from __future__ import annotations

import asyncio
from typing import Any

from wyoming.event import Event

from agent.boundary import JsonInputError, loads_object
from agent.wyoming.events import BadEvent

MAX_DATA_BYTES = 1024 * 1024  # the JSON block after the header (a whole synthesize text fits many times)
MAX_PAYLOAD_BYTES = 1024 * 1024  # binary payload (audio-chunk): a few KiB in practice
MAX_TYPE_CHARS = 64  # longer types are unknown anyway; this keeps them out of logs


class FramingError(Exception):
    """The stream of frames is broken; the message says how (for the log)."""


async def read_frame(reader: asyncio.StreamReader) -> Event | None:
    """The next event; None when the client closed the connection between two frames."""
    try:
        line = await reader.readuntil(b"\n")
    except asyncio.IncompleteReadError as exc:
        if not exc.partial:
            return None
        raise FramingError("connection closed in the middle of a header line") from None
    except asyncio.LimitOverrunError:  # the reader's limit (asyncio's default: 64 KiB)
        raise FramingError("header line too long") from None
    except ConnectionError as exc:
        raise FramingError(f"connection lost: {exc}") from None
    try:
        header = loads_object(line)
    except JsonInputError as exc:
        raise FramingError(f"header line: {exc}") from None
    data_length = _length(header, "data_length", MAX_DATA_BYTES)
    payload_length = _length(header, "payload_length", MAX_PAYLOAD_BYTES)
    block = await _read_exactly(reader, data_length, "data")
    payload = await _read_exactly(reader, payload_length, "payload")
    # Everything of the frame is read: from here on a mistake leaves the stream in step.
    return Event(type=_type(header), data=_data(header, block), payload=payload or None)


def _length(header: dict[str, Any], key: str, limit: int) -> int:
    value = header.get(key)
    if value is None:
        return 0
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= limit:
        raise FramingError(f"{key} must be an integer from 0 to {limit}, not {value!r:.40}")
    return value


async def _read_exactly(reader: asyncio.StreamReader, n: int, what: str) -> bytes:
    if not n:
        return b""
    try:
        return await reader.readexactly(n)
    except asyncio.IncompleteReadError as exc:
        raise FramingError(f"connection closed after {len(exc.partial)} of {n} {what} bytes") from None
    except ConnectionError as exc:
        raise FramingError(f"connection lost: {exc}") from None


def _type(header: dict[str, Any]) -> str:
    kind = header.get("type")
    if not isinstance(kind, str) or not kind:
        raise BadEvent("an event needs a non-empty string type")
    if len(kind) > MAX_TYPE_CHARS:
        raise BadEvent(f"event type over {MAX_TYPE_CHARS} characters")
    return kind


def _data(header: dict[str, Any], block: bytes) -> dict[str, Any]:
    data = header.get("data")
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise BadEvent("event data must be a JSON object")
    if block:
        try:
            data = {**data, **loads_object(block)}
        except JsonInputError as exc:
            raise BadEvent(f"event data block: {exc}") from None
    return data
