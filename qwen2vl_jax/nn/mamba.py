"""The Mamba-1 mixer of Jamba (transformers ``JambaMambaMixer``, models/jamba/modeling_jamba.py;
Jamba paper arXiv 2403.19887; Mamba paper, Gu & Dao 2023, arXiv 2312.00752).

    in_proj (D -> 2E) -> x, z;  x -> causal depthwise conv1d (K = d_conv) -> SiLU
    x_proj (E -> R + 2N) -> dt, B, C;  optional RMSNorms on dt, B, C (Jamba's inner layernorms)
    dt = softplus(dt_proj(dt));  selective scan with A = -exp(A_log)  (ops/selective_scan.py)
    y = (C . h + D * x) * SiLU(z);  out_proj (E -> D)

With ``inner_layernorms=False`` it is transformers' ``MambaMixer`` (models/mamba/modeling_mamba.py).

Precision follows ``JambaMambaMixer.slow_forward``: the projections, the conv, SiLU, the norms
and softplus run in the compute dtype (``dense`` accumulates in float32 and rounds once, like a
torch Linear); ``A``, the discretisation and the SSM state are float32; ``C . h`` rounds the
state to the compute dtype. Weights are cast to the compute dtype where they are used.

Parameter names map 1:1 onto the HF names (``in_proj.weight`` [2E, D] is ``in_proj_kernel.T``;
``conv1d.weight`` [E, 1, K] is ``conv_kernel.T[:, None, :]``; ``dt_layernorm.weight`` is
``dt_layernorm.scale``; ``A_log`` and ``D`` are unchanged).

Initialisation mirrors ``JambaPreTrainedModel._init_weights``: every Linear and the Conv1d
weight normal(0, 0.02) with zero biases (also ``dt_proj.bias``: transformers 4.57.6 applies no
Mamba dt initialisation to Jamba, unlike ``MambaPreTrainedModel._init_weights``), norms at one,
``A_log = log(1..N)`` for every channel, ``D = 1``.
"""

from __future__ import annotations

import dataclasses
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from qwen2vl_jax.config import RuntimeConfig
from qwen2vl_jax.nn.norms import RMSNorm
from qwen2vl_jax.nn.params import dense, make_param, normal_init, ones_init, zeros_init
from qwen2vl_jax.ops.selective_scan import (
    causal_conv1d,
    causal_conv1d_step,
    selective_scan,
    selective_scan_step,
)
from qwen2vl_jax.sharding.rules import constrain

HIDDEN = ("batch", "sequence", "act_embed")


@dataclasses.dataclass(frozen=True)
class MambaConfig:
    """The mixer's architecture (JambaConfig's ``mamba_*`` fields, without the prefix)."""

    hidden_size: int
    d_state: int = 16
    d_conv: int = 4
    expand: int = 2
    dt_rank: int | str = "auto"  # "auto": ceil(hidden_size / 16), as JambaConfig
    conv_bias: bool = True
    proj_bias: bool = False
    inner_layernorms: bool = True
    rms_norm_eps: float = 1e-6

    def __post_init__(self):
        if self.dt_rank != "auto" and (not isinstance(self.dt_rank, int) or self.dt_rank < 1):
            raise ValueError(f"MambaConfig.dt_rank must be 'auto' or a positive int, got {self.dt_rank!r}")
        for name in ("hidden_size", "d_state", "d_conv", "expand"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"MambaConfig.{name} must be >= 1, got {getattr(self, name)}")

    @property
    def intermediate_size(self) -> int:
        return self.expand * self.hidden_size

    @property
    def time_step_rank(self) -> int:
        return math.ceil(self.hidden_size / 16) if self.dt_rank == "auto" else int(self.dt_rank)


class MambaState(NamedTuple):
    """The decoding state in transformers' cache layouts."""

    conv: jax.Array  # [B, E, d_conv]: the last d_conv conv inputs, newest last (compute dtype)
    ssm: jax.Array  # float32 [B, E, N]


def _a_log_init(key, shape, dtype):
    """S4D-real initialisation: A_log[e, n] = log(n + 1)."""
    del key
    e, n = shape
    return jnp.asarray(np.broadcast_to(np.log(np.arange(1, n + 1, dtype=np.float32)), (e, n)), dtype)


def _silu(v: jax.Array) -> jax.Array:
    """SiLU evaluated in float32, rounded to the input dtype (torch's CPU kernel for bf16)."""
    return jax.nn.silu(v.astype(jnp.float32)).astype(v.dtype)


def _softplus(v: jax.Array) -> jax.Array:
    """torch.nn.functional.softplus (beta 1, threshold 20) in float32, rounded to the input dtype."""
    v32 = v.astype(jnp.float32)
    return jnp.where(v32 > 20.0, v32, jnp.log1p(jnp.exp(jnp.minimum(v32, 20.0)))).astype(v.dtype)


class MambaMixer(nnx.Module):
    """x [B, S, D] -> y [B, S, D]; see the module docstring. ``chunk_size``: positions per chunk
    of the associative scan (memory, not results)."""

    def __init__(self, t: MambaConfig, runtime: RuntimeConfig, *, rngs: nnx.Rngs, chunk_size: int = 128):
        pd = runtime.param_dtype
        d, e, n, k, r = t.hidden_size, t.intermediate_size, t.d_state, t.d_conv, t.time_step_rank
        self.dtype = jnp.dtype(runtime.dtype)
        self.intermediate_size, self.d_state, self.d_conv, self.dt_rank = e, n, k, r
        self.inner_layernorms = t.inner_layernorms
        self.chunk_size = int(chunk_size)
        bias = (lambda shape, axes: make_param(rngs, zeros_init, shape, axes, pd))
        self.in_proj_kernel = make_param(rngs, normal_init, (d, 2 * e), ("embed", "mamba_inner_xz"), pd)
        self.in_proj_bias = bias((2 * e,), ("mamba_inner_xz",)) if t.proj_bias else None
        self.conv_kernel = make_param(rngs, normal_init, (k, e), ("mamba_conv", "mamba_inner"), pd)
        self.conv_bias = bias((e,), ("mamba_inner",)) if t.conv_bias else None
        self.x_proj_kernel = make_param(rngs, normal_init, (e, r + 2 * n), ("mamba_inner", "mamba_x_proj"), pd)
        self.dt_proj_kernel = make_param(rngs, normal_init, (r, e), ("mamba_dt_rank", "mamba_inner"), pd)
        self.dt_proj_bias = bias((e,), ("mamba_inner",))
        self.A_log = make_param(rngs, _a_log_init, (e, n), ("mamba_inner", "mamba_state"), pd)
        self.D = make_param(rngs, ones_init, (e,), ("mamba_inner",), pd)
        self.out_proj_kernel = make_param(rngs, normal_init, (e, d), ("mamba_inner", "embed"), pd)
        self.out_proj_bias = bias((d,), ("embed",)) if t.proj_bias else None
        if t.inner_layernorms:
            eps = t.rms_norm_eps
            self.dt_layernorm = RMSNorm(r, eps, "mamba_dt_rank", param_dtype=pd, rngs=rngs)
            self.b_layernorm = RMSNorm(n, eps, "mamba_state", param_dtype=pd, rngs=rngs)
            self.c_layernorm = RMSNorm(n, eps, "mamba_state", param_dtype=pd, rngs=rngs)

    def init_state(self, batch: int) -> MambaState:
        """The state of a fresh sequence (what a first prefill starts from)."""
        return MambaState(jnp.zeros((batch, self.intermediate_size, self.d_conv), self.dtype),
                          jnp.zeros((batch, self.intermediate_size, self.d_state), jnp.float32))

    @staticmethod
    def _value(p):
        return None if p is None else p[...]

    def __call__(self, x: jax.Array, segment_ids: jax.Array | None = None, state: MambaState | None = None
                 ) -> tuple[jax.Array, MambaState]:
        """x: [B, S, D]; segment_ids: int[B, S] (0 = padding; None: one segment per row); state:
        a ``MambaState`` to continue (prefill of a later chunk, or with S == 1 one decode step)
        or None (a fresh sequence). Returns (y [B, S, D] in the compute dtype, the new state)."""
        dt_ = self.dtype
        b, s, _ = x.shape
        e, n, r = self.intermediate_size, self.d_state, self.dt_rank
        if segment_ids is None:
            segment_ids = jnp.ones((b, s), jnp.int32)
        valid = (segment_ids != 0)[..., None]
        zero = jnp.zeros((), dt_)
        xz = dense(x, self.in_proj_kernel[...], self._value(self.in_proj_bias), "bsd,df->bsf", dt_)
        xs, z = xz[..., :e], xz[..., e:]
        xs = jnp.where(valid, xs, zero)  # slow_forward's ``hidden_states * attention_mask``
        conv_kernel, conv_bias = self.conv_kernel[...], self._value(self.conv_bias)
        decode = s == 1 and state is not None
        if decode:
            conv, window = causal_conv1d_step(state.conv, xs[:, 0], conv_kernel, conv_bias,
                                              segment_ids=segment_ids[:, 0])
            conv = conv[:, None]
        else:
            conv, window = causal_conv1d(xs, conv_kernel, conv_bias, segment_ids=segment_ids,
                                         window=None if state is None else state.conv)
        xs = jnp.where(valid, _silu(conv), zero)

        params = dense(xs, self.x_proj_kernel[...], None, "bse,ep->bsp", dt_)
        time_step, B, C = params[..., :r], params[..., r:r + n], params[..., r + n:]
        if self.inner_layernorms:
            time_step, B, C = self.dt_layernorm(time_step), self.b_layernorm(B), self.c_layernorm(C)
        delta = _softplus(dense(time_step, self.dt_proj_kernel[...], self.dt_proj_bias[...], "bsr,re->bse", dt_))
        A = -jnp.exp(self.A_log[...].astype(jnp.float32))
        D = self.D[...]
        if decode:
            y, h = selective_scan_step(state.ssm, xs[:, 0], delta[:, 0], A, B[:, 0], C[:, 0], D,
                                       segment_ids=segment_ids[:, 0])
            y = y[:, None]
        else:
            y, h = selective_scan(xs, delta, A, B, C, D, segment_ids=segment_ids,
                                  initial_state=None if state is None else state.ssm,
                                  chunk_size=self.chunk_size)
        y = y * _silu(z)
        out = dense(y, self.out_proj_kernel[...], self._value(self.out_proj_bias), "bse,ed->bsd", dt_)
        return constrain(out, HIDDEN), MambaState(window.astype(dt_), h)
