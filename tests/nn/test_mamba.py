"""The Mamba mixer (nn/mamba.py) and its pure functions (ops/selective_scan.py) against their own
references, no torch: the chunked associative scan against the sequential scan and a numpy loop,
segment resets (a packed row equals each sample alone, padding contributes nothing), prefill
then decode against the full forward, the initialisation, and the memory of the chunked scan.
The comparisons with transformers are in tests/parity/test_mamba_parity.py."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from qwen2vl_jax.config import RuntimeConfig
from qwen2vl_jax.nn.mamba import MambaConfig, MambaMixer, MambaState
from qwen2vl_jax.ops.selective_scan import (
    causal_conv1d,
    causal_conv1d_step,
    selective_scan,
    selective_scan_sequential,
    selective_scan_step,
)

TOL = {"rtol": 1e-5, "atol": 1e-5}
CFG = MambaConfig(hidden_size=16, d_state=4, d_conv=3, expand=2, dt_rank=3, proj_bias=True)


def _scan_inputs(b, s, e, n, seed):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((b, s, e))
    dt = np.log1p(np.exp(rng.standard_normal((b, s, e)) - 1.0))  # softplus: positive steps
    a = -np.exp(0.5 * rng.standard_normal((e, n)))
    bm, cm = rng.standard_normal((b, s, n)), rng.standard_normal((b, s, n))
    d = rng.standard_normal(e)
    return [jnp.asarray(v, jnp.float32) for v in (x, dt, a, bm, cm, d)]


def _numpy_scan(x, dt, a, bm, cm, d, h):
    """The recurrence written out in float64 (no segments)."""
    x, dt, a, bm, cm, d, h = (np.asarray(v, np.float64) for v in (x, dt, a, bm, cm, d, h))
    ys = []
    for t in range(x.shape[1]):
        h = np.exp(dt[:, t, :, None] * a) * h + dt[:, t, :, None] * bm[:, t, None, :] * x[:, t, :, None]
        ys.append(np.einsum("ben,bn->be", h, cm[:, t]) + d * x[:, t])
    return np.stack(ys, 1), h


_chunked = jax.jit(selective_scan, static_argnames="chunk_size")
_sequential = jax.jit(selective_scan_sequential)
_conv = jax.jit(causal_conv1d)
_conv_step = jax.jit(causal_conv1d_step)
_scan_step = jax.jit(selective_scan_step)


def _scan_segments():
    seg = np.ones((2, 29), np.int32)
    seg[0, :5] = 0  # left padding
    seg[1, 9:] = 2  # a second sample, then right padding
    seg[1, 20:] = 0
    return jnp.asarray(seg)


@pytest.mark.parametrize("chunk", [1, 4, 29])  # 29 = 7 * 4 + 1: a tail of identity steps
def test_chunked_scan_equals_sequential(chunk):
    x, dt, a, bm, cm, d = _scan_inputs(2, 29, 6, 3, seed=0)
    h0 = jnp.asarray(np.random.default_rng(1).standard_normal((2, 6, 3)), jnp.float32)
    variants = [{"segment_ids": _scan_segments(), "initial_state": h0}]
    if chunk == 4:
        variants.append({})
    for kwargs in variants:
        y_ref, h_ref = _sequential(x, dt, a, bm, cm, d, **kwargs)
        y, h = _chunked(x, dt, a, bm, cm, d, chunk_size=chunk, **kwargs)
        np.testing.assert_allclose(y, y_ref, **TOL)
        np.testing.assert_allclose(h, h_ref, **TOL)
    if chunk == 4:  # the sequential scan itself against the recurrence written out
        y_np, h_np = _numpy_scan(x, dt, a, bm, cm, d, np.zeros((2, 6, 3)))
        np.testing.assert_allclose(y_ref, y_np, **TOL)
        np.testing.assert_allclose(h_ref, h_np, **TOL)


def test_scan_and_conv_reset_at_segment_starts():
    x, dt, a, bm, cm, d = _scan_inputs(2, 29, 6, 3, seed=2)
    kernel = jnp.asarray(np.random.default_rng(3).standard_normal((4, 6)), jnp.float32)
    bias = jnp.asarray(np.random.default_rng(4).standard_normal(6), jnp.float32)
    # Row 0: samples [0, 5), [5, 7), [7, 10) (id 1 again, not adjacent to the first: a new
    # sample), then padding. Row 1: left padding, a sample [20, 26), then a sample [26, 29)
    # shorter than the kernel.
    seg = np.zeros((2, 29), np.int32)
    seg[0, :10] = [1] * 5 + [2] * 2 + [1] * 3
    seg[1, 20:] = [5] * 6 + [7] * 3
    seg = jnp.asarray(seg)
    h0 = jnp.asarray(np.random.default_rng(5).standard_normal((2, 6, 3)), jnp.float32)
    y, h = _chunked(x, dt, a, bm, cm, d, segment_ids=seg, initial_state=h0, chunk_size=4)
    conv, window = _conv(x, kernel, bias, segment_ids=seg)
    ones = jnp.ones_like(seg)
    samples = [(0, 0, 5), (0, 5, 7), (0, 7, 10), (1, 26, 29)]  # (row, start, stop)
    # Each sample alone at the start of a row, from the zero state, except the first of row 0:
    # position 0 continues the given state.
    for pair, start in ((samples[:2], h0.at[1].set(0.0)), (samples[2:], jnp.zeros_like(h0))):
        alone = [jnp.stack([jnp.roll(v[r], -lo, axis=0) for r, lo, _ in pair]) for v in (x, dt, bm, cm)]
        y_alone, _ = _sequential(alone[0], alone[1], a, alone[2], alone[3], d, segment_ids=ones,
                                 initial_state=start)
        conv_alone, _ = _conv(alone[0], kernel, bias, segment_ids=ones)
        for i, (r, lo, hi) in enumerate(pair):
            np.testing.assert_allclose(y[r, lo:hi], y_alone[i, :hi - lo], **TOL)
            np.testing.assert_allclose(conv[r, lo:hi], conv_alone[i, :hi - lo], **TOL)
    np.testing.assert_array_equal(y[0, 10:], 0.0)  # padding outputs nothing ...
    np.testing.assert_array_equal(y[1, :20], 0.0)
    np.testing.assert_array_equal(h[0], 0.0)  # ... and a row ending in it holds the zero state
    np.testing.assert_array_equal(window[0], 0.0)
    # The window after a 3-token sample holds its 3 inputs, newest last, and a zero (not the
    # previous sample's last input).
    np.testing.assert_array_equal(window[1, :, 0], 0.0)
    np.testing.assert_array_equal(window[1, :, 1:], x[1, 26:].T)
    # One decode step of padding (row 0) empties the state and the window.
    step_seg = jnp.asarray([0, 7])
    y1, h1 = _scan_step(h0, x[:, 0], dt[:, 0], a, bm[:, 0], cm[:, 0], d, segment_ids=step_seg)
    c1, w1 = _conv_step(jnp.ones_like(window), x[:, 0], kernel, bias, segment_ids=step_seg)
    np.testing.assert_array_equal(h1[0], 0.0)
    np.testing.assert_array_equal(y1[0], 0.0)
    np.testing.assert_array_equal(w1[0], 0.0)
    np.testing.assert_allclose(c1[0], bias, **TOL)
    assert np.abs(np.asarray(h1[1])).min() > 0 and np.asarray(w1[1, :, :3]).min() == 1.0


def test_conv_with_window_and_step_equal_the_whole_sequence():
    x = jnp.asarray(np.random.default_rng(5).standard_normal((2, 9, 6)), jnp.float32)
    kernel = jnp.asarray(np.random.default_rng(6).standard_normal((4, 6)), jnp.float32)
    bias = jnp.asarray(np.random.default_rng(7).standard_normal(6), jnp.float32)
    ones = jnp.ones((2, 3), jnp.int32)
    full, full_window = _conv(x, kernel, bias, segment_ids=jnp.ones((2, 9), jnp.int32))
    window = jnp.zeros((2, 6, 4), jnp.float32)  # a fresh window is a sequence start
    first, window = _conv(x[:, :3], kernel, bias, segment_ids=ones, window=window)  # < the kernel
    second, window = _conv(x[:, 3:6], kernel, bias, segment_ids=ones, window=window)
    np.testing.assert_allclose(jnp.concatenate([first, second], 1), full[:, :6], **TOL)
    for t in range(6, 9):
        y, window = _conv_step(window, x[:, t], kernel, bias, segment_ids=ones[:, 0])
        np.testing.assert_allclose(y, full[:, t], **TOL)
    np.testing.assert_allclose(window, full_window, **TOL)
    np.testing.assert_array_equal(full_window, jnp.swapaxes(x[:, -4:], 1, 2))  # HF's layout


@nnx.jit
def _apply(mixer, x, segment_ids, state):
    return mixer(x, segment_ids, state)


@pytest.fixture(scope="module")
def mixer():
    """CFG with every parameter random (the init makes outputs ~1e-4)."""
    mixer = MambaMixer(CFG, RuntimeConfig(), rngs=nnx.Rngs(0), chunk_size=4)
    leaves, treedef = jax.tree.flatten(nnx.state(mixer, nnx.Param))
    rng = np.random.default_rng(11)
    leaves = [jnp.asarray(0.4 * rng.standard_normal(v.shape), v.dtype) for v in leaves]
    nnx.update(mixer, jax.tree.unflatten(treedef, leaves))
    return mixer


def _hidden(b, s, seed):
    return jnp.asarray(np.random.default_rng(seed).standard_normal((b, s, CFG.hidden_size)), jnp.float32)


def _alone(mixer, rows):
    """The mixer on each of up to 3 rows [7, D] alone (a fresh sequence each)."""
    rows = list(rows) + [rows[0]] * (3 - len(rows))
    return _apply(mixer, jnp.stack(rows), jnp.ones((3, 7), jnp.int32), None)


def test_packed_row_equals_each_sample_alone(mixer):
    lengths, starts = (5, 3, 7), (0, 5, 8)
    x = _hidden(2, 19, seed=7)
    x = x.at[1, 4:].set(x[0, :15])  # row 1: the same samples after 4 positions of left padding
    seg = np.zeros((2, 19), np.int32)
    seg[0, :15] = np.repeat([3, 1, 2], lengths)  # then 4 padding positions
    seg[1, 4:] = seg[0, :15]
    y, state = _apply(mixer, x, jnp.asarray(seg), None)
    # Each sample alone, as the prefix of a row of 7 (causal: what follows cannot change it).
    y_alone, state_alone = _alone(mixer, [jnp.roll(x[0], -lo, axis=0)[:7] for lo in starts])
    for row, (lo, n) in enumerate(zip(starts, lengths)):
        np.testing.assert_allclose(y[0, lo:lo + n], y_alone[row, :n], **TOL)
        np.testing.assert_allclose(y[1, 4 + lo:4 + lo + n], y_alone[row, :n], **TOL)
    # Padding positions output exactly out_proj(0) = its bias, and leave the zero state.
    np.testing.assert_array_equal(y[0, 15:], jnp.broadcast_to(mixer.out_proj_bias[...], (4, CFG.hidden_size)))
    np.testing.assert_array_equal(state.ssm[0], 0.0)
    np.testing.assert_array_equal(state.conv[0], 0.0)
    # A row that ends in a sample ends in the state of that sample alone (here the full row 2).
    np.testing.assert_allclose(state.ssm[1], state_alone.ssm[2], **TOL)
    np.testing.assert_allclose(state.conv[1], state_alone.conv[2], **TOL)


def test_left_padding_contributes_nothing(mixer):
    x = _hidden(2, 19, seed=8)
    seg = jnp.asarray([[0] * 12 + [1] * 7, [1] * 19], jnp.int32)
    y, state = _apply(mixer, x, seg, None)
    y_noise, state_noise = _apply(mixer, x.at[0, :12].set(100.0), seg, None)  # whatever the padding holds
    y_alone, state_alone = _alone(mixer, [x[0, 12:]])
    for out, st in ((y, state), (y_noise, state_noise)):
        np.testing.assert_allclose(out[0, 12:], y_alone[0], **TOL)
        np.testing.assert_allclose(st.ssm[0], state_alone.ssm[0], **TOL)
        np.testing.assert_allclose(st.conv[0], state_alone.conv[0], **TOL)
    np.testing.assert_array_equal(y[1], y_noise[1])


def test_prefill_then_decode_equals_full_forward(mixer):
    x = _hidden(2, 19, seed=9)
    seg = jnp.asarray([[0] * 3 + [1] * 16, [1] * 19], jnp.int32)
    y_full, state_full = _apply(mixer, x, seg, None)
    # Prefill 14 tokens in two chunks (the second continues the first's state), then decode 5.
    y_a, state = _apply(mixer, x[:, :7], seg[:, :7], mixer.init_state(2))
    y_b, state = _apply(mixer, x[:, 7:14], seg[:, 7:14], state)
    np.testing.assert_allclose(jnp.concatenate([y_a, y_b], 1), y_full[:, :14], **TOL)
    for t in range(14, 19):
        y_t, state = _apply(mixer, x[:, t:t + 1], seg[:, t:t + 1], state)
        np.testing.assert_allclose(y_t[:, 0], y_full[:, t], **TOL)
    np.testing.assert_allclose(state.ssm, state_full.ssm, **TOL)
    np.testing.assert_allclose(state.conv, state_full.conv, **TOL)
    assert isinstance(state, MambaState) and state.conv.shape == (2, 32, 3) and state.ssm.shape == (2, 32, 4)
    # A decode step from the fresh state is the first position of a sequence (row 1).
    y0, _ = _apply(mixer, x[:, :1], seg[:, 3:4], mixer.init_state(2))
    np.testing.assert_allclose(y0[1], y_full[1, :1], **TOL)


def test_init_mirrors_jamba_init_weights_and_names_the_axes():
    cfg = MambaConfig(hidden_size=64, d_state=8, proj_bias=True)
    assert (cfg.intermediate_size, cfg.time_step_rank) == (128, 4)  # dt_rank "auto" = ceil(64/16)
    assert MambaConfig(hidden_size=33).time_step_rank == 3
    with pytest.raises(ValueError, match="dt_rank"):
        MambaConfig(hidden_size=8, dt_rank="big")
    mixer = MambaMixer(cfg, RuntimeConfig(), rngs=nnx.Rngs(0))
    np.testing.assert_allclose(mixer.A_log[...], np.log(np.broadcast_to(np.arange(1, 9), (128, 8))), rtol=1e-7)
    np.testing.assert_array_equal(mixer.D[...], 1.0)
    for name in ("in_proj_bias", "conv_bias", "dt_proj_bias", "out_proj_bias"):
        np.testing.assert_array_equal(getattr(mixer, name)[...], 0.0)
    for norm in (mixer.dt_layernorm, mixer.b_layernorm, mixer.c_layernorm):
        np.testing.assert_array_equal(norm.scale[...], 1.0)
    for name in ("in_proj_kernel", "conv_kernel", "x_proj_kernel", "out_proj_kernel"):
        w = np.asarray(getattr(mixer, name)[...])
        assert abs(w.std() - 0.02) < 0.003 and abs(w.mean()) < 0.002, name
    shapes = {"/".join(map(str, path)): (tuple(p.shape), p.get_metadata()["out_sharding"])
              for path, p in nnx.to_flat_state(nnx.state(mixer, nnx.Param))}
    assert shapes == {
        "A_log": ((128, 8), ("mamba_inner", "mamba_state")),
        "D": ((128,), ("mamba_inner",)),
        "in_proj_kernel": ((64, 256), ("embed", "mamba_inner_xz")),
        "in_proj_bias": ((256,), ("mamba_inner_xz",)),
        "conv_kernel": ((4, 128), ("mamba_conv", "mamba_inner")),
        "conv_bias": ((128,), ("mamba_inner",)),
        "x_proj_kernel": ((128, 20), ("mamba_inner", "mamba_x_proj")),
        "dt_proj_kernel": ((4, 128), ("mamba_dt_rank", "mamba_inner")),
        "dt_proj_bias": ((128,), ("mamba_inner",)),
        "out_proj_kernel": ((128, 64), ("mamba_inner", "embed")),
        "out_proj_bias": ((64,), ("embed",)),
        "dt_layernorm/scale": ((4,), ("mamba_dt_rank",)),
        "b_layernorm/scale": ((8,), ("mamba_state",)),
        "c_layernorm/scale": ((8,), ("mamba_state",)),
    }
    bare = MambaMixer(MambaConfig(hidden_size=64, conv_bias=False, inner_layernorms=False), RuntimeConfig(),
                      rngs=nnx.Rngs(0))
    names = {"/".join(map(str, p)) for p, _ in nnx.to_flat_state(nnx.state(bare, nnx.Param))}
    assert names == {"A_log", "D", "in_proj_kernel", "conv_kernel", "x_proj_kernel", "dt_proj_kernel",
                     "dt_proj_bias", "out_proj_kernel"}


def test_chunked_scan_memory_is_bounded_by_the_chunk():
    """Compiled temp memory of a 1024-position scan in chunks of 32, forward and backward: one
    [B, S, E, N] float32 tensor is 4 MiB (a single chunk needs ~5 of them forward); the chunked
    scan needs a fraction of one, its backward (rematerialised chunks) less than one."""
    b, s, e, n = 1, 1024, 64, 16
    spec = [jax.ShapeDtypeStruct(shape, jnp.float32)
            for shape in ((b, s, e), (b, s, e), (e, n), (b, s, n), (b, s, n), (e,))]
    whole = b * s * e * n * 4
    fwd = jax.jit(lambda *a: selective_scan(*a, chunk_size=32)[0])
    bwd = jax.jit(jax.grad(lambda *a: selective_scan(*a, chunk_size=32)[0].sum(), argnums=(0, 1, 3, 4)))
    fwd, bwd = (f.lower(*spec).compile().memory_analysis().temp_size_in_bytes for f in (fwd, bwd))
    assert fwd < 0.5 * whole and bwd < whole, (fwd / whole, bwd / whole)
