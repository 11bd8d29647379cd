"""`python -m agent.cli.healthcheck URL` (the container health check) against real servers on loopback."""

from __future__ import annotations

import asyncio
import socket
from typing import Any

from agent.cli.healthcheck import check_wyoming, main
from agent.wyoming.handler import WyomingService, WyomingSettings


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def test_serve_healthz(server: Any) -> None:
    assert await asyncio.to_thread(main, [f"{server.url}/healthz"]) == 0
    assert await asyncio.to_thread(main, [f"http://127.0.0.1:{closed_port()}/healthz"]) == 1
    assert await asyncio.to_thread(main, ["ftp://127.0.0.1:1/"]) == 2


async def test_wyoming_describe(engine: Any) -> None:
    svc = WyomingService(engine, WyomingSettings(uri="tcp://127.0.0.1:0"), model_name="tiny")
    await svc.start()
    try:
        assert await check_wyoming("127.0.0.1", svc.port or 0) is None
        # The command line runs its own event loop (as in the container); this loop keeps serving meanwhile.
        assert await asyncio.to_thread(main, [f"tcp://127.0.0.1:{svc.port}"]) == 0
    finally:
        await svc.stop()
    problem = await check_wyoming("127.0.0.1", closed_port())
    assert problem is not None and "tcp://127.0.0.1" in problem
    assert await asyncio.to_thread(main, [f"tcp://127.0.0.1:{closed_port()}"]) == 1
