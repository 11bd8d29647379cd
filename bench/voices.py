"""Voice benchmark: the cost of adding a cloned voice, and of opening a stream with a saved voice vs from raw
audio. JSON on stdout.

    python -m bench.voices --make tiny              # writes (once) a random tiny Base checkpoint
    python -m bench.voices --make 0.6b              # the real-size 0.6B Base, random weights
    python -m bench.voices --model DIR [--audio FILE] [--repeats N]

Adding (medians over --repeats): decode (read + downmix + resample to 24 kHz + checks), x-vector (speaker
encoder), reference codes (codec encoder, ICL only: the ICL prompt time minus the x-vector time), write (one
atomic safetensors file), and load (a saved prompt back, no audio work).
Opening (text known up front, greedy, first 80 ms frame out of the engine): with a saved voice = load the
prompt file + open_stream + first frame; from raw audio = decode + x-vector + open_stream + first frame.
The reference is espeak-ng speech at 48 kHz (about 5 s) unless --audio is given.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

TEXT = "Hello there, this is a cloned voice speaking."
REF_TEXT = "This is a short reference recording for a cloned voice, made by a speech synthesizer."


def _median_s(fn: Callable[[], Any], repeats: int) -> tuple[float, Any]:
    times, out = [], None
    for _ in range(repeats):
        started = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - started)
    return statistics.median(times), out


def _reference(workdir: Path) -> Path:
    raw, out = workdir / "espeak.wav", workdir / "ref48k.wav"
    subprocess.run(["espeak-ng", "-v", "en-us", "-s", "160", "-w", str(raw), REF_TEXT], check=True)
    subprocess.run(["sox", "-D", str(raw), "-r", "48000", "-b", "16", str(out)], check=True)
    return out


def _first_frame_s(engine: Any, open_voice: Callable[[], dict[str, Any]]) -> float:
    """Seconds from the start of `open_voice` (which gets the prompt) to the first frame out of the engine."""
    started = time.perf_counter()
    stream = engine.open_stream(language="english", greedy=True, **open_voice())
    stream.push_text(TEXT)
    stream.finish()
    next(iter(stream))
    elapsed = time.perf_counter() - started
    stream.cancel()
    for _ in stream:  # drain: the next run starts on an idle engine
        pass
    return elapsed


def run(model_dir: Path, audio: Path, repeats: int, device: str) -> dict[str, Any]:
    from agent.voices.reference_audio import load_reference
    from tts_engine import Engine, load_model, load_voice_prompt, save_voice_prompt

    started = time.perf_counter()
    model = load_model(model_dir, device=device)
    load_s = time.perf_counter() - started
    cfg = model.config
    out: dict[str, Any] = {"model": str(model_dir), "kind": cfg.tts_model_type, "size": cfg.tts_model_size,
                           "hidden_size": cfg.talker_config.hidden_size, "device": str(model.device),
                           "model_load_s": round(load_s, 3)}
    decode_s, ref = _median_s(lambda: load_reference(audio), repeats)
    out["reference"] = {"file": str(audio), "rate": ref.source_rate, "channels": ref.source_channels,
                        "seconds": round(ref.seconds, 3)}
    model.make_voice_prompt(ref.samples)  # warm-up (first call allocates)
    xvector_s, prompt = _median_s(lambda: model.make_voice_prompt(ref.samples), repeats)
    icl_prompt_s, icl = _median_s(lambda: model.make_voice_prompt(ref.samples, ref_text=REF_TEXT), repeats)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "v.voice.safetensors"
        write_s, _ = _median_s(lambda: save_voice_prompt(path, prompt, {"name": "v"}), repeats)
        xvector_bytes = path.stat().st_size
        load_saved_s, _ = _median_s(lambda: load_voice_prompt(path), repeats)
        icl_path = Path(tmp) / "icl.voice.safetensors"
        save_voice_prompt(icl_path, icl, {"name": "icl"})
        out["add"] = {
            "decode_resample_s": round(decode_s, 4), "xvector_s": round(xvector_s, 4),
            "codec_encode_s": round(max(0.0, icl_prompt_s - xvector_s), 4), "write_s": round(write_s, 4),
            "total_xvector_s": round(decode_s + xvector_s + write_s, 4),
            "total_icl_s": round(decode_s + icl_prompt_s + write_s, 4),
            "load_saved_s": round(load_saved_s, 5), "file_bytes_xvector": xvector_bytes,
            "file_bytes_icl": icl_path.stat().st_size, "ref_frames": int(icl.ref_codes.shape[0]),
        }
        with Engine(model) as engine:
            _first_frame_s(engine, lambda: {"voice_prompt": prompt})  # warm-up
            saved_s, _ = _median_s(lambda: _first_frame_s(engine, lambda: {"voice_prompt": load_voice_prompt(path)[0]}),
                                   repeats)
            raw_s, _ = _median_s(lambda: _first_frame_s(engine, lambda: {
                "voice_prompt": model.make_voice_prompt(load_reference(audio).samples)}), repeats)
            out["first_frame"] = {"saved_voice_s": round(saved_s, 4), "raw_audio_s": round(raw_s, 4),
                                  "saved_speedup": round(raw_s / saved_s, 2)}
            icl_s, _ = _median_s(lambda: _first_frame_s(engine, lambda: {
                "voice_prompt": load_voice_prompt(icl_path)[0]}), repeats)
            out["first_frame"]["saved_icl_voice_s"] = round(icl_s, 4)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.voices", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="a Base checkpoint directory")
    parser.add_argument("--make", choices=("tiny", "0.6b", "1.7b"), help="write (once) a random Base checkpoint")
    parser.add_argument("--cache", default=str(Path(tempfile.gettempdir()) / "voicegate-bench"),
                        help="where --make keeps its checkpoints")
    parser.add_argument("--audio", help="reference recording (default: espeak-ng speech at 48 kHz)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if (args.model is None) == (args.make is None):
        parser.error("give --model DIR or --make SIZE")
    model_dir = Path(args.model) if args.model else Path(args.cache) / f"base-{args.make}"
    if args.make and not (model_dir / "config.json").exists():
        from tts_engine import make_checkpoint

        print(f"writing a random {args.make} Base checkpoint to {model_dir} ...", file=sys.stderr)
        make_checkpoint(model_dir, size=args.make, kind="base", seed=0)
    with tempfile.TemporaryDirectory() as tmp:
        audio = Path(args.audio) if args.audio else _reference(Path(tmp))
        result = run(model_dir, audio, args.repeats, args.device)
    result.update(machine=platform.machine(), cpus=torch.get_num_threads(), torch=torch.__version__,
                  repeats=args.repeats)
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
