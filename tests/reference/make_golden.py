"""Regenerate the golden fixtures of the official qwen-tts: tests/fixtures/golden/*.npz + manifest.json.

    .venv/bin/python tests/reference/make_golden.py [--ref-venv DIR] [--keep DIR]

(about 1-2 min on 2 cores with the reference env present; building it first adds ~2 min)

Runs in the PROJECT venv. Steps: build the isolated reference env if needed (build_env.sh), write
tiny checkpoints with the `voicegate make-checkpoint` CLI (fixed seeds), run run_official.py on them in
the reference env, and keep its codes / waveforms / token ids / x-vectors with a manifest that says how
each was made. Rerun it whenever make-checkpoint changes its weights (test_golden.py notices by the
checkpoint fingerprint in the manifest).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from tests.reference.golden import (
    CHECKPOINT_SEEDS,
    CHECKPOINT_SIZE,
    CHECKPOINTS,
    GOLDEN_DIR,
    MANIFEST,
    MAX_TOTAL_BYTES,
    REPO,
    XVECTOR_SIGNAL,
    cases,
    changed_tensors,
    checkpoint_fingerprint,
    encoder_fingerprint,
)

HERE = Path(__file__).resolve().parent


def run(cmd: list[str], **kwargs) -> subprocess.CompletedProcess:  # type: ignore[no-untyped-def]
    print("+", " ".join(cmd), file=sys.stderr)
    return subprocess.run(cmd, check=True, cwd=REPO, **kwargs)


def make_checkpoints(root: Path) -> dict[str, dict]:
    made = {}
    for kind, seed in CHECKPOINT_SEEDS.items():
        path = root / f"{CHECKPOINT_SIZE}-{kind}-{seed}"
        run([sys.executable, "-m", "agent.cli.main", "make-checkpoint", str(path), "--size", CHECKPOINT_SIZE,
             "--kind", kind, "--seed", str(seed)])
        made[kind] = {"path": str(path), "kind": kind, "size": CHECKPOINT_SIZE, "seed": seed,
                      "fingerprint": checkpoint_fingerprint(path)}
        if kind == "base":  # the cloning cases also depend on the encoders (audio -> voice prompt)
            made[kind]["encoder_fingerprint"] = encoder_fingerprint(path)
    return made


# make-checkpoint's floats (and so x-vectors and waveforms) may move in the last bits with the torch thread
# count: a fixture whose integer arrays are identical and whose floats moved by less than this keeps its
# bytes, and so does a checkpoint fingerprint within `changed_tensors`' tolerance.
KEEP_FLOAT_ATOL = 5e-5


def same_arrays(a: Path, b: Path) -> bool:
    with np.load(a) as x, np.load(b) as y:
        if sorted(x.files) != sorted(y.files):
            return False
        for k in x.files:
            if x[k].dtype != y[k].dtype or x[k].shape != y[k].shape:
                return False
            if np.issubdtype(x[k].dtype, np.floating):
                if not np.allclose(x[k], y[k], rtol=0.0, atol=KEEP_FLOAT_ATOL):
                    return False
            elif not np.array_equal(x[k], y[k]):
                return False
        return True


def keep_unchanged_fingerprints(checkpoints: dict[str, dict]) -> None:
    """Reuse the stored fingerprints of checkpoints that did not change (see KEEP_FLOAT_ATOL)."""
    if not CHECKPOINTS.exists():
        return
    stored = json.loads(CHECKPOINTS.read_text())
    for kind, made in checkpoints.items():
        for key in ("fingerprint", "encoder_fingerprint"):
            old = stored.get(kind, {}).get(key)
            if old is not None and key in made and not changed_tensors(made[key], old):
                made[key] = old


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ref-venv", type=Path, default=Path(os.environ.get("VOICEGATE_REF_VENV", REPO / ".ref-venv")))
    parser.add_argument("--keep", type=Path, help="keep the checkpoints and raw outputs in this folder")
    args = parser.parse_args()
    timings: dict[str, float] = {}

    t0 = time.perf_counter()
    run(["bash", str(HERE / "build_env.sh"), str(args.ref_venv)])
    timings["build_env_s"] = time.perf_counter() - t0

    work = Path(tempfile.mkdtemp(prefix="golden-")) if args.keep is None else args.keep
    work.mkdir(parents=True, exist_ok=True)
    try:
        t0 = time.perf_counter()
        checkpoints = make_checkpoints(work / "checkpoints")
        timings["make_checkpoints_s"] = time.perf_counter() - t0

        spec_cases = []
        for case in cases():
            spec_cases.append({
                "name": case["name"], "checkpoint": case["kind"], "text": case["text"],
                "speaker": case["speaker"], "language": case["language"], "instruct": case["instruct"],
                "non_streaming": case["non_streaming"], "max_new_tokens": case["max_new_tokens"],
                "save_audio": case["audio"], "xvector_signal": XVECTOR_SIGNAL if case["xvector"] else None,
                "clone": case["clone"], "ref_text": case["ref_text"],
                "ref_audio": str(REPO / case["ref_audio"]) if case["ref_audio"] else None,
            })
        spec = {"checkpoints": {k: v["path"] for k, v in checkpoints.items()}, "cases": spec_cases}
        (work / "spec.json").write_text(json.dumps(spec, indent=1, ensure_ascii=False))
        t0 = time.perf_counter()
        run([str(args.ref_venv / "bin" / "python"), str(HERE / "run_official.py"), "golden",
             "--spec", str(work / "spec.json"), "--out", str(work / "out")])
        timings["run_official_s"] = time.perf_counter() - t0
        results = json.loads((work / "out" / "results.json").read_text())

        GOLDEN_DIR.mkdir(parents=True, exist_ok=True)
        names = {f"{case['name']}.npz" for case in cases()}
        for old in GOLDEN_DIR.glob("*.npz"):
            if old.name not in names:
                old.unlink()
        manifest_cases = []
        for case in cases():
            meta = results["cases"][case["name"]]
            made, kept = work / "out" / f"{case['name']}.npz", GOLDEN_DIR / f"{case['name']}.npz"
            if not (kept.exists() and same_arrays(made, kept)):  # see KEEP_FLOAT_ATOL
                shutil.copyfile(made, kept)
            with np.load(GOLDEN_DIR / f"{case['name']}.npz") as data:
                stored = sorted(data.files)
            ckpt = checkpoints[case["kind"]]
            manifest_cases.append({
                "name": case["name"], "file": f"{case['name']}.npz",
                "checkpoint": {k: ckpt[k] for k in ("kind", "size", "seed")},
                "text": case["text"], "speaker": case["speaker"], "language": case["language"],
                "instruct": case["instruct"], "non_streaming": case["non_streaming"],
                "max_new_tokens": case["max_new_tokens"],
                "xvector_signal": XVECTOR_SIGNAL if case["xvector"] else None,
                "codes_shape": [meta["frames"], 16], "ended_by": meta["ended_by"],
                "sampled_code0": meta["sampled_code0"], "input_ids": meta["input_ids"],
                "text_ids": meta["text_ids"], "instruct_ids": meta["instruct_ids"],
                "audio_samples": meta["audio_samples"], "arrays": stored,
                **({"clone": case["clone"], "ref_audio": case["ref_audio"], "ref_text": case["ref_text"],
                    "ref_ids": meta["ref_ids"], "ref_frames": meta["ref_frames"],
                    "cut_samples": meta["cut_samples"]} if case["clone"] else {}),
                "official_api_vs_full_decode_max_abs": meta["api_vs_full_decode_max_abs"],
            })
        manifest = {
            "generator": "tests/reference/make_golden.py",
            "qwen_tts_version": results["qwen_tts_version"],
            "transformers_version": results["transformers_version"],
            "torch_version": results["torch_version"],
            "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "decoding": {"do_sample": False, "subtalker_dosample": False, "repetition_penalty": 1.05,
                         "min_new_tokens": 2, "dtype": "float32", "device": "cpu"},
            "cases": manifest_cases,
        }
        MANIFEST.write_text(json.dumps(manifest, indent=1, ensure_ascii=False) + "\n")
        keep_unchanged_fingerprints(checkpoints)
        keys = ("kind", "size", "seed", "fingerprint", "encoder_fingerprint")
        CHECKPOINTS.write_text(json.dumps(
            {kind: {k: c[k] for k in keys if k in c} for kind, c in checkpoints.items()},
            separators=(",", ":")) + "\n")
        total = sum(f.stat().st_size for f in GOLDEN_DIR.iterdir() if f.is_file())
        if total > MAX_TOTAL_BYTES:
            raise SystemExit(f"golden fixtures take {total} bytes > {MAX_TOTAL_BYTES}: store fewer waveforms")
    finally:
        if args.keep is None:
            shutil.rmtree(work, ignore_errors=True)

    for c in manifest_cases:
        print(f"{c['name']:34s} {c['codes_shape'][0]:3d} frames  ended by {c['ended_by']:14s} "
              f"({len(c['text_ids'])} text tokens)", file=sys.stderr)
    print(json.dumps({"total_bytes": total, **{k: round(v, 1) for k, v in timings.items()}}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
