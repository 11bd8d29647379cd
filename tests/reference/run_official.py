"""Run the official qwen-tts 0.1.1 on checkpoints and record what it produced. Runs INSIDE the reference venv.

    python run_official.py golden --spec SPEC.json --out DIR
        SPEC: {"checkpoints": {NAME: DIR}, "cases": [{"name", "checkpoint", "text", "speaker", "language",
               "instruct", "non_streaming", "max_new_tokens", "save_audio", "xvector_signal",
               "clone" (null | "xvector" | "icl"), "ref_audio", "ref_text"}]}
        writes DIR/<case>.npz (codes, input_ids, [instruct_ids], [audio], [xvector], [ref_codes, ref_ids])
        and DIR/results.json. ICL audio is what the wrapper returns: the reference part already cut.
    python run_official.py check-load DIR [DIR ...]
        loads each checkpoint with Qwen3TTSModel.from_pretrained and runs one short greedy generate;
        prints one JSON object {DIR: {"kind", "frames", ...}} as the last line of stdout; exits non-zero
        on the first failure.

Decoding is greedy (do_sample=False, subtalker_dosample=False) through the official public API
(generate_custom_voice / generate_voice_design / generate_voice_clone, with an x-vector-only prompt made
from a synthetic signal, or with create_voice_clone_prompt on a reference WAV: x-vector only or ICL); the
official logits processors stay (repetition penalty 1.05, min_new_tokens 2, suppressed control ids).
`model.generate` and `talker.generate` are wrapped, not replaced, to capture the codes and the sampled
code-0 sequence; the waveform is one full forward of the official codec decoder.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import sys
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import official_stubs  # noqa: E402,F401  (must precede the qwen_tts import)

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from signals import SAMPLE_RATE, voiced_signal  # noqa: E402

GREEDY = {"do_sample": False, "subtalker_dosample": False}


class Recorder:
    """Wraps the official model's generate calls (same arguments, same results) to keep their outputs."""

    def __init__(self, wrapper: Any) -> None:
        self.calls: list[dict[str, Any]] = []
        model = wrapper.model
        generate, talker_generate = model.generate, model.talker.generate

        def recorded_generate(*args: Any, **kwargs: Any) -> Any:
            codes_list, hiddens = generate(*args, **kwargs)
            self.calls.append({"kwargs": kwargs, "codes": [c.detach().clone() for c in codes_list]})
            return codes_list, hiddens

        def recorded_talker_generate(*args: Any, **kwargs: Any) -> Any:
            result = talker_generate(*args, **kwargs)
            self.last_sequences = result.sequences.detach().clone()  # (B, n_sampled) code-0 ids
            return result

        model.generate = recorded_generate
        model.talker.generate = recorded_talker_generate
        self.last_sequences: torch.Tensor | None = None


def load(path: str) -> tuple[Any, Recorder]:
    from qwen_tts import Qwen3TTSModel

    wrapper = Qwen3TTSModel.from_pretrained(path, dtype=torch.float32)
    wrapper.model.eval()
    return wrapper, Recorder(wrapper)


@functools.cache
def own_tokenizers(path: str) -> dict[str, Any]:
    """The checkpoint's own tokenizers (its own pre-tokenizer regex), without qwen-tts' loader flags."""
    from transformers import AutoTokenizer

    out: dict[str, Any] = {"AutoTokenizer": AutoTokenizer.from_pretrained(path)}
    if (Path(path) / "tokenizer.json").exists():
        from tokenizers import Tokenizer

        out["tokenizer.json"] = Tokenizer.from_file(str(Path(path) / "tokenizer.json"))
    return out


def own_tokenizer_ids(path: str, text: str) -> dict[str, list[int]]:
    out = {}
    for source, tok in own_tokenizers(path).items():
        encoded = tok.encode(text, add_special_tokens=False)
        out[source] = encoded if isinstance(encoded, list) else encoded.ids
    return out


def speaker_xvector(wrapper: Any, spec: dict[str, Any]) -> torch.Tensor:
    signal = voiced_signal(**spec)
    # The official path: 24 kHz audio -> 128-bin log-mel -> ECAPA speaker encoder -> (enc_dim,)
    return wrapper.model.extract_speaker_embedding(audio=signal, sr=SAMPLE_RATE).detach().float().clone()


def run_case(wrapper: Any, recorder: Recorder, path: str, case: dict[str, Any]) -> tuple[dict, dict]:
    from qwen_tts.inference.qwen3_tts_model import VoiceClonePromptItem

    kind = wrapper.model.tts_model_type
    common = dict(text=case["text"], language=case.get("language") or "Auto",
                  non_streaming_mode=bool(case["non_streaming"]), max_new_tokens=int(case["max_new_tokens"]),
                  **GREEDY)
    arrays: dict[str, np.ndarray] = {}
    recorder.calls.clear()
    if kind == "custom_voice":
        wavs, sr = wrapper.generate_custom_voice(speaker=case["speaker"], instruct=case.get("instruct"), **common)
    elif kind == "voice_design":
        wavs, sr = wrapper.generate_voice_design(instruct=case.get("instruct") or "", **common)
    elif kind == "base" and case.get("clone"):
        # The user-facing path: a prompt from a reference recording, then generate_voice_clone with it.
        icl = case["clone"] == "icl"
        items = wrapper.create_voice_clone_prompt(ref_audio=str(Path(case["ref_audio"]).resolve()),
                                                  ref_text=case["ref_text"] if icl else None,
                                                  x_vector_only_mode=not icl)
        item = items[0]
        arrays["xvector"] = item.ref_spk_embedding.detach().float().cpu().numpy().astype(np.float32)
        if icl:
            arrays["ref_codes"] = item.ref_code.detach().cpu().numpy().astype(np.int16)  # (F, 16)
        wavs, sr = wrapper.generate_voice_clone(voice_clone_prompt=items, **common)
    elif kind == "base":
        xvec = speaker_xvector(wrapper, case["xvector_signal"])
        arrays["xvector"] = xvec.numpy().astype(np.float32)
        item = VoiceClonePromptItem(ref_code=None, ref_spk_embedding=xvec, x_vector_only_mode=True, icl_mode=False)
        wavs, sr = wrapper.generate_voice_clone(voice_clone_prompt=[item], **common)
    else:
        raise ValueError(f"unknown tts_model_type {kind!r}")
    assert sr == SAMPLE_RATE and len(recorder.calls) == 1, (sr, len(recorder.calls))

    call = recorder.calls[0]
    codes = call["codes"][0].cpu()  # (T, 16)
    input_ids = call["kwargs"]["input_ids"][0][0].cpu().tolist()
    instruct = (call["kwargs"].get("instruct_ids") or [None])[0]
    arrays["codes"] = codes.numpy().astype(np.int16)
    arrays["input_ids"] = np.asarray(input_ids, dtype=np.int64)
    if instruct is not None:
        arrays["instruct_ids"] = instruct[0].cpu().numpy().astype(np.int64)

    # fix_mistral_regex guard: the ids the official processor gave must be the checkpoint's own.
    text_ids = input_ids[3:-5]  # <|im_start|>assistant\n TEXT <|im_end|>\n<|im_start|>assistant\n
    checks = [(case["text"], text_ids)]
    if instruct is not None:
        checks.append((f"<|im_start|>user\n{case['instruct']}<|im_end|>\n", arrays["instruct_ids"].tolist()))
    ref_ids = None
    if "ref_codes" in arrays:  # ICL: <|im_start|>assistant\n REF <|im_end|>\n, sliced [3:-2] officially
        ref_ids = call["kwargs"]["ref_ids"][0][0].cpu().tolist()[3:-2]
        arrays["ref_ids"] = np.asarray(ref_ids, dtype=np.int64)
        checks.append((case["ref_text"], ref_ids))
    for text, official_ids in checks:
        for source, ids in own_tokenizer_ids(path, text).items():
            if ids != official_ids:
                raise AssertionError(f"{case['name']}: official processor ids {official_ids} != {source} ids "
                                     f"{ids} for {text!r} (fix_mistral_regex swap? avoid camel-case)")

    # The official decode is chunked (300 frames, 25 of left context); one chunk = one full forward.
    # ICL: the wrapper decodes reference + generated codes and cuts the reference part (recomputed here
    # with its own formula, on one full forward).
    decoder = wrapper.model.speech_tokenizer.model.decoder
    ref_frames = int(arrays["ref_codes"].shape[0]) if "ref_codes" in arrays else 0
    decoded = torch.cat([torch.from_numpy(arrays["ref_codes"].astype(np.int64)), codes]) if ref_frames else codes
    cut = 0
    with torch.no_grad():
        if len(codes):
            full = decoder(decoded.T[None].clamp(min=0)).squeeze(0).squeeze(0).float().numpy()
            if ref_frames:
                cut = int(ref_frames / max(len(decoded), 1) * full.shape[0])
                full = full[cut:]
        else:
            full = np.zeros(0, np.float32)
    assert full.shape == wavs[0].shape, (full.shape, wavs[0].shape)
    api_vs_full = float(np.max(np.abs(full - wavs[0]))) if len(codes) else 0.0
    if case.get("save_audio"):
        arrays["audio"] = full.astype(np.float32)

    sequences = recorder.last_sequences[0].tolist()
    eos = wrapper.model.config.talker_config.codec_eos_token_id
    meta = {
        "frames": int(codes.shape[0]),
        "ended_by": "eos" if eos in sequences else "max_new_tokens",
        "sampled_code0": len(sequences),
        "input_ids": input_ids,
        "text_ids": text_ids,
        "instruct_ids": arrays["instruct_ids"].tolist() if "instruct_ids" in arrays else None,
        "audio_samples": int(full.shape[0]),
        "ref_ids": ref_ids,
        "ref_frames": ref_frames,
        "cut_samples": cut,
        "api_vs_full_decode_max_abs": api_vs_full,
    }
    return meta, arrays


def cmd_golden(args: argparse.Namespace) -> int:
    import importlib.metadata as md

    import transformers

    torch.manual_seed(0)
    spec = json.loads(Path(args.spec).read_text())
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    loaded: dict[str, tuple[Any, Recorder]] = {}
    results: dict[str, Any] = {"qwen_tts_version": md.version("qwen-tts"),
                               "transformers_version": transformers.__version__,
                               "torch_version": torch.__version__, "cases": {}}
    for case in spec["cases"]:
        path = spec["checkpoints"][case["checkpoint"]]
        if path not in loaded:
            loaded[path] = load(path)
        wrapper, recorder = loaded[path]
        meta, arrays = run_case(wrapper, recorder, path, case)
        np.savez_compressed(out / f"{case['name']}.npz", **arrays)
        results["cases"][case["name"]] = meta
        print(f"{case['name']}: {meta['frames']} frames, ended by {meta['ended_by']}", file=sys.stderr)
    (out / "results.json").write_text(json.dumps(results, indent=1))
    return 0


def cmd_check_load(args: argparse.Namespace) -> int:
    report: dict[str, Any] = {}
    for path in args.dirs:
        wrapper, recorder = load(path)
        kind = wrapper.model.tts_model_type
        case = {"name": "check", "text": "Hello there.", "language": "english", "non_streaming": False,
                "max_new_tokens": 8, "speaker": None, "instruct": None,
                "xvector_signal": {"seconds": 0.5}}
        if kind == "custom_voice":
            case["speaker"] = sorted(wrapper.get_supported_speakers())[0]
        if kind == "voice_design":
            case["instruct"] = "A calm voice."
        meta, _ = run_case(wrapper, recorder, path, case)
        report[path] = {"kind": kind, "frames": meta["frames"], "audio_samples": meta["audio_samples"],
                        "role_ids": meta["input_ids"][:3], "text_ids": meta["text_ids"],
                        "speakers": wrapper.get_supported_speakers(),
                        "languages": wrapper.get_supported_languages()}
    # qwen_tts prints banners on stdout at import: the report is the last line.
    print("\n" + json.dumps(report))
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    golden = sub.add_parser("golden")
    golden.add_argument("--spec", required=True)
    golden.add_argument("--out", required=True)
    golden.set_defaults(func=cmd_golden)
    check = sub.add_parser("check-load")
    check.add_argument("dirs", nargs="+")
    check.set_defaults(func=cmd_check_load)
    args = parser.parse_args()
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
