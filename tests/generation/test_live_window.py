"""Decode attends to the cache's live window only (generation/cache.py ``KVCache.attend``):
equal to attention over every slot for left-padded rows at any fill level, and generate gives
the tokens of the full-cache read."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from qwen2vl_jax import Qwen2VLForConditionalGeneration, get_preset
from qwen2vl_jax.generation.cache import KVCache
from qwen2vl_jax.ops.attention import attention

CFG = get_preset("tiny")


def _cache(b, t, index, pads, seed):
    rng = np.random.default_rng(seed)
    t_cfg = CFG.text
    cache = KVCache.create(t_cfg, b, t, jnp.float32)
    shape = cache.keys.shape
    seg = np.zeros((b, t), np.int32)
    for r, p in enumerate(pads):
        seg[r, p:index] = 1  # left padding, then prompt + generated tokens, then empty slots
    keys = jnp.asarray(rng.standard_normal(shape), jnp.float32)
    values = jnp.asarray(rng.standard_normal(shape), jnp.float32)
    return KVCache(keys, values, jnp.asarray(seg), jnp.int32(index), fresh=False)


@pytest.mark.parametrize("t,index,pads", [(512, 300, (0, 140)), (768, 767, (200, 5)), (384, 1, (0, 0)),
                                          (640, 129, (128, 100))])
def test_attend_equals_attention_over_every_slot(t, index, pads):
    cache = _cache(len(pads), t, index, pads, seed=t + index)
    q = jnp.asarray(np.random.default_rng(1).standard_normal(
        (len(pads), 1, CFG.text.num_attention_heads, CFG.text.head_dim)), jnp.float32)
    qseg = jnp.ones((len(pads), 1), jnp.int32)
    for layer in range(CFG.text.num_hidden_layers):
        keys, values = cache.read(jnp.int32(layer))
        full = attention(q, keys, values, q_segment_ids=qseg, kv_segment_ids=cache.segment_ids,
                         causal=False, impl="xla")
        live = jax.jit(lambda c, q, layer: c.attend(layer, q, qseg))(cache, q, jnp.int32(layer))
        assert float(jnp.abs(live - full).max()) <= 1e-6


def test_generate_matches_the_full_cache_read(monkeypatch):
    model = Qwen2VLForConditionalGeneration(CFG, seed=0)
    rng = np.random.default_rng(0)
    ids = rng.integers(10, 140, (2, 300))  # below the special tokens (150+)
    mask = np.ones_like(ids)
    mask[1, :70] = 0
    kw = dict(max_new_tokens=40, eos_token_id=[])
    windowed = model.generate(ids, mask, **kw)

    def full_read(self, layer, q, q_segment_ids, scale=None):
        keys, values = self.read(layer)
        return attention(q, keys, values, q_segment_ids=q_segment_ids, kv_segment_ids=self.segment_ids,
                         causal=False, impl="xla", scale=scale)

    monkeypatch.setattr(KVCache, "attend", full_read)
    reference = Qwen2VLForConditionalGeneration(CFG, seed=0).generate(ids, mask, **kw)
    np.testing.assert_array_equal(windowed, reference)
