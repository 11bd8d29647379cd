"""The README's client snippets for the compatible APIs run as written against a real server."""

from __future__ import annotations

import asyncio
import re
import sys
from pathlib import Path

import pytest

from .conftest import ServerThread

README = Path(__file__).resolve().parents[2] / "README.md"


def snippet(marker: str) -> str:
    block = README.read_text().split(f"<!-- {marker} -->", 1)[1]
    return block.split("```python\n", 1)[1].split("```", 1)[0]


@pytest.mark.parametrize("marker", ["openai-example", "pipecat-example"])
async def test_readme_api_snippet_runs(server: ServerThread, marker: str, tmp_path: Path) -> None:
    script = tmp_path / "client.py"
    script.write_text(snippet(marker))
    url = server.url if marker == "openai-example" else f"ws://127.0.0.1:{server.port}"
    proc = await asyncio.create_subprocess_exec(sys.executable, str(script), url, cwd=tmp_path,
                                                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 120)
    assert proc.returncode == 0, err.decode()[-3000:]
    seconds = float(re.search(r"received ([0-9.]+) s of audio", out.decode()).group(1))  # type: ignore[union-attr]
    assert seconds > 0
    if marker == "openai-example":
        assert (tmp_path / "hello.wav").stat().st_size > 44
