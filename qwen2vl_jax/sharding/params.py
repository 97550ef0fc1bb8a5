"""Shardings of the parameters (and anything shaped like them), from their logical axis names.

``param_shardings(abstract_state, mesh)`` gives one ``NamedSharding`` per parameter; the
initialisers, checkpoint loaders and the optimizer place arrays with it directly, so no
parameter is ever whole on one device unless the table replicates it.
"""

from __future__ import annotations

from typing import Any

import jax
import optax
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec

from qwen2vl_jax.sharding.rules import param_spec


def _dotted(path: tuple[Any, ...]) -> str:
    return ".".join(str(getattr(k, "key", k)) for k in path)


def param_specs(state: nnx.State, mesh) -> dict:
    """A pure dict of PartitionSpecs, one per parameter of ``state`` (abstract or concrete)."""
    logical = nnx.to_pure_dict(nnx.get_partition_spec(state))
    shapes = nnx.to_pure_dict(state)

    def one(path, leaf):
        names = _get(logical, path)
        names = tuple(names) if names is not None else (None,) * len(leaf.shape)
        return param_spec(names, leaf.shape, mesh, _dotted(path))

    return jax.tree_util.tree_map_with_path(one, shapes)


def param_shardings(state: nnx.State, mesh) -> dict:
    """A pure dict of ``NamedSharding``, one per parameter."""
    return jax.tree.map(lambda spec: NamedSharding(mesh, spec), param_specs(state, mesh),
                        is_leaf=lambda x: isinstance(x, PartitionSpec))


def replicated(mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())


def optimizer_shardings(tx: optax.GradientTransformation, params_like: Any, params_shardings: Any, mesh) -> Any:
    """Shardings of ``tx.init(params)``: every leaf that sits at a parameter's path with the
    parameter's shape (Adam's moments, also inside ``multi_transform``'s masked states) is sharded
    like the parameter; everything else (step counts) is replicated."""
    by_path = {}
    for path, leaf in jax.tree_util.tree_flatten_with_path(params_like)[0]:
        by_path[tuple(str(getattr(k, "key", k)) for k in path)] = (tuple(leaf.shape), _get(params_shardings, path))

    def one(path, leaf):
        keys = [str(k.key) for k in path if isinstance(k, jax.tree_util.DictKey)]
        for start in range(len(keys)):
            hit = by_path.get(tuple(keys[start:]))
            if hit is not None and hit[0] == tuple(leaf.shape):
                return hit[1]
        return replicated(mesh)

    return jax.tree_util.tree_map_with_path(one, jax.eval_shape(tx.init, params_like))


def _get(tree: dict, path: tuple[Any, ...]):
    node = tree
    for k in path:
        node = node[getattr(k, "key", k)]
    return node
