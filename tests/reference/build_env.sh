#!/usr/bin/env bash
# Build the isolated reference environment with the official qwen-tts 0.1.1 (our numerical contract).
#
#   bash tests/reference/build_env.sh [--force] [VENV_DIR]   (default: $VOICEGATE_REF_VENV or <repo>/.ref-venv)
#
# It is never a runtime dependency of voicegate: only tests/reference/*.py run inside it. Idempotent:
# a venv that already passes the health probe is left alone (delete it or pass --force to rebuild).
# Recipe (notes/installs.md): CPU torch first so nothing pulls CUDA wheels; qwen-tts without its
# dependencies (gradio, accelerate, torchaudio, sox, onnxruntime, einops are not needed on the 12 Hz
# path; official_stubs.py stands in for the import-time-only ones); then the pinned transformers
# 4.57.3 (5.x breaks qwen-tts at import) and what the 12 Hz import path really uses.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/../.." && pwd)"
FORCE=0
if [[ "${1:-}" == "--force" ]]; then FORCE=1; shift; fi
VENV="${1:-${VOICEGATE_REF_VENV:-$REPO/.ref-venv}}"
PYTHON="${PYTHON:-python3}"

TORCH_PIN="torch==2.13.0"
QWEN_TTS_PIN="qwen-tts==0.1.1"
TRANSFORMERS_PIN="transformers==4.57.3"
# librosa: mel filters + resampling in the official speaker-embedding path; soundfile: audio I/O imports.
OTHERS=(librosa soundfile huggingface_hub safetensors numpy)

probe() {
    # Healthy = the pinned versions import together with the stubs, and qwen_tts imports.
    PYTHONPATH="$HERE" "$VENV/bin/python" - <<'EOF' >/dev/null 2>&1
import official_stubs  # noqa: F401
import importlib.metadata as md
import torch, transformers
assert md.version("qwen-tts") == "0.1.1", md.version("qwen-tts")
assert transformers.__version__ == "4.57.3", transformers.__version__
assert torch.__version__.split("+")[0] == "2.13.0", torch.__version__
from qwen_tts import Qwen3TTSModel  # noqa: F401
import librosa, soundfile, safetensors  # noqa: F401
EOF
}

if [[ $FORCE == 0 && -x "$VENV/bin/python" ]] && probe; then
    echo "reference env OK: $VENV"
    exit 0
fi

started=$(date +%s)
if [[ -d "$VENV" ]]; then
    echo "reference env at $VENV is missing or unhealthy: rebuilding" >&2
    rm -rf "$VENV"
fi
"$PYTHON" -m venv "$VENV"
LOG="$VENV/build.log"
pip_install() {
    # pip's resolver complains that qwen-tts's declared extras are absent: expected, so keep it in the log.
    if ! "$VENV/bin/python" -m pip install --disable-pip-version-check "$@" >>"$LOG" 2>&1; then
        tail -n 30 "$LOG" >&2
        echo "pip install $* failed; full log: $LOG" >&2
        exit 1
    fi
}
pip_install "$TORCH_PIN"
pip_install --no-deps "$QWEN_TTS_PIN"
pip_install "$TRANSFORMERS_PIN" "${OTHERS[@]}"

if ! probe; then
    echo "reference env built at $VENV but the health probe fails; run the probe by hand:" >&2
    echo "  PYTHONPATH=$HERE $VENV/bin/python -c 'import official_stubs; from qwen_tts import Qwen3TTSModel'" >&2
    exit 1
fi
echo "reference env built in $(( $(date +%s) - started )) s: $VENV"
