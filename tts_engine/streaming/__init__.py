"""The streaming engine: streams, the scheduler thread, the batched frame step, the voice cache."""
