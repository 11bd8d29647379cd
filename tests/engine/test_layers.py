"""Static KV cache with a batch of rows at different positions (what stream batching relies on)."""

import torch
import torch.nn.functional as F

from tts_engine.model.codec_stream import pcm_to_int16
from tts_engine.model.layers import DecoderStack, folded_attention


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


@torch.no_grad()
def test_folded_attention_equals_grouped_query_attention() -> None:
    """The GPU decode path (query heads folded into the query axis) == SDPA with enable_gqa (the reference)."""
    torch.manual_seed(1)
    batch, n_heads, n_kv, dim, kv_len = 3, 8, 2, 16, 11
    keys, values = torch.randn(batch, n_kv, kv_len, dim), torch.randn(batch, n_kv, kv_len, dim)
    for seq in (1, 4):
        q = torch.randn(batch, n_heads, seq, dim)
        # rows at different positions: row r sees slots <= its own position (what DecoderStack builds)
        positions = torch.tensor([[kv_len - seq + t for t in range(seq)], [2 + t for t in range(seq)],
                                  [5 + t for t in range(seq)]])
        mask = torch.arange(kv_len)[None, None, None, :] <= positions[:, None, :, None]  # (B, 1, T, S)
        for m in (mask, None):
            want = F.scaled_dot_product_attention(q, keys, values, attn_mask=m, enable_gqa=True)
            got = folded_attention(q, keys, values, m)
            torch.testing.assert_close(got, want, rtol=0, atol=1e-6)
    # a wrong head order (kv heads repeated, not interleaved) would not match: the check is live
    q = torch.randn(batch, n_heads, 1, dim)
    shuffled = q.view(batch, n_kv, n_heads // n_kv, 1, dim).transpose(1, 2).reshape(batch, n_heads, 1, dim)
    assert not torch.allclose(folded_attention(shuffled, keys, values, None),
                              F.scaled_dot_product_attention(q, keys, values, enable_gqa=True), atol=1e-3)


def test_pcm_to_int16_is_exact_at_full_scale_in_bf16_and_fp32() -> None:
    for dtype in (torch.float32, torch.bfloat16):
        samples = torch.tensor([1.0, -1.0, 0.5, 0.0, 1.0001, -1.5], dtype=dtype)
        got = pcm_to_int16(samples).tolist()
        assert got[:2] == [32767, -32767] and got[4] == 32767 and got[5] == -32768, (dtype, got)
        assert got[3] == 0 and abs(got[2] - 16384) <= 64  # (0.5 is 16383.5: rounds to 16384)
    # the bug it prevents: scaling in bf16 rounds 1.0 * 32767 up to 32768, which wraps to -32768
    assert (torch.tensor([1.0], dtype=torch.bfloat16) * 32767.0).round().to(torch.int16).item() == -32768
