"""Serve until SIGINT or SIGTERM: the one shutdown trigger of `voicegate serve` and `voicegate wyoming`."""

from __future__ import annotations

import asyncio
import contextlib
import signal

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


async def wait_for_stop_signal() -> None:
    """Return on the first SIGINT/SIGTERM (handlers installed for the wait only). Off the main thread,
    where asyncio cannot install them, it waits until cancelled."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    installed = []
    for sig in STOP_SIGNALS:
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            loop.add_signal_handler(sig, stop.set)
            installed.append(sig)
    try:
        await stop.wait()
    finally:
        for sig in installed:
            loop.remove_signal_handler(sig)
