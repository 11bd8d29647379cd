"""The README's client snippets for the compatible APIs run as written against a real server, and what they
receive is the engine's own audio for their text and voice."""

from __future__ import annotations

import ast
import asyncio
import re
import sys
from pathlib import Path

import numpy as np
import pytest

from .audio_compare import decode, engine_pcm
from .conftest import ServerThread

README = Path(__file__).resolve().parents[2] / "README.md"


def snippet(marker: str) -> str:
    block = README.read_text().split(f"<!-- {marker} -->", 1)[1]
    return block.split("```python\n", 1)[1].split("```", 1)[0]


def expected_audio(server: ServerThread, code: str, marker: str) -> dict[str, np.ndarray]:
    """File the snippet writes -> the engine's PCM for the text it sends (voice vivian, the API seed)."""
    assert 'voice="vivian"' in code
    if marker == "openai-example":
        whole, streamed = re.findall(r'input="([^"]+)"', code)
        return {"hello.wav": engine_pcm(server.engine, whole), "streamed.pcm": engine_pcm(server.engine, streamed)}
    tokens = ast.literal_eval(re.search(r"tokens = (\[.*?\])", code).group(1))  # type: ignore[union-attr]
    return {"reply.pcm": engine_pcm(server.engine, "".join(tokens))}


@pytest.mark.parametrize("marker", ["openai-example", "pipecat-example"])
async def test_readme_api_snippet_runs(server: ServerThread, marker: str, tmp_path: Path) -> None:
    script = tmp_path / "client.py"
    code = snippet(marker)
    script.write_text(code)
    url = server.url if marker == "openai-example" else f"ws://127.0.0.1:{server.port}"
    proc = await asyncio.create_subprocess_exec(sys.executable, str(script), url, cwd=tmp_path,
                                                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 120)
    assert proc.returncode == 0, err.decode()[-3000:]
    seconds = float(re.search(r"received ([0-9.]+) s of audio", out.decode()).group(1))  # type: ignore[union-attr]
    assert seconds > 0
    if marker == "openai-example":
        assert (tmp_path / "hello.wav").stat().st_size > 44
    for name, want in (await asyncio.to_thread(expected_audio, server, code, marker)).items():
        data = (tmp_path / name).read_bytes()
        got = decode(data)[0] if name.endswith(".wav") else np.frombuffer(data, "<i2")
        assert np.array_equal(got, want), name  # WAV and PCM are lossless: sample for sample
    last = "streamed.pcm" if marker == "openai-example" else "reply.pcm"
    assert seconds == round(len((tmp_path / last).read_bytes()) / 48000, 2)  # what it printed is what it kept
