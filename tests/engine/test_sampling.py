"""Code choice: the official processors, per-row settings, and the counter-based RNG."""

import pytest
import torch

from tts_engine.sampling.processors import SamplingParams, choose, process_code0, suppressed_ids
from tts_engine.sampling.rng import counter_uniform, hash32

EOS = 2150
V = 3072


def _process(logits: torch.Tensor, seen: torch.Tensor, eos_ok: list[bool], penalty: float = 1.05) -> torch.Tensor:
    batch = logits.shape[0]
    return process_code0(logits, seen, torch.full((batch,), penalty), torch.tensor(eos_ok),
                         suppressed_ids(V, EOS, torch.device("cpu")), EOS)


def _choose(logits: torch.Tensor, u: torch.Tensor, greedy: bool = False, temperature: float = 1.0,
            top_k: int = 0, top_p: float = 1.0) -> torch.Tensor:
    batch = logits.shape[0]
    return choose(logits, torch.full((batch,), greedy), torch.full((batch,), temperature),
                  torch.full((batch,), top_k), torch.full((batch,), top_p), u)


def test_repetition_penalty_divides_positive_and_multiplies_negative_logits() -> None:
    seen = torch.zeros(1, V, dtype=torch.bool)
    seen[0, 5] = seen[0, 7] = True
    logits = torch.zeros(1, V)
    logits[0, 5], logits[0, 7], logits[0, 9] = 2.1, -2.1, 2.1
    out = _process(logits, seen, [True])
    assert out[0, 5].item() == pytest.approx(2.1 / 1.05)
    assert out[0, 7].item() == pytest.approx(-2.1 * 1.05)
    assert out[0, 9].item() == pytest.approx(2.1)


def test_eos_blocked_per_row() -> None:
    logits = torch.zeros(3, V)
    logits[:, EOS] = 100.0
    out = _process(logits, torch.zeros(3, V, dtype=torch.bool), [False, True, False])
    assert out.argmax(-1).tolist()[1] == EOS
    assert out[0, EOS] == float("-inf") and out[2, EOS] == float("-inf")


def test_control_ids_suppressed_but_eos() -> None:
    out = _process(torch.zeros(1, V), torch.zeros(1, V, dtype=torch.bool), [True])
    assert torch.isinf(out[0, 2048:]).sum().item() == 1023
    assert out[0, EOS] == 0 and torch.isfinite(out[0, :2048]).all()


def test_greedy_rows_take_the_argmax_whatever_their_uniform() -> None:
    logits = torch.randn(4, 2048, generator=torch.Generator().manual_seed(0))
    for u in (1e-6, 0.5, 1.0):
        assert torch.equal(_choose(logits, torch.full((4,), u), greedy=True), logits.argmax(-1))


def test_mixed_rows_follow_their_own_settings() -> None:
    logits = torch.randn(2, 2048, generator=torch.Generator().manual_seed(1))
    u = torch.tensor([0.3, 0.3])
    out = choose(logits, torch.tensor([True, False]), torch.tensor([0.9, 0.9]), torch.tensor([50, 1]),
                 torch.tensor([1.0, 1.0]), u)
    assert out[0] == logits[0].argmax() and out[1] == logits[1].argmax()  # top_k=1 is greedy too


def test_inverse_cdf_follows_the_distribution() -> None:
    # Uniform grid of u: each token's share of the grid is its probability.
    logits = torch.tensor([[2.0, 1.0, 0.0, -1.0, float("-inf")]])
    u = (torch.arange(1, 100_001, dtype=torch.float32) / 100_000)
    picks = _choose(logits.expand(u.shape[0], -1), u)
    freq = torch.bincount(picks, minlength=5).float() / u.shape[0]
    assert torch.allclose(freq, logits.softmax(-1)[0], atol=1e-3)
    assert freq[4] == 0  # a -inf logit is never drawn, even at u = 1


def test_top_k_and_top_p_keep_only_their_candidates() -> None:
    logits = torch.arange(2048, dtype=torch.float32)[None].expand(2000, -1)
    u = torch.rand(2000, generator=torch.Generator().manual_seed(2)).clamp(min=1e-6)
    draws = set(_choose(logits, u, temperature=5.0, top_k=3).tolist())
    assert draws == {2045, 2046, 2047}
    # Temperature 1 over 0..2047: p(2047) = 0.63, p(2046) = 0.23, so top_p 0.7 keeps exactly those two.
    draws = set(_choose(logits, u, top_p=0.7).tolist())
    assert draws == {2046, 2047}


def test_hash32_is_lowbias32() -> None:
    def reference(x: int) -> int:
        x ^= x >> 16
        x = (x * 0x7FEB352D) & 0xFFFFFFFF
        x ^= x >> 15
        x = (x * 0x846CA68B) & 0xFFFFFFFF
        return x ^ (x >> 16)

    words = torch.randint(0, 2**32, (2000,), dtype=torch.int64, generator=torch.Generator().manual_seed(3))
    words[:3] = torch.tensor([0, 1, 2**32 - 1])
    assert hash32(words).tolist() == [reference(int(w)) for w in words]


def test_counter_uniform_is_uniform_in_0_1_and_depends_on_every_counter() -> None:
    n = 200_000
    u = counter_uniform(torch.full((n,), 7), torch.arange(n), 3)
    assert float(u.min()) > 0 and float(u.max()) <= 1.0
    assert abs(float(u.mean()) - 0.5) < 0.005 and abs(float(u.std()) - (1 / 12) ** 0.5) < 0.005
    hist = torch.histc(u, bins=20, min=0, max=1) / n
    assert float((hist - 0.05).abs().max()) < 0.003
    base = counter_uniform(torch.tensor([5]), torch.tensor([9]), 1)
    for seed, frame, draw in ((6, 9, 1), (5, 10, 1), (5, 9, 2), (5 + 2**32, 9, 1), (-5, 9, 1)):
        assert not torch.equal(counter_uniform(torch.tensor([seed]), torch.tensor([frame]), draw), base)
    # A pure function of its counters: the same value alone or inside any batch.
    batch = counter_uniform(torch.tensor([1, 5, 3]), torch.tensor([0, 9, 4]), torch.tensor([0, 1, 2]))
    assert torch.equal(batch[1:2], base)


def test_generation_config_defaults_and_greedy_override() -> None:
    p = SamplingParams.from_generation_config({"temperature": 0.7, "subtalker_top_k": 20}, greedy=True, seed=3)
    assert (p.temperature, p.sub_top_k, p.greedy, p.sub_greedy, p.seed) == (0.7, 20, True, True, 3)
