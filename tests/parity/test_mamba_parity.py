"""nn/mamba.py against transformers 4.57.6: ``JambaMambaMixer.slow_forward`` (models/jamba,
``use_mamba_kernels=False``) with and without ``HybridMambaAttentionDynamicCache``, its
attention-mask (left padding) path, bf16; and ``MambaMixer.slow_forward`` (models/mamba, no
inner layernorms) with ``MambaCache``. Every weight is random (not the init) and copied into ours."""

import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx
from transformers import JambaConfig
from transformers import MambaConfig as HFMambaConfig
from transformers.models.jamba.modeling_jamba import HybridMambaAttentionDynamicCache, JambaMambaMixer
from transformers.models.mamba.modeling_mamba import MambaCache
from transformers.models.mamba.modeling_mamba import MambaMixer as HFMambaMixer

from qwen2vl_jax.config import RuntimeConfig
from qwen2vl_jax.nn.mamba import MambaConfig, MambaMixer

TOL = {"rtol": 1e-5, "atol": 1e-5}
D, N, K = 32, 8, 4  # hidden, d_state, d_conv; expand 2, dt_rank auto = 2


def _randomise(module: torch.nn.Module, seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():  # A_log: a perturbation of log(1..N)
            p.copy_(torch.randn(p.shape, generator=gen) * 0.3 + (p if name == "A_log" else 0))


def _ours_from_hf(hf: torch.nn.Module, cfg: MambaConfig, dtype: str = "float32") -> MambaMixer:
    """Copy the HF mixer's weights into ours (the 1:1 name map of nn/mamba.py's docstring)."""
    ours = MambaMixer(cfg, RuntimeConfig(dtype=dtype, param_dtype=dtype), rngs=nnx.Rngs(0), chunk_size=4)
    w = {name: p.detach().float().numpy() for name, p in hf.named_parameters()}
    mapping = {"in_proj_kernel": w["in_proj.weight"].T, "conv_kernel": w["conv1d.weight"][:, 0, :].T,
               "x_proj_kernel": w["x_proj.weight"].T, "dt_proj_kernel": w["dt_proj.weight"].T,
               "dt_proj_bias": w["dt_proj.bias"], "A_log": w["A_log"], "D": w["D"],
               "out_proj_kernel": w["out_proj.weight"].T}
    for ours_name, hf_name in (("in_proj_bias", "in_proj.bias"), ("conv_bias", "conv1d.bias"),
                               ("out_proj_bias", "out_proj.bias")):
        if hf_name in w:
            mapping[ours_name] = w[hf_name]
    if cfg.inner_layernorms:
        for norm in ("dt_layernorm", "b_layernorm", "c_layernorm"):
            getattr(ours, norm).scale[...] = jnp.asarray(w[f"{norm}.weight"], dtype)
    for name, value in mapping.items():
        getattr(ours, name)[...] = jnp.asarray(value, dtype)
    assert len(w) == len(mapping) + (3 if cfg.inner_layernorms else 0)
    return ours


@nnx.jit
def _apply(mixer, x, segment_ids, state):
    return mixer(x, segment_ids, state)


def _inputs(b, s, seed):
    return np.random.default_rng(seed).standard_normal((b, s, D)).astype(np.float32)


def _close(ours, ref):
    np.testing.assert_allclose(np.asarray(ours), ref.detach().numpy() if torch.is_tensor(ref) else ref, **TOL)


@pytest.fixture(scope="module")
def jamba():
    cfg = JambaConfig(hidden_size=D, num_hidden_layers=2, attn_layer_period=2, attn_layer_offset=1,
                      num_attention_heads=4, num_key_value_heads=2, intermediate_size=64, vocab_size=64,
                      num_experts=1, mamba_d_state=N, mamba_d_conv=K, mamba_expand=2, mamba_proj_bias=True,
                      use_mamba_kernels=False)
    assert cfg.layers_block_type[0] == "mamba" and cfg.mamba_dt_rank == 2
    hf = JambaMambaMixer(cfg, layer_idx=0).eval()
    _randomise(hf, seed=0)
    ours = _ours_from_hf(hf, MambaConfig(D, d_state=N, d_conv=K, proj_bias=True, rms_norm_eps=cfg.rms_norm_eps))
    return cfg, hf, ours


def test_jamba_forward_prefill_and_decode(jamba):
    cfg, hf, ours = jamba
    x, steps = _inputs(2, 11, seed=1), _inputs(2, 3, seed=2)
    ones = jnp.ones((2, 11), jnp.int32)
    y, state = _apply(ours, jnp.asarray(x), ones, None)
    cache = HybridMambaAttentionDynamicCache(cfg, 2, dtype=torch.float32)
    with torch.no_grad():
        _close(y, hf(torch.from_numpy(x)))
        _close(y, hf(torch.from_numpy(x), cache_params=cache))  # prefill into the cache
        _close(state.conv, cache.conv_states[0])
        _close(state.ssm, cache.ssm_states[0])
        cache.has_previous_state = True  # as JambaModel.forward sets after the first call
        for t in range(steps.shape[1]):
            y_t, state = _apply(ours, jnp.asarray(steps[:, t:t + 1]), ones[:, :1], state)
            _close(y_t, hf(torch.from_numpy(steps[:, t:t + 1]), cache_params=cache))
            _close(state.conv, cache.conv_states[0])
            _close(state.ssm, cache.ssm_states[0])


def test_jamba_left_padding_mask_is_segment_ids(jamba):
    """transformers zeroes padded conv inputs and outputs (``hidden_states * attention_mask``);
    for left padding that is a fresh sequence, which our segment ids give by resetting."""
    _, hf, ours = jamba
    x = _inputs(2, 11, seed=3)
    mask = np.ones((2, 11), np.int64)
    mask[0, :4] = 0
    y, _ = _apply(ours, jnp.asarray(x), jnp.asarray(mask, jnp.int32), None)
    with torch.no_grad():
        ref = hf(torch.from_numpy(x), attention_mask=torch.from_numpy(mask)).numpy()
        alone = hf(torch.from_numpy(x[:1, 4:])).numpy()
    _close(y[0, 4:], ref[0, 4:])
    _close(y[1], ref[1])
    _close(y[0, 4:], alone[0])


def test_jamba_bf16_rounds_like_transformers(jamba):
    """bf16 weights and activations on both sides: within one bf16 rounding (2^-7 relative) of
    the output's magnitude, and most outputs bit-identical (the same ops run in the same precision)."""
    cfg, hf, _ = jamba
    hf16 = JambaMambaMixer(cfg, layer_idx=0).eval()
    hf16.load_state_dict(hf.state_dict())
    hf16 = hf16.to(torch.bfloat16)
    ours16 = _ours_from_hf(hf16, MambaConfig(D, d_state=N, d_conv=K, proj_bias=True), dtype="bfloat16")
    x = _inputs(2, 11, seed=1)
    y, _ = _apply(ours16, jnp.asarray(x, jnp.bfloat16), jnp.ones((2, 11), jnp.int32), None)
    y = np.asarray(y.astype(jnp.float32))
    with torch.no_grad():
        ref = hf16(torch.from_numpy(x).to(torch.bfloat16)).float().numpy()
    scale = np.abs(ref).max()
    assert np.abs(y - ref).max() <= scale * 2.0 ** -7, (np.abs(y - ref).max(), scale)
    assert (y == ref).mean() > 0.6, (y == ref).mean()


def test_mamba_mixer_forward_and_decode():
    cfg = HFMambaConfig(hidden_size=D, state_size=N, conv_kernel=K, expand=2, use_bias=True, use_conv_bias=True,
                        num_hidden_layers=1, use_mambapy=False)
    hf = HFMambaMixer(cfg, layer_idx=0).eval()
    _randomise(hf, seed=4)
    ours = _ours_from_hf(hf, MambaConfig(D, d_state=N, d_conv=K, proj_bias=True, inner_layernorms=False))
    x, steps = _inputs(2, 9, seed=5), _inputs(2, 2, seed=6)
    ones = jnp.ones((2, 9), jnp.int32)
    y, state = _apply(ours, jnp.asarray(x), ones, None)
    cache = MambaCache(cfg, max_batch_size=2, dtype=torch.float32)
    with torch.no_grad():
        _close(y, hf(torch.from_numpy(x)))
        # A prefill is recognised by a cache_position of length conv_kernel (as generate passes).
        _close(y, hf(torch.from_numpy(x), cache_params=cache, cache_position=torch.arange(K)))
        _close(state.conv, cache.conv_states[0])
        _close(state.ssm, cache.ssm_states[0])
        for t in range(steps.shape[1]):
            y_t, state = _apply(ours, jnp.asarray(steps[:, t:t + 1]), ones[:, :1], state)
            ref = hf(torch.from_numpy(steps[:, t:t + 1]), cache_params=cache,
                     cache_position=torch.tensor([x.shape[1] + t]))
            _close(y_t, ref)
            _close(state.conv, cache.conv_states[0])
            _close(state.ssm, cache.ssm_states[0])
