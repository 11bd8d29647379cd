"""Exact incremental codec decoding: any way of stepping through the codes gives the full forward's samples."""

from __future__ import annotations

import pytest
import torch

from tts_engine.model.codec_decoder import CodecDecoder, init_random_, tiny_codec_decoder_config
from tts_engine.model.codec_stream import CodecStreamState, StreamingCodecDecoder

FRAMES = 160  # > 2 attention windows (72 frames)
SPF = 1920
TOLERANCE = 1e-4


@pytest.fixture(scope="module")
def codec() -> StreamingCodecDecoder:
    decoder = CodecDecoder(tiny_codec_decoder_config()).eval()
    init_random_(decoder, torch.Generator().manual_seed(0))
    return StreamingCodecDecoder(decoder)


@pytest.fixture(scope="module")
def codes() -> torch.Tensor:
    return torch.randint(0, 2048, (3, 16, FRAMES), generator=torch.Generator().manual_seed(7))


@pytest.fixture(scope="module")
def full(codec: StreamingCodecDecoder, codes: torch.Tensor) -> torch.Tensor:
    with torch.inference_mode():
        return codec.decoder(codes)[:, 0]  # (3, FRAMES * SPF)


@torch.no_grad()
def run(codec: StreamingCodecDecoder, codes: torch.Tensor, sizes: list[int],
        state: CodecStreamState | None = None) -> torch.Tensor:
    state = state if state is not None else codec.new_state(codes.shape[0])
    before = state.frames.clone()
    out, start = [], 0
    for n in sizes:
        chunk = codec.decode_step(codes[:, :, start:start + n], state)
        assert chunk.shape == (codes.shape[0], n * SPF)
        out.append(chunk)
        start += n
    assert start == codes.shape[-1] and torch.equal(state.frames, before + start)
    return torch.cat(out, dim=-1)


def test_frame_by_frame_equals_full_forward(codec: StreamingCodecDecoder, codes: torch.Tensor,
                                            full: torch.Tensor) -> None:
    got = run(codec, codes[:1], [1] * FRAMES)
    assert float((got - full[:1]).abs().max()) <= TOLERANCE


def test_random_step_sizes_equal_full_forward(codec: StreamingCodecDecoder, codes: torch.Tensor,
                                              full: torch.Tensor) -> None:
    g = torch.Generator().manual_seed(1)
    sizes: list[int] = []
    while sum(sizes) < FRAMES:
        sizes.append(min(int(torch.randint(1, 20, (1,), generator=g)), FRAMES - sum(sizes)))
    got = run(codec, codes[1:], sizes)  # two rows stepping together
    assert float((got - full[1:]).abs().max()) <= TOLERANCE


def test_rows_joining_late_equal_their_solo_runs(codec: StreamingCodecDecoder, codes: torch.Tensor,
                                                 full: torch.Tensor) -> None:
    """Three streams share batched steps; they start at steps 0, 9 and 50, so they sit at different
    absolute positions. Each row must equal its own solo decode (the decoder is causal, so the first n
    frames of `full` are the solo full forward of n frames)."""
    starts, steps = [0, 9, 50], 100
    states = [codec.new_state() for _ in starts]
    outputs: list[list[torch.Tensor]] = [[] for _ in starts]
    for step in range(steps):
        live = [i for i, s in enumerate(starts) if s <= step]
        frame_codes = torch.stack([codes[i, :, step - starts[i]] for i in live])  # (B, 16)
        pcm = codec.step([states[i] for i in live], frame_codes)
        assert pcm.shape == (len(live), SPF)
        for row, i in enumerate(live):
            outputs[i].append(pcm[row])
    for i, start in enumerate(starts):
        n = steps - start
        assert int(states[i].frames) == n
        got = torch.cat(outputs[i])
        assert float((got - full[i, : n * SPF]).abs().max()) <= TOLERANCE


def test_prime_then_steps_equal_full_decode_minus_prefix(codec: StreamingCodecDecoder, codes: torch.Tensor,
                                                         full: torch.Tensor) -> None:
    reference, frames = 40, 120
    state = codec.new_state()
    codec.prime(codes[:1, :, :reference], state)
    assert int(state.frames) == reference
    primed = state.clone()
    got = run(codec, codes[:1, :, reference:frames], [1] * (frames - reference), state)
    assert float((got - full[:1, reference * SPF: frames * SPF]).abs().max()) <= TOLERANCE
    # A cached primed state can be reused: the clone was not touched by the steps above.
    again = run(codec, codes[:1, :, reference:reference + 2], [2], primed)
    assert float((again - got[:, : 2 * SPF]).abs().max()) <= TOLERANCE


def test_stack_split_select_round_trip(codec: StreamingCodecDecoder, codes: torch.Tensor) -> None:
    a, b = codec.new_state(), codec.new_state()
    codec.decode_step(codes[:1, :, :5], a)
    codec.decode_step(codes[1:2, :, :2], b)
    both = CodecStreamState.stack([a, b])
    assert both.batch == 2 and both.frames.tolist() == [5, 2]
    first, second = both.split()
    assert torch.equal(second.frames, b.frames)
    assert all(torch.equal(first.tails[k], a.tails[k]) for k in a.tails)
    picked = both.select([1])
    assert all(torch.equal(picked.tails[k], b.tails[k]) for k in b.tails)
    with pytest.raises(ValueError, match="rows"):
        codec.decode_step(codes[:1, :, :1], both)
