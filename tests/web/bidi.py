"""A minimal WebDriver BiDi client (W3C), enough to drive stock Firefox from a test.

Firefox speaks BiDi itself (`--remote-debugging-port`), so no geckodriver and no patched browser build
are needed: Debian's firefox-esr and the `websockets` package are the whole tool chain.
"""

from __future__ import annotations

import asyncio
import itertools
import json
from typing import Any

import websockets


class BiDiError(RuntimeError):
    pass


class BiDiSession:
    def __init__(self, ws: Any) -> None:
        self._ws = ws
        self._ids = itertools.count(1)
        self.context = ""

    @classmethod
    async def open(cls, url: str) -> BiDiSession:
        session = cls(await websockets.connect(url, max_size=None))
        await session.call("session.new", capabilities={})
        tree = await session.call("browsingContext.getTree")
        session.context = tree["contexts"][0]["context"]
        return session

    async def call(self, method: str, timeout: float = 30.0, **params: Any) -> dict[str, Any]:
        request_id = next(self._ids)
        await self._ws.send(json.dumps({"id": request_id, "method": method, "params": params}))
        async with asyncio.timeout(timeout):
            while True:
                message = json.loads(await self._ws.recv())
                if message.get("id") != request_id:
                    continue  # an event: none subscribed, but the protocol may send some
                if message.get("type") == "error":
                    raise BiDiError(f"{method}: {message.get('error')}: {message.get('message')}")
                return message["result"]

    async def navigate(self, url: str) -> None:
        await self.call("browsingContext.navigate", context=self.context, url=url, wait="complete")

    async def evaluate(self, expression: str, timeout: float = 30.0) -> Any:
        """The JSON value of a page expression (awaited if it is a promise); page exceptions raise."""
        result = await self.call("script.evaluate", timeout=timeout, expression=f"(async () => JSON.stringify(await ({expression})))()",
                                 target={"context": self.context}, awaitPromise=True)
        if result["type"] == "exception":
            raise BiDiError(f"page exception: {result['exceptionDetails'].get('text')}")
        value = result["result"].get("value")
        return None if value is None else json.loads(value)

    async def wait_for(self, expression: str, timeout: float = 20.0, interval: float = 0.1) -> Any:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            value = await self.evaluate(expression)
            if value:
                return value
            if loop.time() > deadline:
                raise TimeoutError(f"not true within {timeout} s: {expression}")
            await asyncio.sleep(interval)

    async def close(self) -> None:
        try:
            await self.call("session.end", timeout=5)
        finally:
            await self._ws.close()
