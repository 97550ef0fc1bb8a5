"""Where streamed checkpoint tensors land: host buffers (conversion) or their device shards.

A loader hands each tensor (one layer's slice of a stacked parameter, or a whole unstacked one)
to a sink as soon as it is read, then drops it:

* ``HostSink`` fills preallocated numpy buffers (checkpoint conversion on one host: the output
  is the model in host memory, nothing more);
* ``DeviceSink`` sends each device only its shard of the tensor
  (``jax.make_array_from_callback``) and writes a layer slice into the device-resident stacked
  parameter in place (a donated ``dynamic_update_slice``), so a stacked parameter is never whole
  on the host and no device ever holds more than its shards plus one tensor's.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec

Path = tuple[str, ...]


def _nest(flat: dict[Path, Any]) -> dict:
    out: dict = {}
    for path, value in flat.items():
        node = out
        for key in path[:-1]:
            node = node.setdefault(key, {})
        node[path[-1]] = value
    return out


class HostSink:
    """numpy buffers of the full parameters (the historical conversion path)."""

    def __init__(self, dtype: np.dtype):
        self.dtype = np.dtype(dtype)
        self._buffers: dict[Path, np.ndarray] = {}

    def write(self, path: Path, shape: tuple[int, ...], layer: int | None, value: np.ndarray) -> None:
        buf = self._buffers.get(path)
        if buf is None:
            buf = self._buffers[path] = np.empty(shape, dtype=self.dtype)
        if layer is None:
            buf[...] = value
        else:
            buf[layer] = value

    def finish(self) -> dict:
        return _nest(self._buffers)


class DeviceSink:
    """Device arrays with the given shardings (a pure dict like the params, of NamedSharding)."""

    def __init__(self, dtype: np.dtype, shardings: dict, after_write: Callable[[], None] | None = None):
        self.dtype = np.dtype(dtype)
        self.shardings = shardings
        self.after_write = after_write  # a hook for tests (per-device memory while loading)
        self._arrays: dict[Path, jax.Array] = {}
        self._update_fns: dict[Path, Callable] = {}

    def _sharding(self, path: Path) -> NamedSharding:
        node = self.shardings
        for key in path:
            node = node[key]
        return node

    def write(self, path: Path, shape: tuple[int, ...], layer: int | None, value: np.ndarray) -> None:
        sharding = self._sharding(path)
        value = np.asarray(value, dtype=self.dtype)
        if layer is None:
            self._arrays[path] = _from_host(value, sharding)
        else:
            if path not in self._arrays:
                self._arrays[path] = jax.jit(lambda: jnp.zeros(shape, self.dtype), out_shardings=sharding)()
                spec = sharding.spec
                layer_sharding = NamedSharding(sharding.mesh, PartitionSpec(*tuple(spec)[1:]))
                self._update_fns[path] = (layer_sharding, jax.jit(
                    lambda buf, x, i: jax.lax.dynamic_update_index_in_dim(buf, x, i, 0),
                    donate_argnums=0, out_shardings=sharding))
            layer_sharding, update = self._update_fns[path]
            piece = _from_host(value, layer_sharding)
            self._arrays[path] = update(self._arrays[path], piece, np.int32(layer))
        jax.block_until_ready(self._arrays[path])  # the host tensor may be dropped now
        if self.after_write is not None:
            self.after_write()

    def finish(self) -> dict:
        return _nest(self._arrays)


def _from_host(value: np.ndarray, sharding: NamedSharding) -> jax.Array:
    """A global array whose devices receive only their own slice of ``value``."""
    return jax.make_array_from_callback(value.shape, sharding, lambda index: value[index])
