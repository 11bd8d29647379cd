import pytest
import torch

from tts_engine.sampling import CodeZeroProcessor, SamplingParams, draw

EOS = 2150


def _processor(batch: int = 1, **kw) -> CodeZeroProcessor:  # type: ignore[no-untyped-def]
    return CodeZeroProcessor(3072, EOS, SamplingParams(**kw), batch, torch.device("cpu"))


def test_repetition_penalty_divides_positive_and_multiplies_negative_logits() -> None:
    proc = _processor()
    proc.record(torch.tensor([5]))
    proc.record(torch.tensor([7]))
    logits = torch.zeros(1, 3072)
    logits[0, 5], logits[0, 7], logits[0, 9] = 2.1, -2.1, 2.1
    out = proc(logits.clone(), torch.tensor([3]), torch.tensor([True]))
    assert out[0, 5].item() == pytest.approx(2.1 / 1.05)
    assert out[0, 7].item() == pytest.approx(-2.1 * 1.05)
    assert out[0, 9].item() == pytest.approx(2.1)


def test_eos_blocked_for_min_new_tokens_and_by_policy() -> None:
    proc = _processor(batch=3)
    logits = torch.zeros(3, 3072)
    logits[:, EOS] = 100.0
    out = proc(logits, torch.tensor([1, 2, 2]), torch.tensor([True, True, False]))
    assert out.argmax(-1).tolist()[1] == EOS
    assert out[0, EOS] == float("-inf") and out[2, EOS] == float("-inf")


def test_control_ids_suppressed_but_eos() -> None:
    proc = _processor()
    logits = torch.zeros(1, 3072)
    out = proc(logits, torch.tensor([5]), torch.tensor([True]))
    assert torch.isinf(out[0, 2048:]).sum().item() == 1023
    assert out[0, EOS] == 0 and torch.isfinite(out[0, :2048]).all()


def test_greedy_is_argmax_and_sampling_is_seeded_per_row() -> None:
    logits = torch.randn(2, 2048)
    assert torch.equal(draw(logits, [], True, 0.9, 50, 1.0), logits.argmax(-1))
    def sample(seed_a: int, seed_b: int) -> list[int]:
        gens = [torch.Generator().manual_seed(seed_a), torch.Generator().manual_seed(seed_b)]
        return [draw(logits, gens, False, 0.9, 50, 1.0).tolist() for _ in range(20)]
    assert sample(1, 2) == sample(1, 2)
    assert sample(1, 2) != sample(3, 2)
    # Row 1's draws do not depend on row 0's generator.
    assert [s[1] for s in sample(1, 2)] == [s[1] for s in sample(3, 2)]


def test_top_k_keeps_only_k_candidates() -> None:
    logits = torch.arange(2048, dtype=torch.float32)[None]
    gen = [torch.Generator().manual_seed(0)]
    draws = {int(draw(logits, gen, False, 5.0, 3, 1.0)) for _ in range(200)}
    assert draws <= {2045, 2046, 2047} and len(draws) > 1


def test_generation_config_defaults_and_greedy_override() -> None:
    p = SamplingParams.from_generation_config({"temperature": 0.7, "subtalker_top_k": 20}, greedy=True, seed=3)
    assert (p.temperature, p.sub_top_k, p.greedy, p.sub_greedy, p.seed) == (0.7, 20, True, True, 3)
