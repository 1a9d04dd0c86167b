"""Merging fine-tuned specialists: per-tensor rules (methods), the mergekit-style config, the streaming merge."""
