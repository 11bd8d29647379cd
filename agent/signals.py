"""Serve until SIGINT or SIGTERM: the one shutdown trigger of `voicegate serve` and `voicegate wyoming`.

The first signal starts the graceful part (`drain`: let what is in flight finish), then `stop`; a second
signal during the drain cuts it short (Kubernetes sends SIGKILL when its grace runs out anyway; a person
pressing Ctrl-C twice wants out now). The handlers stay installed from the first wait to the end of `stop`,
so a signal is never met by Python's default action (a SIGTERM would end the process with no clean-up).
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import Awaitable, Callable, Iterator

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


@contextlib.contextmanager
def _signal_queue() -> Iterator[asyncio.Queue[int]]:
    """Each SIGINT/SIGTERM, queued. Off the main thread, where asyncio cannot install handlers, nothing
    ever arrives (the waits end by cancellation)."""
    signals: asyncio.Queue[int] = asyncio.Queue()
    loop = asyncio.get_running_loop()
    installed = []
    for sig in STOP_SIGNALS:
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            loop.add_signal_handler(sig, signals.put_nowait, int(sig))
            installed.append(sig)
    try:
        yield signals
    finally:
        for sig in installed:
            loop.remove_signal_handler(sig)


async def serve_until_signal(stop: Callable[[], Awaitable[None]],
                             drain: Callable[[], Awaitable[None]] | None = None) -> bool:
    """Wait for SIGINT/SIGTERM, run `drain()`, then `stop()` (also when the wait is cancelled or the drain
    fails). A second signal during the drain cancels it. True unless the drain was cut short."""
    with _signal_queue() as signals:
        try:
            await signals.get()
            if drain is None:
                return True
            draining = asyncio.ensure_future(drain())
            second = asyncio.ensure_future(signals.get())
            try:
                await asyncio.wait({draining, second}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for task in (draining, second):
                    task.cancel()
                await asyncio.gather(draining, second, return_exceptions=True)
            if draining.cancelled():
                return False
            draining.result()  # a failed drain: raised after stop()
            return True
        finally:
            await stop()
