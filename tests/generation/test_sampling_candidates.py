"""top-k / top-p on lax.top_k candidates (generation/sampling.py) against the full-sort reference:
where the candidate path runs, the filtered logits are the reference's bit for bit (so a draw
with a fixed key is the same token), including ties, k above the cap and top_p exactly at a
cumulative mass; the reference itself is transformers' TopK + TopP warpers; the candidate path
runs exactly when it is exact, and it sorts nothing vocabulary-sized."""

import importlib.util

import jax
import jax.extend
import jax.numpy as jnp
import numpy as np
import pytest

from qwen2vl_jax import Qwen2VLForConditionalGeneration, get_preset
from qwen2vl_jax.generation import sampling
from qwen2vl_jax.generation.sampling import (
    TOP_K_CAP,
    candidates,
    mass_above,
    pick_token,
    top_k_top_p,
    top_k_top_p_sorted,
)

FAST = jax.jit(top_k_top_p)
REF = jax.jit(top_k_top_p_sorted)
EXACT = jax.jit(lambda x, k, p: candidates(x, k, p)["exact"])
DRAWS = jax.jit(jax.vmap(lambda x, key: pick_token(x, key, True), in_axes=(None, 0)))
KEYS = jax.random.split(jax.random.key(7), 16)
HAVE_HF = importlib.util.find_spec("torch") is not None and importlib.util.find_spec("transformers") is not None


def _logits(kind, rng, v=2000, rows=3):
    x = rng.standard_normal((rows, v)).astype(np.float32)
    if kind == "peaked":
        x *= 6.0
    elif kind == "ties":  # many ties everywhere, also across the cap and at the k-th value
        x = np.round(x * 2) / 2
    elif kind == "flat":
        x = np.zeros_like(x)
    elif kind == "tied_top":  # ties across the cap
        x[:, : TOP_K_CAP + 40] = 5.0
    elif kind == "tied_cap_edge":  # the last candidate ties with the first token outside
        order = np.argsort(-x[0])
        x[:, order[TOP_K_CAP - 1]] = x[:, order[TOP_K_CAP]] = x[0, order[TOP_K_CAP - 2]] - 1e-3
    elif kind == "masked":  # -inf entries (min_new_tokens masks eos) and a few huge ones
        x[:, ::7] = -np.inf
        x[:, 3] = 40.0
    return jnp.asarray(x)


KINDS = ["normal", "peaked", "ties", "flat", "tied_top", "tied_cap_edge", "masked"]
KNOBS = [(0, 1.0), (50, 1.0), (50, 0.9), (1, 0.5), (0, 0.9), (0, 0.3), (0, 1e-6), (5, 0.999999),
         (TOP_K_CAP, 0.95), (TOP_K_CAP + 1, 0.9), (400, 1.0), (2000, 0.9), (2500, 0.8)]


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("k,p", KNOBS)
def test_equal_to_the_reference_bit_for_bit_and_the_same_draws(kind, k, p):
    x = _logits(kind, np.random.default_rng(abs(hash((kind, k, p))) % 2**32))
    k, p = jnp.int32(k), jnp.float32(p)
    fast, ref = FAST(x, k, p), REF(x, k, p)
    np.testing.assert_array_equal(np.asarray(fast), np.asarray(ref))
    np.testing.assert_array_equal(np.asarray(DRAWS(fast, KEYS)), np.asarray(DRAWS(ref, KEYS)))
    kept = np.isfinite(np.asarray(ref))
    assert kept.any(axis=1).all()  # never every token dropped
    np.testing.assert_array_equal(np.asarray(ref)[kept], np.asarray(x)[kept])  # survivors unchanged


def _ranked(x):
    """Rank order (descending; ties: the higher index first) and lse, as the reference ranks."""
    order = np.argsort(np.asarray(x), axis=-1, kind="stable")[:, ::-1]
    desc = np.take_along_axis(np.asarray(x), order, axis=-1)
    return order, desc, jax.nn.logsumexp(x, axis=-1, keepdims=True)


@pytest.mark.parametrize("kind", ["normal", "peaked", "ties"])
def test_top_p_exactly_at_a_cumulative_mass(kind):
    """top_p equal to the mass above rank r drops rank r; one ulp more keeps it. The candidate
    path runs there (its own sums decide) and agrees with the reference bitwise."""
    x = _logits(kind, np.random.default_rng(5), v=4000, rows=1)
    if kind == "normal":
        x = x * 3.0  # the first 128 ranks hold > 0.9 of the mass
    order, desc, lse = _ranked(x)
    above, _ = mass_above(jnp.asarray(desc[:, :TOP_K_CAP]), lse)
    for r in (1, 2, 5, 17, 60):
        at = float(np.asarray(above)[0, r])
        if not 0 < at < 1:
            continue
        for p, dropped in ((at, True), (float(np.nextafter(np.float32(at), np.float32(2))), False)):
            p = jnp.float32(p)
            fast, ref = np.asarray(FAST(x, jnp.int32(0), p)), np.asarray(REF(x, jnp.int32(0), p))
            np.testing.assert_array_equal(fast, ref)
            assert bool(EXACT(x, jnp.int32(0), p)) or kind == "ties"
            assert np.isinf(ref[0, order[0, r]]) == dropped, (kind, r, dropped)
            assert np.isfinite(ref[0, order[0, :r]]).all()


def test_the_candidate_path_runs_when_exact_and_only_then():
    rng = np.random.default_rng(0)
    normal, flat, tied_top, peaked = (_logits(kind, rng, v=32000) for kind in ("normal", "flat", "tied_top", "peaked"))
    edge = _logits("tied_cap_edge", rng, v=32000)
    # transformers' default top_k=50 (with or without top_p), and top_p alone on a peaked model
    assert bool(EXACT(normal, jnp.int32(50), jnp.float32(1.0)))
    assert bool(EXACT(normal, jnp.int32(50), jnp.float32(0.9)))
    assert bool(EXACT(peaked, jnp.int32(0), jnp.float32(0.9)))
    assert bool(EXACT(normal, jnp.int32(0), jnp.float32(1.0)))  # temperature only
    assert bool(EXACT(edge, jnp.int32(50), jnp.float32(0.9)))  # the tie is below the k-th value
    # not exact: k above the cap; top_p alone when the cap holds too little mass; ties across it
    assert not bool(EXACT(normal, jnp.int32(TOP_K_CAP + 1), jnp.float32(1.0)))
    assert not bool(EXACT(flat, jnp.int32(0), jnp.float32(0.9)))
    assert not bool(EXACT(tied_top, jnp.int32(10), jnp.float32(0.9)))
    assert bool(EXACT(peaked, jnp.int32(0), jnp.float32(0.5)))
    assert not bool(EXACT(edge * 6.0, jnp.int32(0), jnp.float32(0.5)))  # the same, with a tie across the cap


def _sorts(jaxpr, vocab):
    """Sorts over a vocabulary-sized axis in a jaxpr, sub-jaxprs included."""
    n = 0
    for eqn in jaxpr.eqns:
        if eqn.primitive.name == "sort" and eqn.invars[0].aval.shape[-1] == vocab:
            n += 1
        for sub in jax.extend.core.jaxprs_in_params(eqn.params):
            n += _sorts(sub, vocab)
    return n


def test_no_sort_of_the_vocabulary_on_the_candidate_path():
    """The candidate branch of the cond sorts nothing vocabulary-sized (the reference sorts once)."""
    x = jnp.zeros((4, 32000), jnp.float32)
    jaxpr = jax.make_jaxpr(top_k_top_p)(x, jnp.int32(50), jnp.float32(0.9)).jaxpr
    cond = [e for e in jaxpr.eqns if e.primitive.name == "cond"]
    assert len(cond) == 1 and _sorts(jaxpr, 32000) == 1
    fallback, fast = cond[0].params["branches"]
    assert _sorts(fast.jaxpr, 32000) == 0 and _sorts(fallback.jaxpr, 32000) == 1
    assert any(e.primitive.name == "top_k" for e in jaxpr.eqns)


@pytest.mark.parity
@pytest.mark.skipif(not HAVE_HF, reason="needs torch and transformers (the [parity] extra)")
@pytest.mark.parametrize("k,p", [(50, 1.0), (0, 0.9), (50, 0.9), (7, 0.3), (300, 0.95), (0, 0.05)])
def test_the_reference_keeps_what_transformers_warpers_keep(k, p):
    """On tie-free logits (torch.sort is not stable) both sides keep the same tokens."""
    import torch
    from transformers.generation.logits_process import TopKLogitsWarper, TopPLogitsWarper

    x = _logits("normal", np.random.default_rng(k), v=5000, rows=4) * 2.5
    scores = torch.from_numpy(np.asarray(x))
    if k:
        scores = TopKLogitsWarper(k)(None, scores)
    if p < 1:
        scores = TopPLogitsWarper(p)(None, scores)
    theirs = np.isfinite(scores.numpy())
    for fn in (REF, FAST):
        np.testing.assert_array_equal(np.isfinite(np.asarray(fn(x, jnp.int32(k), jnp.float32(p)))), theirs)


@pytest.mark.parametrize("top_k,top_p", [(50, 0.9), (0, 0.8), (0, 1.0), (300, 1.0)])
def test_sampled_generate_draws_the_reference_tokens(monkeypatch, top_k, top_p):
    """generate(do_sample=True, seed=...) on the tiny model (vocab 160 > the cap): the same
    tokens as with the reference patched in, whichever path each step took."""
    cfg = get_preset("tiny")
    ids = np.random.default_rng(0).integers(10, 140, (2, 9))
    kw = dict(max_new_tokens=24, do_sample=True, top_k=top_k, top_p=top_p, temperature=0.7, seed=3,
              eos_token_id=[])
    ours = Qwen2VLForConditionalGeneration(cfg, seed=0).generate(ids, **kw)
    monkeypatch.setattr(sampling, "top_k_top_p", top_k_top_p_sorted)
    reference = Qwen2VLForConditionalGeneration(cfg, seed=0).generate(ids, **kw)
    np.testing.assert_array_equal(ours, reference)
