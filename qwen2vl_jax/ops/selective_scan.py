"""The selective scan (Mamba-1) and the causal depthwise conv of the Mamba mixer, as pure functions.

Recurrence of the Mamba paper (Gu & Dao 2023, arXiv 2312.00752, Algorithm 2), discretised as
transformers' ``MambaMixer.slow_forward`` (models/mamba/modeling_mamba.py) and
``JambaMambaMixer.slow_forward`` (models/jamba/modeling_jamba.py) do::

    h_t = exp(dt_t * A) * h_{t-1} + (dt_t * B_t) * x_t        (elementwise over [E, N])
    y_t = C_t . h_t + D * x_t                                   (contracted over N)

Precision, as the reference: the discretisation and the state are float32 (``A`` is float32,
``dt`` and ``B`` are upcast, the state is float32 after the first step); ``C . h`` rounds the
state to the compute dtype (``x.dtype``) first and yields the compute dtype, as does ``D * x``.

Segments (packed rows): ``segment_ids`` int[B, S], 0 = padding. A position *starts afresh* when
its id differs from the previous position's, and every padding position starts afresh too: the
SSM state is zeroed before it (``exp(dt A)`` is replaced by 0) and the conv window forgets every
earlier input. Padding inputs are zeroed, so a padding position holds the zero state, outputs
exactly 0 and contributes nothing to any later position; a packed row therefore equals each of
its samples run alone, and a left-padded row's tokens see the state of a fresh sequence.
Position 0 continues a given ``initial_state`` / ``window`` (a chunk continues the segment the
state ended in) unless it is padding.

The state layouts are transformers' cache layouts (``HybridMambaAttentionDynamicCache``,
``MambaCache``): ssm state float32 [B, E, N], conv window [B, E, d_conv] holding the last
d_conv conv inputs, the newest last.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

F32 = jnp.float32


def segment_starts(segment_ids: jax.Array | None, batch: int, length: int) -> tuple[jax.Array, jax.Array]:
    """(starts, valid), bool[B, S] each: where the state restarts, and the non-padding positions."""
    if segment_ids is None:
        return jnp.zeros((batch, length), bool), jnp.ones((batch, length), bool)
    seg = segment_ids.astype(jnp.int32)
    previous = jnp.concatenate([seg[:, :1], seg[:, :-1]], axis=1)  # position 0 compares with itself
    valid = seg != 0
    return (seg != previous) | ~valid, valid


# --------------------------------------------------------------------------------------------
# causal depthwise conv1d


def _conv_taps(window: jax.Array, kernel: jax.Array, bias: jax.Array | None, dtype) -> jax.Array:
    """sum_k window[..., k, e] * kernel[k, e] (+ bias) accumulated in float32, rounded once."""
    y = jnp.einsum("...ke,ke->...e", window.astype(F32), kernel.astype(F32))
    if bias is not None:
        y = y + bias.astype(F32)
    return y.astype(dtype)


def causal_conv1d(x: jax.Array, kernel: jax.Array, bias: jax.Array | None = None, *,
                  segment_ids: jax.Array | None = None, window: jax.Array | None = None
                  ) -> tuple[jax.Array, jax.Array]:
    """Causal depthwise conv over time (transformers' ``nn.Conv1d(groups=E, padding=K-1)`` cut to
    the first S outputs), without the activation.

    x: [B, S, E] in the compute dtype; kernel: [K, E] (HF ``conv1d.weight[:, 0, :].T``); bias: [E]
    or None; window: [B, E, K], the conv inputs before ``x`` (its last K-1 are used), or None for
    zeros. Returns (y [B, S, E] in x.dtype, the new window [B, E, K]: the last K inputs, with
    those before the last restart (and padding) zeroed).
    """
    b, s, e = x.shape
    k = kernel.shape[0]
    starts, valid = segment_starts(segment_ids, b, s)
    x = jnp.where(valid[..., None], x, jnp.zeros((), x.dtype))
    if window is None:
        prefix = jnp.zeros((b, k - 1, e), x.dtype)
    else:
        prefix = jnp.swapaxes(window[:, :, 1:], 1, 2).astype(x.dtype)
    xp = jnp.concatenate([prefix, x], axis=1)  # position p sits at index p + K - 1
    pos = jnp.arange(s)
    # First position each output may see: its last restart (-K: the whole given window).
    first = jax.lax.cummax(jnp.where(starts, pos[None, :], -k), axis=1)  # [B, S]
    acc = jnp.zeros((b, s, e), F32)
    for j in range(k):  # tap j multiplies the input at position t - (K-1) + j
        seen = (pos[None, :] - (k - 1) + j) >= first
        acc = acc + jnp.where(seen[..., None], xp[:, j:j + s].astype(F32), 0.0) * kernel[j].astype(F32)
    if bias is not None:
        acc = acc + bias.astype(F32)
    kept = (jnp.arange(s - k, s)[None, :] >= first[:, -1:])[..., None]  # [B, K, 1]
    new_window = jnp.where(kept, xp[:, s - 1:], jnp.zeros((), x.dtype))
    return acc.astype(x.dtype), jnp.swapaxes(new_window, 1, 2)


def causal_conv1d_step(window: jax.Array, x: jax.Array, kernel: jax.Array, bias: jax.Array | None = None,
                       *, segment_ids: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
    """One decode step: window [B, E, K], x [B, E], segment_ids int[B] or None -> (y [B, E],
    new window). The window shifts left by one and takes x last (transformers' ``torch.roll``
    update); a padding step (id 0) empties it."""
    new = jnp.concatenate([window[:, :, 1:], x[:, :, None].astype(window.dtype)], axis=-1)
    if segment_ids is not None:
        new = jnp.where((segment_ids != 0)[:, None, None], new, jnp.zeros((), new.dtype))
    return _conv_taps(jnp.swapaxes(new, 1, 2), kernel, bias, x.dtype), new


# --------------------------------------------------------------------------------------------
# selective scan


def _discretise(x, dt, A, B, starts, valid):
    """(decay, input) of h = decay * h + input: float32 [..., E, N] each, as slow_forward."""
    dt32 = dt.astype(F32)[..., None]
    decay = jnp.exp(A * dt32)
    x32 = jnp.where(valid[..., None], x, jnp.zeros((), x.dtype)).astype(F32)
    inp = (dt32 * B.astype(F32)[..., None, :]) * x32[..., None]
    return jnp.where(starts[..., None, None], 0.0, decay), inp


def _readout(h, C, x, D, valid):
    """y = C . h + D * x in x.dtype (h rounded to x.dtype first, as slow_forward's matmul)."""
    dtype = x.dtype
    y = jnp.einsum("...en,...n->...e", h.astype(dtype), C.astype(dtype), preferred_element_type=F32)
    y = y.astype(dtype)
    if D is not None:
        xv = jnp.where(valid[..., None], x, jnp.zeros((), dtype))
        y = y + xv * D.astype(dtype)
    return y


def _zero_state(x, A):
    return jnp.zeros((x.shape[0], x.shape[-1], A.shape[-1]), F32)


def selective_scan_step(state: jax.Array, x: jax.Array, dt: jax.Array, A: jax.Array, B: jax.Array,
                        C: jax.Array, D: jax.Array | None = None, *, segment_ids: jax.Array | None = None
                        ) -> tuple[jax.Array, jax.Array]:
    """One decode step: state float32 [B, E, N]; x, dt [B, E]; A float32 [E, N] (negative);
    B, C [B, N]; D [E] or None; segment_ids int[B] or None (0: padding, the state restarts at
    zero). Returns (y [B, E] in x.dtype, the new state)."""
    if segment_ids is None:
        starts, valid = jnp.zeros(x.shape[:1], bool), jnp.ones(x.shape[:1], bool)
    else:
        valid = segment_ids != 0
        starts = ~valid
    decay, inp = _discretise(x, dt, A, B, starts, valid)
    state = decay * state.astype(F32) + inp
    return _readout(state, C, x, D, valid), state


def selective_scan_sequential(x: jax.Array, dt: jax.Array, A: jax.Array, B: jax.Array, C: jax.Array,
                              D: jax.Array | None = None, *, segment_ids: jax.Array | None = None,
                              initial_state: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
    """The recurrence one position at a time (a ``lax.scan`` over time): the reference.

    x, dt: [B, S, E] (dt after softplus); A: float32 [E, N]; B, C: [B, S, N]; D: [E] or None;
    initial_state: [B, E, N] or None (zeros). Returns (y [B, S, E] in x.dtype, final state
    float32 [B, E, N])."""
    b, s, _ = x.shape
    starts, valid = segment_starts(segment_ids, b, s)
    h0 = _zero_state(x, A) if initial_state is None else initial_state.astype(F32)

    def step(h, inputs):
        xt, dtt, bt, ct, st, vt = inputs
        decay, inp = _discretise(xt, dtt, A, bt, st, vt)
        h = decay * h + inp
        return h, _readout(h, ct, xt, D, vt)

    time_major = [jnp.swapaxes(v, 0, 1) for v in (x, dt, B, C, starts, valid)]
    h, y = jax.lax.scan(step, h0, time_major)
    return jnp.swapaxes(y, 0, 1), h


def _combine(earlier, later):
    a1, b1 = earlier
    a2, b2 = later
    return a1 * a2, a2 * b1 + b2


def selective_scan(x: jax.Array, dt: jax.Array, A: jax.Array, B: jax.Array, C: jax.Array,
                   D: jax.Array | None = None, *, segment_ids: jax.Array | None = None,
                   initial_state: jax.Array | None = None, chunk_size: int = 128
                   ) -> tuple[jax.Array, jax.Array]:
    """``selective_scan_sequential``, computed chunk by chunk.

    Within a chunk of L positions, ``jax.lax.associative_scan`` composes the affine maps
    h -> decay * h + input in log-depth; an outer ``lax.scan`` carries the state from chunk to
    chunk. The [B, L, E, N] discretised tensors exist for one chunk at a time (memory
    O(B * E * N * L), independent of S), and the chunk body is rematerialised in the backward
    pass, so training saves only the per-chunk states ([S / L, B, E, N]) and the inputs. S need
    not be a multiple of L: the tail is padded with identity steps (decay 1, input 0).
    """
    b, s, e = x.shape
    length = max(1, min(int(chunk_size), s))
    chunks = -(-s // length)
    pad = chunks * length - s
    starts, valid = segment_starts(segment_ids, b, s)
    h0 = _zero_state(x, A) if initial_state is None else initial_state.astype(F32)

    def chunked(v):  # [B, S, ...] -> [chunks, B, L, ...], padded with zeros / False
        v = jnp.pad(v, [(0, 0), (0, pad)] + [(0, 0)] * (v.ndim - 2))
        return jnp.swapaxes(v.reshape(b, chunks, length, *v.shape[2:]), 0, 1)

    @jax.checkpoint
    def chunk(h, inputs):
        xc, dtc, bc, cc, sc, vc = inputs
        decay, inp = _discretise(xc, dtc, A, bc, sc, vc)  # [B, L, E, N]
        decay_cum, inp_cum = jax.lax.associative_scan(_combine, (decay, inp), axis=1)
        hs = decay_cum * h[:, None] + inp_cum
        return hs[:, -1], _readout(hs, cc, xc, D, vc)

    h, y = jax.lax.scan(chunk, h0, [chunked(v) for v in (x, dt, B, C, starts, valid)])
    y = jnp.swapaxes(y, 0, 1).reshape(b, chunks * length, e)[:, :s]
    return y, h
