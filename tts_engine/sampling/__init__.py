"""Choosing codes: the official logits processors and the counter-based RNG they draw from."""
