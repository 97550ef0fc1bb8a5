"""Generation: the KV cache (cache.py), prefill and the on-device decode loop (decode.py),
transformers' logits processors and sampling (sampling.py), the resolved arguments and their
defaults (settings.py), and the host-side driver behind ``model.generate`` (runner.py).

Submodules are imported where used: the decoder imports ``generation.cache`` without pulling in
the model.
"""
