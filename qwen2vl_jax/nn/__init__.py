"""Flax NNX modules of Qwen2-VL: norms, linear layers, vision tower, merger, decoder."""
