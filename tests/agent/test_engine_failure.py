"""An engine step that fails mid-utterance (the engine is the boundary made to fail here: an exception injected
into its step): every surface reports it with its documented error, frees the stream, and serves the next request."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

from .conftest import ServerThread, serve_checkpoint, session_client, wait_no_streams


class StepFailure:
    """Arms the engine so that its next step raises once (every live stream of that step fails)."""

    def __init__(self, engine: Any) -> None:
        self.engine, self.armed = engine, False
        step = engine.scheduler._step

        def failing_step() -> bool:
            if self.armed and engine.scheduler.live_streams:
                self.armed = False
                raise RuntimeError("injected step failure")
            return step()

        engine.scheduler._step = failing_step

    def arm(self) -> None:
        self.armed = True


@pytest.fixture(scope="module")
def failing(tiny_checkpoint: Callable[..., Any]) -> Iterator[tuple[ServerThread, StepFailure]]:
    with serve_checkpoint(tiny_checkpoint("custom_voice"), "tiny") as srv:
        yield srv, StepFailure(srv.engine)


async def test_session_reports_engine_error_and_speaks_on(failing: tuple[ServerThread, StepFailure]) -> None:
    srv, failure = failing
    async with session_client(srv.ws_url + "?mode=headless") as (client, _):
        failure.arm()
        await client.send(type="text.append", text="This utterance meets a failing engine step.")
        await client.send(type="text.flush")
        error = await client.expect("error")
        assert error["code"] == "engine_error" and "injected step failure" in error["message"], error
        ended = await client.expect("utterance.interrupted")
        assert ended["reason"] == "error", ended
        assert wait_no_streams(srv.engine) == 0
        assert (await client.speak("And this one is spoken."))["type"] == "utterance.done"
