"""The nn modules (talker, code predictor, speaker encoder, codec decoder/encoder), their configs and
the exact incremental codec decoder. No loading, no text, no sampling."""
