"""Helpers for the hostile-input tests: a log watch on the root logger and a raw Wyoming connection.

`LogWatch` records every log record of the process (the test servers run in a thread or in the test's loop,
and both log through the root logger), so a test can assert that bad input left no traceback and no ERROR
line. A raw connection writes bytes the `wyoming` client cannot produce (broken framing, lone surrogates) and
reads the server's events with the library's reader.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import logging
import threading
from collections.abc import AsyncIterator, Iterator
from typing import Any

from wyoming.event import Event, async_read_event


class LogWatch(logging.Handler):
    """Every record at DEBUG and above while installed (see `watch_logs`)."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def bad(self) -> list[str]:
        """Records with a traceback or at ERROR and above, formatted for an assertion message."""
        gc.collect()  # "Task exception was never retrieved" is logged when the task is collected
        return [f"{r.levelname} {r.name}: {r.getMessage()}" + _exception(r)
                for r in self.records if r.exc_info or r.levelno >= logging.ERROR]

    def messages(self, logger_prefix: str, level: int = logging.INFO) -> list[str]:
        return [r.getMessage() for r in self.records if r.name.startswith(logger_prefix) and r.levelno == level]

    async def lines(self, logger_prefix: str, containing: str, timeout: float = 10.0) -> list[str]:
        """The INFO lines of `logger_prefix` holding `containing`, once there is one (a server logs after it
        closed the connection: it may come a moment later)."""
        async with asyncio.timeout(timeout):
            while not (found := [m for m in self.messages(logger_prefix) if containing in m]):
                await asyncio.sleep(0.01)
        return found

    def assert_clean(self) -> None:
        bad = self.bad()
        assert not bad, "\n".join(bad)


def _exception(record: logging.LogRecord) -> str:
    if not record.exc_info or record.exc_info[1] is None:
        return ""
    exc = record.exc_info[1]
    where = exc.__traceback__
    while where is not None and where.tb_next is not None:
        where = where.tb_next
    line = f" at {where.tb_frame.f_code.co_filename}:{where.tb_lineno}" if where is not None else ""
    return f" (traceback: {type(exc).__name__}: {str(exc)[:200]}{line})"


@contextlib.contextmanager
def watch_logs() -> Iterator[LogWatch]:
    """A LogWatch on the root logger, with the root level lowered to DEBUG meanwhile (restored after)."""
    root = logging.getLogger()
    watch = LogWatch()
    level = root.level
    root.addHandler(watch)
    root.setLevel(logging.DEBUG)
    try:
        yield watch
    finally:
        root.removeHandler(watch)
        root.setLevel(level)


def frame(kind: Any, data: Any = None, **header: Any) -> bytes:
    """One Wyoming header line (data inline when given), as a raw client would write it."""
    line: dict[str, Any] = {"type": kind, **header}
    if data is not None:
        line["data"] = data
    return (json.dumps(line) + "\n").encode()


class RawWyoming:
    """A TCP connection that writes raw bytes and reads events."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def read(self, timeout: float = 30.0) -> Event | None:
        """The next event; None when the server closed the connection."""
        return await asyncio.wait_for(async_read_event(self.reader), timeout)

    async def until(self, *types: str, timeout: float = 60.0) -> list[Event]:
        """Every event up to and including the first of `types` (AssertionError if the server closes first)."""
        events: list[Event] = []
        async with asyncio.timeout(timeout):
            while True:
                event = await async_read_event(self.reader)
                assert event is not None, f"the server closed the connection; got {[e.type for e in events]}"
                events.append(event)
                if event.type in types:
                    return events

    async def closed_by_server(self, timeout: float = 10.0) -> bool:
        """True when the server closes the connection (whatever it sent before is skipped)."""
        async with asyncio.timeout(timeout):
            with contextlib.suppress(ConnectionError):
                while await self.reader.read(65536):
                    pass
        return True

    def abort(self) -> None:
        self.writer.transport.abort()

    def close(self) -> None:
        self.writer.close()


@contextlib.asynccontextmanager
async def raw_wyoming(port: int) -> AsyncIterator[RawWyoming]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    conn = RawWyoming(reader, writer)
    try:
        yield conn
    finally:
        conn.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()


class WyomingThread:
    """A WyomingService on a background thread with its own loop (like conftest.ServerThread), for sync tests."""

    def __init__(self, engine: Any, recognizer: Any = None) -> None:
        from agent.wyoming.handler import WyomingService, WyomingSettings

        self.loop = asyncio.new_event_loop()
        self.service = WyomingService(engine, WyomingSettings(uri="tcp://127.0.0.1:0"), model_name="tiny",
                                      recognizer=recognizer)
        self._thread = threading.Thread(target=self.loop.run_forever, name="voicegate-test-wyoming", daemon=True)
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self.service.start(), self.loop).result(30)
        assert self.service.port
        self.port: int = self.service.port

    def handlers(self) -> list[Any]:
        async def get() -> list[Any]:
            return list(self.service.server._handlers.values())
        return asyncio.run_coroutine_threadsafe(get(), self.loop).result(10)

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self.service.stop(), self.loop).result(30)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)
