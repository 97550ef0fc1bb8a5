"""Every attention implementation behind ops.attention against the xla oracle (CPU: Pallas
interpret mode), the proof that each honours segment ids, and the refusals."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from segment_layouts import batch_of_layouts, random_qkv, weighted_sum

from qwen2vl_jax.ops.attention import IMPLEMENTATIONS, attention, resolve_impl

HQ, HKV, D = 4, 2, 80
# Per implementation: sequence length and block sizes. Splash tiles kv in 128 lanes, so it gets
# 128-blocks and a length that is not a multiple of them; the others get small blocks.
SETUP = {
    "block_sparse": (100, {"block_q": 16, "block_kv": 32}),
    "splash": (200, {"block_q": 128, "block_kv": 128}),
    "pallas_gpu": (100, {"block_q": 32, "block_kv": 32}),
    "xla_blocked": (256, {}),
}


def _run(impl, seg, causal, blocks):
    def f(q, k, v):
        return attention(q, k, v, q_segment_ids=seg, kv_segment_ids=seg, causal=causal, impl=impl, **blocks)
    return f


def _value_and_grads(f, q, k, v):
    out = jax.jit(f)(q, k, v)
    grads = jax.jit(jax.grad(lambda *a: weighted_sum(f(*a)), argnums=(0, 1, 2)))(q, k, v)
    return out, grads


@pytest.mark.parametrize("causal", [False, True], ids=["bidirectional", "causal"])
@pytest.mark.parametrize("impl", ["splash", "pallas_gpu"])
def test_library_kernels_match_xla(impl, causal):
    s, blocks = SETUP[impl]
    seg = batch_of_layouts(s)
    q, k, v = random_qkv(seg.shape[0], s, s, HQ, HKV, D, seed=1)
    out, grads = _value_and_grads(_run(impl, seg, causal, blocks), q, k, v)
    ref_out, ref_grads = _value_and_grads(_run("xla", seg, causal, {}), q, k, v)
    assert float(jnp.abs(out - ref_out).max()) <= 1e-5
    for name, g, r in zip("qkv", grads, ref_grads):
        assert float(jnp.abs(g - r).max()) <= 1e-5, f"d{name}"


@pytest.mark.parametrize("impl", ["xla", "xla_blocked", "block_sparse", "splash", "pallas_gpu"])
def test_changing_a_key_of_one_segment_changes_no_output_of_another(impl):
    """The MaxText cuDNN bug, tested for every path: perturb key/value 150 (segment 1, which shares
    blocks with segments 0 and 2); outputs of segments 0 and 2 stay bitwise equal."""
    s, blocks = SETUP.get(impl, (256, {}))
    s = max(s, 256)
    seg = jnp.asarray([[0] * 100 + [1] * 90 + [2] * (s - 190)], jnp.int32)
    q, k, v = random_qkv(1, s, s, HQ, HKV, D, seed=2)
    f = jax.jit(_run(impl, seg, False, blocks))
    base = np.asarray(f(q, k, v))
    changed = np.asarray(f(q, k.at[0, 150].add(3.0), v.at[0, 150].add(3.0)))
    others = np.asarray(seg[0]) != 1
    np.testing.assert_array_equal(base[0, others], changed[0, others])
    assert np.abs(base[0, ~others] - changed[0, ~others]).max() > 1e-3


def test_cudnn_refuses_segment_ids_instead_of_ignoring_them():
    q, k, v = random_qkv(1, 16, 16, 2, 2, 8)
    seg = jnp.zeros((1, 16), jnp.int32)
    with pytest.raises(ValueError, match="cannot honour segment ids"):
        attention(q, k, v, q_segment_ids=seg, kv_segment_ids=seg, causal=True, impl="cudnn")


def test_pallas_gpu_refuses_two_different_id_arrays():
    q, k, v = random_qkv(1, 32, 32, 2, 2, 8)
    with pytest.raises(ValueError, match="one segment-id array"):
        attention(q, k, v, q_segment_ids=jnp.zeros((1, 32), jnp.int32),
                  kv_segment_ids=jnp.zeros((1, 32), jnp.int32), causal=True, impl="pallas_gpu")


def test_no_segment_ids_means_one_segment():
    q, k, v = random_qkv(2, 40, 40, 4, 2, 16, seed=3)
    seg = jnp.zeros((2, 40), jnp.int32)
    for impl in ("xla", "block_sparse"):
        got = attention(q, k, v, q_segment_ids=None, kv_segment_ids=None, causal=True, impl=impl,
                        block_q=16, block_kv=16)
        want = attention(q, k, v, q_segment_ids=seg, kv_segment_ids=seg, causal=True)
        assert float(jnp.abs(got - want).max()) <= 1e-5


def _numpy_attention(q, k, v, seg, causal):
    """Masked softmax attention in float64 numpy, independent of ops.attention: query i sees key
    j iff seg[i] == seg[j] (and j <= i if causal); query head h uses kv head h // (Hq // Hkv),
    as transformers' repeat_kv. Every row in these tests sees at least itself."""
    q, k, v = (np.asarray(x, np.float64) for x in (q, k, v))
    seg = np.asarray(seg)
    b, s, hq, d = q.shape
    kv_head = np.arange(hq) // (hq // k.shape[2])
    k, v = k[:, :, kv_head], v[:, :, kv_head]  # [B, S, Hq, D]
    scores = np.einsum("bqhd,bkhd->bhqk", q, k) / np.sqrt(d)
    allowed = seg[:, :, None] == seg[:, None, :]
    if causal:
        allowed = allowed & np.tril(np.ones((s, s), bool))
    scores = np.where(allowed[:, None], scores, -np.inf)
    probs = np.exp(scores - scores.max(-1, keepdims=True))
    probs /= probs.sum(-1, keepdims=True)
    return np.einsum("bhqk,bkhd->bqhd", probs, v)


def test_auto_picks_per_platform_and_shape():
    assert resolve_impl("tpu", 16384, 16384, False) == "block_sparse"
    assert resolve_impl("gpu", 8192, 8192, True) == "xla"  # Triton kernel opt-in until run on a GPU
    assert resolve_impl("gpu", 8192, 8192, False) == "xla_blocked"
    assert resolve_impl("tpu", 1, 4096, False) == "xla"  # a decode step
    assert resolve_impl("cpu", 1024, 1024, False) == "xla_blocked"
    assert resolve_impl("cpu", 1024, 1024, True) == "xla"
    assert jax.default_backend() == "cpu"  # the dispatch below is CPU's

    # Non-causal, multi-segment, length 256: on CPU auto runs xla_blocked (online softmax over
    # the key blocks each 128-query block meets), a different computation from the dense xla
    # oracle. Bitwise equal to xla_blocked (it dispatched there), within 1e-5 of xla and of numpy.
    seg = jnp.asarray([[0] * 100 + [1] * 90 + [2] * 66, [0] * 20 + [1] * 150 + [2] * 86], jnp.int32)
    q, k, v = random_qkv(2, 256, 256, HQ, HKV, 16, seed=7)
    run = {impl: np.asarray(attention(q, k, v, q_segment_ids=seg, kv_segment_ids=seg, causal=False,
                                      impl=impl)) for impl in ("auto", "xla", "xla_blocked")}
    np.testing.assert_array_equal(run["auto"], run["xla_blocked"])
    assert np.abs(run["auto"] - run["xla"]).max() <= 1e-5
    assert np.abs(run["auto"] - _numpy_attention(q, k, v, seg, causal=False)).max() <= 1e-5

    # Causal: auto runs xla on CPU, so check it against the numpy reference, not against xla.
    q, k, v = random_qkv(1, 64, 64, 2, 2, 8)
    seg = jnp.asarray([[0] * 30 + [1] * 34], jnp.int32)
    auto = attention(q, k, v, q_segment_ids=seg, kv_segment_ids=seg, causal=True, impl="auto")
    assert np.abs(np.asarray(auto) - _numpy_attention(q, k, v, seg, causal=True)).max() <= 1e-5


def test_runtime_config_accepts_exactly_the_dispatch_names():
    from qwen2vl_jax.config import RuntimeConfig

    for impl in IMPLEMENTATIONS:
        assert RuntimeConfig(vision_attention_impl=impl, text_attention_impl=impl).text_attention_impl == impl
    with pytest.raises(ValueError, match="vision_attention_impl 'flash' is not one of"):
        RuntimeConfig(vision_attention_impl="flash")
