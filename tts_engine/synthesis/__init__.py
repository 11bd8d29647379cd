"""A loaded checkpoint (TTSModel), the official prompt layouts, whole-text synthesis, voice prompts."""
