"""transformers' logits processors and warpers, as fixed-shape jax functions on float32[B, V].

Order as in ``GenerationMixin._get_logits_processor``: repetition penalty, min_new_tokens (eos
masked), then, when sampling, temperature, top-k, top-p and a categorical draw; greedy is argmax.

top-k / top-p without sorting the vocabulary. Both follow transformers: top-k drops the tokens
below the k-th largest logit (all ties at it stay); top-p ranks the tokens by logit (ties: the
higher index ranks higher, the reverse of a stable ascending sort) and drops every token but
the first whose *mass above* (the probability of the tokens ranked above it, after top-k) is
>= top_p; top_p = 1 drops nothing. ``lax.top_k`` takes the TOP_K_CAP + 1 largest logits (a
partial selection, far cheaper than sorting 32k entries on a CPU) and the filters are decided
on the first TOP_K_CAP of them whenever that is exact (``candidates``):

* top-k with k = 0 or 1 <= k <= TOP_K_CAP (the k-th largest value is a candidate);
* and top_p = 1, or top-k left only candidates (the next value is below the k-th), or the
  candidates are the first TOP_K_CAP ranks (the next value is strictly below the last) and
  hold mass >= top_p, so every other token is dropped.

Otherwise (k > TOP_K_CAP, ties across the cap, a flat distribution) a ``lax.cond`` runs the
reference, ``top_k_top_p_sorted``, which ranks the whole vocabulary with one stable sort. Both
compute the probabilities and the mass above the first TOP_K_CAP ranks with the same functions
(``_drop_top_p``), so where the candidate path runs its output is the reference's bit for bit,
boundary cases included (top_p exactly equal to a cumulative mass). The knobs stay traced:
changing them never recompiles.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

TOP_K_CAP = 128  # candidates taken with lax.top_k (transformers' default top_k is 50)


def process_logits(logits: jax.Array, presence: jax.Array, step: jax.Array, knobs: dict,
                   do_sample: bool) -> jax.Array:
    """transformers' logits processors (and warpers if sampling) on float32[B, V]."""
    rp = knobs["repetition_penalty"]
    penalized = jnp.where(logits > 0, logits / rp, logits * rp)
    logits = jnp.where(presence, penalized, logits)  # rp == 1 is an exact identity
    vocab = jnp.arange(logits.shape[-1])
    is_eos = (vocab[:, None] == knobs["eos_ids"][None, :]).any(-1)
    logits = jnp.where(is_eos[None] & (step < knobs["min_new_tokens"]), -jnp.inf, logits)
    if not do_sample:
        return logits
    logits = logits / knobs["temperature"]
    if logits.shape[-1] <= TOP_K_CAP + 1:
        return top_k_top_p_sorted(logits, knobs["top_k"], knobs["top_p"])
    return top_k_top_p(logits, knobs["top_k"], knobs["top_p"])


def candidates(logits: jax.Array, k: jax.Array, top_p: jax.Array) -> dict[str, jax.Array]:
    """The first TOP_K_CAP ranks per row, their probabilities after top-k, and whether filtering
    on them is exact (``exact``: a scalar, all rows)."""
    vals, idx = jax.lax.top_k(logits, TOP_K_CAP + 1)  # descending; ties: lower index first
    cap_vals, cap_idx, outside = vals[:, :-1], idx[:, :-1], vals[:, -1]
    use_k = (k > 0) & (k <= TOP_K_CAP)
    kth = jnp.take(cap_vals, jnp.clip(k - 1, 0, TOP_K_CAP - 1), axis=1)[:, None]
    filtered = _top_k_filter(logits, use_k, kth)
    lse = jax.nn.logsumexp(filtered, axis=-1, keepdims=True)
    # Rank order among the candidates: descending value, ties by descending index.
    asc_vals, asc_idx = jax.lax.sort((cap_vals, cap_idx), dimension=1, num_keys=2)
    desc_vals, desc_idx = asc_vals[:, ::-1], asc_idx[:, ::-1]
    desc_vals = jnp.where(use_k[..., None] & (desc_vals < kth), -jnp.inf, desc_vals)
    drop, mass = _drop_top_p(desc_vals, lse, top_p)
    exact = ((k == 0) | use_k) & ((top_p >= 1) | (use_k & (outside < kth[:, 0]))
                                  | ((outside < cap_vals[:, -1]) & (mass >= top_p)))
    return {"filtered": filtered, "idx": desc_idx, "drop": drop, "exact": jnp.all(exact)}


def top_k_top_p(logits: jax.Array, k: jax.Array, top_p: jax.Array) -> jax.Array:
    """top-k then top-p filtering (filtered entries -inf), on the candidates when exact."""
    c = candidates(logits, k, top_p)

    def on_candidates(logits):
        rows = jnp.arange(logits.shape[0])[:, None]
        outside = jnp.ones_like(logits, bool).at[rows, c["idx"]].set(False) & (top_p < 1)
        drop = jnp.zeros_like(logits, bool).at[rows, c["idx"]].set(c["drop"]) | outside
        return jnp.where(drop, -jnp.inf, c["filtered"])

    return jax.lax.cond(c["exact"], on_candidates, lambda x: top_k_top_p_sorted(x, k, top_p), logits)


def top_k_top_p_sorted(logits: jax.Array, k: jax.Array, top_p: jax.Array) -> jax.Array:
    """The reference: both filters on the whole vocabulary, ranked by one stable sort."""
    v = logits.shape[-1]
    order = jnp.argsort(logits, axis=-1)[:, ::-1]  # stable ascending, reversed: the rank order
    desc = jnp.take_along_axis(logits, order, axis=-1)
    kth = jax.lax.dynamic_index_in_dim(desc, jnp.clip(k - 1, 0, v - 1), axis=1)
    filtered = _top_k_filter(logits, k > 0, kth)
    lse = jax.nn.logsumexp(filtered, axis=-1, keepdims=True)
    desc = jnp.where((k > 0) & (desc < kth), -jnp.inf, desc)
    head, mass = _drop_top_p(desc[:, :TOP_K_CAP], lse, top_p)
    if v > TOP_K_CAP:  # the mass above a later rank: the head's mass plus the ranks in between
        probs = jnp.exp(desc[:, TOP_K_CAP:] - lse)
        between = jnp.concatenate([jnp.zeros_like(probs[:, :1]), jnp.cumsum(probs, axis=-1)[:, :-1]], axis=-1)
        above = mass[:, None] + between
        head = jnp.concatenate([head, (above >= top_p) & (top_p < 1)], axis=-1)
    rows = jnp.arange(logits.shape[0])[:, None]
    drop = jnp.zeros_like(head).at[rows, order].set(head)
    return jnp.where(drop, -jnp.inf, filtered)


def _top_k_filter(logits: jax.Array, use_k: jax.Array, kth: jax.Array) -> jax.Array:
    """-inf below the k-th largest value (kth [B, 1]) where ``use_k``; ties with it stay."""
    return jnp.where(use_k & (logits < kth), -jnp.inf, logits)


def _drop_top_p(desc_vals: jax.Array, lse: jax.Array, top_p: jax.Array) -> tuple[jax.Array, jax.Array]:
    """For logits in rank order (after top-k; -inf dropped) and the log normaliser lse [B, 1]:
    which ranks top-p drops (never the first; none when top_p >= 1) and the total mass of these
    ranks [B] (``mass_above``)."""
    above, mass = mass_above(desc_vals, lse)
    drop = (above >= top_p) & (top_p < 1)
    return drop.at[:, 0].set(False), mass


def mass_above(desc_vals: jax.Array, lse: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(probability of the ranks above each rank [B, n], of all n ranks [B]) for logits in rank
    order and their log normaliser lse [B, 1]: exclusive and total of one cumulative sum."""
    probs = jnp.exp(desc_vals - lse)
    inclusive = jnp.cumsum(probs, axis=-1)
    return jnp.concatenate([jnp.zeros_like(probs[:, :1]), inclusive[:, :-1]], axis=-1), inclusive[:, -1]


def pick_token(logits: jax.Array, rng: jax.Array, do_sample: bool) -> jax.Array:
    if do_sample:
        return jax.random.categorical(rng, logits, axis=-1).astype(jnp.int32)
    return jnp.argmax(logits, axis=-1).astype(jnp.int32)
