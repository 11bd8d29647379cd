"""Text in: the prompt templates' ids, incremental tokenization, the Qwen2 vocabulary files."""
