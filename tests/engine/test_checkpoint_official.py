"""make-checkpoint output loads in the official qwen-tts 0.1.1 (subprocess into the reference env).

Runs only where the isolated reference env exists (tests/reference/build_env.sh makes it; CI builds it
first): voicegate never imports qwen_tts itself.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.reference.golden import REPO

REF_PYTHON = Path(os.environ.get("VOICEGATE_REF_VENV", REPO / ".ref-venv")) / "bin" / "python"
KINDS = ("custom_voice", "base", "voice_design")

pytestmark = pytest.mark.skipif(
    not REF_PYTHON.exists(),
    reason=f"no reference env at {REF_PYTHON.parent.parent}: run `bash tests/reference/build_env.sh` "
           f"(CI builds it) to check that make-checkpoint output loads in the official qwen-tts")


@pytest.fixture(scope="module")
def official_report(tiny_checkpoint: Callable[..., Path]) -> dict[str, Any]:
    """One subprocess loads every kind with Qwen3TTSModel.from_pretrained and runs a short greedy generate."""
    dirs = {kind: tiny_checkpoint(kind) for kind in KINDS}
    proc = subprocess.run(
        [str(REF_PYTHON), str(REPO / "tests" / "reference" / "run_official.py"), "check-load",
         *map(str, dirs.values())],
        capture_output=True, text=True, timeout=600, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert proc.returncode == 0, f"official load failed:\n{proc.stderr[-4000:]}"
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    return {kind: report[str(path)] for kind, path in dirs.items()}


@pytest.mark.parametrize("kind", KINDS)
def test_official_package_loads_and_generates(official_report: dict[str, Any], tiny_model: Callable[..., Any],
                                              kind: str) -> None:
    found = official_report[kind]
    assert found["kind"] == kind
    assert found["frames"] >= 1 and found["audio_samples"] == found["frames"] * 1920
    ours = tiny_model(kind)
    # The official processor saw the special tokens (tokenizer_config.json) and the same vocabulary.
    assert found["role_ids"] == ours.role_ids == [151644, 77091, 198]
    assert found["text_ids"] == ours.tokenizer.target_ids("Hello there.")
    assert sorted(found["speakers"]) == ours.speakers
    assert sorted(found["languages"]) == sorted(ours.languages)
