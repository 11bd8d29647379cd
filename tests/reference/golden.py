"""The golden cases and what both sides of the fidelity check share (project venv; no qwen_tts here).

make_golden.py runs these cases through the official qwen-tts on `voicegate make-checkpoint` outputs;
tests/engine/test_golden.py runs them through voicegate and compares.
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors import safe_open

REPO = Path(__file__).resolve().parents[2]
GOLDEN_DIR = REPO / "tests" / "fixtures" / "golden"
MANIFEST = GOLDEN_DIR / "manifest.json"
CHECKPOINTS = GOLDEN_DIR / "checkpoints.json"  # per kind: seed, size and the weight fingerprint
MAX_TOTAL_BYTES = 1_500_000

CHECKPOINT_SIZE = "tiny"
CHECKPOINT_SEEDS = {"custom_voice": 0, "voice_design": 0, "base": 0}
# max_new_tokens=N gives at most N-1 frames officially; 64 stays under voicegate's runaway cap
# (40 + 8 per text token) for every text here, so the cap never cuts a run the reference finishes.
MAX_NEW_TOKENS = 64
XVECTOR_SIGNAL = {"seconds": 1.5, "f0": 140.0}  # signals.voiced_signal(**XVECTOR_SIGNAL)

# Voice cloning from a real (espeak-ng) recording, through the official create_voice_clone_prompt:
# 24 kHz already, so no resampler is involved on either side. tests/fixtures/make_speech.sh makes it.
CLONE_REF_AUDIO = "tests/fixtures/speech/clone_ref_24k.wav"
CLONE_REF_TEXT = "Please call Stella and ask her to bring these things."
# Long enough that, in the streaming-text ICL layout, the target text runs past the reference codes
# (T1 > T2): the prefill holds its first T2-R tokens and the rest rides on the decode steps.
CLONE_ICL_LONG_TEXT = ("The old keeper climbed the winding stairs every evening, lit the great lamp, and "
                       "watched the ships pass safely through the dark and stormy night until morning came.")

# Texts avoid camel-case: qwen-tts' fix_mistral_regex may swap the split regex (notes/installs.md);
# run_official.py also checks the ids against the checkpoint's own tokenizer.
_BASE_CASES: list[dict] = [
    {"name": "cv_speaker_language", "kind": "custom_voice", "speaker": "Vivian", "language": "English",
     "text": "Hello, world! How are you today?", "audio": True},
    {"name": "cv_auto", "kind": "custom_voice", "speaker": "ryan", "language": "auto",
     "text": "It's 3:45 pm, and we're 20% late... okay?"},
    {"name": "cv_dialect_auto", "kind": "custom_voice", "speaker": "Dylan", "language": "Auto",
     "text": "今天天气很好，我们去公园吧。"},
    # tiny checkpoints are "0b6": the official CustomVoice path drops the instruction for that size.
    {"name": "cv_instruct_0b6_ignored", "kind": "custom_voice", "speaker": "serena", "language": "english",
     "instruct": "Speak very fast.", "text": "Short and sweet."},
    {"name": "vd_instruct", "kind": "voice_design", "language": "English",
     "instruct": "A warm, low voice; slow and gentle.", "text": "The evening was calm and quiet.",
     "audio": True},
    {"name": "base_xvector", "kind": "base", "language": "English", "xvector": True,
     "text": "Cloning a voice from a short recording.", "audio": True},
    # Cloning from CLONE_REF_AUDIO: x-vector only, and ICL (reference transcript + codes in the prompt)
    # with a target text longer (T1 > T2) and shorter (T1 <= T2: padded with tts_pad) than the reference.
    {"name": "clone_xvector", "kind": "base", "language": "English", "clone": "xvector",
     "text": "Cloning a voice from a short recording.", "audio": True},
    {"name": "clone_icl", "kind": "base", "language": "English", "clone": "icl", "text": CLONE_ICL_LONG_TEXT,
     "audio": True},
    {"name": "clone_icl_short", "kind": "base", "language": "English", "clone": "icl", "text": "Good morning.",
     "audio": True},
    # max_new_tokens=3: at most 2 frames, whatever the model wants (checks the N-1 rule).
    {"name": "cv_max_new_tokens_3", "kind": "custom_voice", "speaker": "aiden", "language": "english",
     "text": "This sentence is cut short by the frame limit.", "max_new_tokens": 3},
]


def cases() -> list[dict]:
    """Every base case in both layouts: streaming text (`_stream`) and non-streaming (`_nonstream`)."""
    out = []
    for case in _BASE_CASES:
        for non_streaming in (False, True):
            c = {"speaker": None, "instruct": None, "xvector": False, "audio": False, "clone": None,
                 "max_new_tokens": MAX_NEW_TOKENS, **case}
            c["name"] = f"{case['name']}_{'nonstream' if non_streaming else 'stream'}"
            c["non_streaming"] = non_streaming
            # Waveforms are big (1920 float32 per frame): keep them for the streaming layout only, and for
            # ICL in both (its non-streaming runs are 2 frames on the tiny checkpoint; the cut differs).
            c["audio"] = bool(c["audio"]) and (not non_streaming or c["clone"] == "icl")
            c["ref_audio"] = CLONE_REF_AUDIO if c["clone"] else None
            c["ref_text"] = CLONE_REF_TEXT if c["clone"] == "icl" else None
            out.append(c)
    return out


def checkpoint_fingerprint(path: Path, parts: tuple[tuple[str, str], ...] = (
        ("model.safetensors", "talker."), ("speech_tokenizer/model.safetensors", "decoder."))) -> dict[str, list]:
    """{tensor name: [shape, mean, rms, ramp-weighted mean]} for the tensors that decide the codes and
    the waveform (by default the talker and the codec decoder; `parts` = (file, key prefix) pairs). The
    encoders are left out of the default: the fixtures store the official x-vector and reference codes,
    which is all the talker sees (`encoder_fingerprint` covers them for the cloning cases).

    Not a byte hash: make-checkpoint's floats may differ in the last bit with the torch thread count
    (1e-9 seen in the codec init), which moves no code; a changed init moves these moments by O(1/sqrt(n)).
    """
    out: dict[str, list] = {}
    for file, prefix in parts:
        with safe_open(str(path / file), framework="pt") as handle:
            for name in sorted(handle.keys()):
                if name.startswith(prefix):
                    values = handle.get_tensor(name).double().reshape(-1)
                    ramp = torch.linspace(-1.0, 1.0, values.numel(), dtype=torch.float64)
                    moments = (values.mean(), values.square().mean().sqrt(), (values * ramp).mean())
                    out[name] = [list(handle.get_slice(name).get_shape()), *(float(f"{m:.9g}") for m in moments)]
    return out


def encoder_fingerprint(path: Path) -> dict[str, list]:
    """Like `checkpoint_fingerprint`, for what turns reference audio into a voice prompt: the speaker
    encoder (x-vector) and the codec encoder (reference codes). Only the cloning cases depend on them."""
    return checkpoint_fingerprint(path, (("model.safetensors", "speaker_encoder."),
                                         ("speech_tokenizer/model.safetensors", "encoder.")))


def changed_tensors(found: dict[str, list], expected: dict[str, list], tol: float = 1e-6) -> list[str]:
    """Names whose shape or moments differ (beyond float rounding), plus missing and unexpected ones."""
    changed = sorted(set(found) ^ set(expected))
    for name in sorted(set(found) & set(expected)):
        (shape_a, *a), (shape_b, *b) = found[name], expected[name]
        if shape_a != shape_b or any(abs(x - y) > tol * max(abs(x), abs(y)) + 1e-9 for x, y in zip(a, b, strict=True)):
            changed.append(name)
    return changed
