"""Import rules (DESIGN §2): the import-linter contracts of pyproject.toml hold, one test per contract that
fails with import-linter's report; the engine's public names resolve; the torch-free modules stay so."""

from __future__ import annotations

import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CONTRACTS = [contract["id"] for contract in
             tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]["contracts"]]


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    # The repository first on the path: the checked-out code, not whichever copy is installed.
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    return subprocess.run([sys.executable, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("contract", CONTRACTS)
def test_import_contract_is_kept(contract: str) -> None:
    result = _run("-c", "from importlinter.cli import lint_imports_command; lint_imports_command()",
                  "--no-cache", "--no-logo", "--contract", contract)
    assert result.returncode == 0, f"import contract {contract!r} broken:\n{result.stdout}\n{result.stderr}"


def test_engine_contracts_are_declared() -> None:
    # The rules DESIGN §2 states for the engine; deleting one from pyproject.toml must not pass silently.
    assert {"engine-alone", "engine-layers", "engine-acyclic"} <= set(CONTRACTS)


def test_public_names_resolve_and_light_modules_import_without_torch() -> None:
    result = _run("-c", """
import sys
import tts_engine.files, tts_engine.model.config, tts_engine.streaming.stream, agent.media.frames
assert "torch" not in sys.modules, "a light module pulled torch"
import tts_engine
missing = [name for name in tts_engine.__all__ if getattr(tts_engine, name, None) is None]
assert not missing, missing
try:
    tts_engine.no_such_name
except AttributeError:
    pass
else:
    raise AssertionError("an unknown name resolved")
""")
    assert result.returncode == 0, result.stderr
