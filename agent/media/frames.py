"""An engine stream's frames on the event loop: the engine thread never blocks it, nor is blocked by it."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

# The module, not the package's public names: those import the whole engine (torch), and Wyoming's
# handlers, which use this adapter, stay torch-free.
from tts_engine.streaming.stream import Frame, Stream, StreamEnd, StreamFailed


async def frames(stream: Stream) -> AsyncIterator[Frame]:
    """Every frame of `stream` until its end; raises StreamFailed if the engine failed it.

    The stream's notify hook (called on the engine thread) only sets an asyncio.Event through
    `call_soon_threadsafe`; frames are taken here with `poll()`, on the loop."""
    loop = asyncio.get_running_loop()
    ready = asyncio.Event()

    def notify() -> None:
        with contextlib.suppress(RuntimeError):  # the loop closed under an abandoned iteration: nobody to wake
            loop.call_soon_threadsafe(ready.set)

    stream.set_notify(notify)
    try:
        while True:
            ready.clear()  # before polling: an item queued after the poll sets it again
            item = stream.poll()
            if item is None:
                await ready.wait()
            elif isinstance(item, StreamEnd):
                if item.reason == "error":
                    raise StreamFailed(item)
                return
            else:
                yield item
    finally:
        stream.set_notify(None)


__all__ = ["StreamFailed", "frames"]
