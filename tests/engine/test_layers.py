"""Static KV cache with a batch of rows at different positions (what stream batching relies on)."""

import torch

from tts_engine.model.layers import DecoderStack


def _stack() -> DecoderStack:
    torch.manual_seed(0)
    stack = DecoderStack(hidden_size=32, intermediate_size=64, n_layers=2, n_heads=4, n_kv_heads=2, head_dim=8,
                         eps=1e-6, rope_theta=10000.0).eval()
    for p in stack.parameters():
        torch.nn.init.normal_(p, 0.0, 0.3)
    return stack


@torch.no_grad()
def test_incremental_decode_equals_full_forward() -> None:
    stack = _stack()
    x = torch.randn(1, 12, 32)
    stack.setup_cache(1, 16)
    full = stack(x, torch.arange(12)[None])
    stack.setup_cache(1, 16)
    parts = [stack(x[:, :5], torch.arange(5)[None])]
    parts += [stack(x[:, t:t + 1], torch.tensor([[t]])) for t in range(5, 12)]
    torch.testing.assert_close(torch.cat(parts, dim=1), full, rtol=0, atol=1e-5)


@torch.no_grad()
def test_rows_at_different_positions_match_solo_runs() -> None:
    stack = _stack()
    a, b = torch.randn(1, 9, 32), torch.randn(1, 4, 32)
    # Solo: each sequence alone, last position decoded incrementally.
    stack.setup_cache(1, 16)
    stack(a[:, :8], torch.arange(8)[None])
    solo_a = stack(a[:, 8:], torch.tensor([[8]]))
    stack.setup_cache(1, 16)
    stack(b[:, :3], torch.arange(3)[None])
    solo_b = stack(b[:, 3:], torch.tensor([[3]]))
    # Batched: prefill each into its own cache row, then one step for both rows together.
    stack.setup_cache(2, 16)
    stack(a[:, :8], torch.arange(8)[None], rows=slice(0, 1))
    stack(b[:, :3], torch.arange(3)[None], rows=slice(1, 2))
    both = stack(torch.cat([a[:, 8:], b[:, 3:]]), torch.tensor([[8], [3]]))
    torch.testing.assert_close(both[0], solo_a[0], rtol=0, atol=1e-5)
    torch.testing.assert_close(both[1], solo_b[0], rtol=0, atol=1e-5)
