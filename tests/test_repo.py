"""Repository invariants: CI runs the README's test command; the runtime never imports qwen_tts."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _readme_test_command() -> str:
    readme = (ROOT / "README.md").read_text()
    match = re.search(r"<!-- test-command -->\s*```(?:bash|sh)?\n(.*?)\n```", readme, re.S)
    assert match, "README.md must mark its test command block with <!-- test-command -->"
    return match.group(1).strip()


def test_ci_runs_exactly_the_readme_test_command() -> None:
    command = _readme_test_command()
    ci = (ROOT / ".ci" / "run").read_text()
    # The README command installs then tests; CI installs more (apt, reference env) then runs its last step.
    last_step = command.split("&&")[-1].strip()
    assert ci.rstrip().splitlines()[-1].strip() == last_step
    for step in command.split("&&")[1:-1]:  # and every install step of the README's command (paths as run there)
        what = step.split()[-1]  # the package spec or the script the step runs
        assert what in ci, f"README installs with {step.strip()!r}, .ci/run does not"


def test_runtime_code_never_imports_the_reference_package() -> None:
    for package in ("tts_engine", "agent", "bench"):
        for path in (ROOT / package).rglob("*.py"):
            text = path.read_text()
            assert not re.search(r"^\s*(import|from)\s+(qwen_tts|librosa)\b", text, re.M), path


def test_readme_engine_example_runs(tiny_checkpoint) -> None:  # type: ignore[no-untyped-def]
    readme = (ROOT / "README.md").read_text()
    block = readme.split("## Streaming engine (Python)", 1)[1].split("```python\n", 1)[1].split("```", 1)[0]
    code = block.replace('"./tiny"', repr(str(tiny_checkpoint("custom_voice"))))
    namespace: dict = {}
    exec(compile(code, "README.md", "exec"), namespace)
    assert namespace["stream"].end.reason == "eos"
