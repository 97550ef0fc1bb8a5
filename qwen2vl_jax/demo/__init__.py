"""``qwen2vl-jax demo``: training.py trains a small VLM to read on CPU (the README's first
command); inference.py is the inference-only tour (checkpoint conversion + generate)."""
