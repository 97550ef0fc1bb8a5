"""Next-token cross-entropy on labelled tokens (transformers' shift), with optional z-loss.

``next_token_loss_sum`` takes full logits [B, S, V] (the reference). ``chunked_next_token_loss_sum``
takes the final hidden states and the lm_head weight instead and gives the same sums without ever
holding [B, S, V] logits, forward or backward: it walks the sequence in chunks of ``chunk_size``
positions, and each chunk's body is rematerialised (``jax.checkpoint``), so the backward pass
recomputes that chunk's logits rather than keeping them. Peak extra memory is a few
float32[B, chunk_size, V] buffers (logits, their softmax/cotangent) instead of float32[B, S, V]
twice; the price is one more lm_head matmul per chunk in the backward pass.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from qwen2vl_jax.layout.inputs import IGNORE_INDEX
from qwen2vl_jax.ops.lm_head import lm_head_logits

# Positions per chunk. One float32[B, chunk, V] buffer is B * chunk * V * 4 bytes: with Qwen2-VL's
# V = 151,936 and B = 4 that is 1.24 GB at 512 (vs 19.9 GB for the full [4, 8192, V] logits), and
# the backward of a chunk holds two or three such buffers. B * 512 = 2048 rows per matmul is still
# large enough to keep the matrix units busy, and S = 8192 is only 16 loop steps; smaller chunks
# save little more memory but add steps, larger ones double the buffers for no speed gain.
DEFAULT_CHUNK_SIZE = 512


def next_token_loss_sum(logits: jax.Array, labels: jax.Array, z_loss_weight: float = 0.0
                        ) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Summed (not averaged) loss over labelled tokens, and the token count.

    logits: float[B, S, V] for inputs [B, S]; labels: int[B, S] aligned with the inputs, with
    -100 where no loss is taken (as transformers: position t predicts labels[t + 1]). Summing
    lets gradient accumulation weight every token equally; divide by ``tokens`` afterwards.
    z-loss adds ``z_loss_weight * logsumexp(logits)^2`` per labelled token (PaLM).
    """
    logits = logits[:, :-1].astype(jnp.float32)
    targets = labels[:, 1:]
    valid = targets != IGNORE_INDEX
    lse = jax.nn.logsumexp(logits, axis=-1)
    picked = jnp.take_along_axis(logits, jnp.where(valid, targets, 0)[..., None], axis=-1)[..., 0]
    ce = jnp.where(valid, lse - picked, 0.0)
    z = jnp.where(valid, jnp.square(lse), 0.0)
    total = ce.sum() + z_loss_weight * z.sum()
    return total, {"ce_sum": ce.sum(), "z_sum": z.sum(), "tokens": valid.sum()}


def _chunk_sums(h: jax.Array, targets: jax.Array, weight: jax.Array, *, tied: bool, dtype
                ) -> tuple[jax.Array, jax.Array]:
    """(ce sum, lse^2 sum) of one chunk: h [B, c, D], targets int[B, c] (already shifted)."""
    logits = lm_head_logits(h, weight, tied=tied, dtype=dtype)
    valid = targets != IGNORE_INDEX
    lse = jax.nn.logsumexp(logits, axis=-1)
    picked = jnp.take_along_axis(logits, jnp.where(valid, targets, 0)[..., None], axis=-1)[..., 0]
    ce = jnp.where(valid, lse - picked, 0.0).sum()
    z = jnp.where(valid, jnp.square(lse), 0.0).sum()
    return ce, z


def chunked_next_token_loss_sum(hidden: jax.Array, weight: jax.Array, labels: jax.Array, *, tied: bool,
                                dtype, z_loss_weight: float = 0.0, chunk_size: int = DEFAULT_CHUNK_SIZE
                                ) -> tuple[jax.Array, dict[str, jax.Array]]:
    """``next_token_loss_sum(lm_head_logits(hidden, weight, tied=tied, dtype=dtype), labels, ...)``
    without materialising the logits.

    hidden: [B, S, D] final (normed) hidden states; weight: the lm_head weight as for
    ``lm_head_logits`` ([V, D] tied, [D, V] untied); labels: int[B, S] aligned with the inputs.
    Returns ``(total, {"ce_sum", "z_sum", "tokens"})`` like the reference. The S positions run in
    ``S // chunk_size`` scanned chunks plus one remainder chunk of ``S % chunk_size`` (no padding,
    so no wasted matmul rows). The weight is cast to ``dtype`` inside each chunk, so its per-chunk
    gradients are summed across chunks in the weight's own dtype (float32 master weights), not in
    the compute dtype.
    """
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    b, s, d = hidden.shape
    # Position t predicts labels[t + 1]; the last position predicts nothing.
    targets = jnp.concatenate([labels[:, 1:], jnp.full((b, 1), IGNORE_INDEX, labels.dtype)], axis=1)
    body = functools.partial(_chunk_sums, tied=tied, dtype=dtype)
    n_full, rem = divmod(s, chunk_size)
    ce = jnp.float32(0.0)
    z = jnp.float32(0.0)
    if n_full:
        cut = n_full * chunk_size
        hs = hidden[:, :cut].reshape(b, n_full, chunk_size, d).swapaxes(0, 1)
        ts = targets[:, :cut].reshape(b, n_full, chunk_size).swapaxes(0, 1)
        # scan already keeps the recomputation from being merged with the forward pass.
        scanned = jax.checkpoint(body, prevent_cse=False)

        def step(carry, xs):
            c_ce, c_z = scanned(xs[0], xs[1], weight)
            return (carry[0] + c_ce, carry[1] + c_z), None

        (ce, z), _ = jax.lax.scan(step, (ce, z), (hs, ts))
    if rem:
        r_ce, r_z = jax.checkpoint(body)(hidden[:, s - rem:], targets[:, s - rem:], weight)
        ce, z = ce + r_ce, z + r_z
    tokens = (targets != IGNORE_INDEX).sum()
    return ce + z_loss_weight * z, {"ce_sum": ce, "z_sum": z, "tokens": tokens}
