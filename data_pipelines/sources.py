"""Open a random-access record source from a small config dict (one entry of a YAML recipe).

    open_source({"type": "jsonl", "path": "data/train.jsonl", "image_root": "data/images",
                 "format": "llava"})
    open_source({"type": "array_record", "data_dir": "/data/tfds", "name": "my_sft"})
    open_source({"type": "synthetic_visual_qa", "num_records": 1000, "seed": 0})
    open_source({"type": "mixture", "weights": [0.9, 0.1], "seed": 0,
                 "sources": [{"type": "array_record", ...}, {"type": "jsonl", ...}]})

Every source returned has ``__len__`` and ``__getitem__`` (grain's ``MapDataset.source`` takes it)
and yields canonical records, or ``_error`` records for bad input (see ``jsonl_source``).

The registry ``SOURCE_TYPES`` maps a type name to a factory; the factory's keyword parameters
are the spec's allowed keys (those without a default are required), so a misspelt key is a
``ValueError`` naming it. A factory that declares a ``base_dir`` parameter gets the directory
relative paths are resolved against (``open_source(spec, base_dir=...)``, default: the current
directory); ``base_dir`` is not a spec key. Add a type with ``register_source_type``::

    register_source_type("my_source", MySource)  # a class works as a factory

List values in a spec become tuples where the factory's default is a tuple (YAML has no tuples).
"""

from __future__ import annotations

import importlib
import inspect
import os
from collections.abc import Callable, Mapping
from typing import Any

SourceFactory = Callable[..., Any]


def _path(value: Any, base_dir: str | None) -> str | None:
    if value is None:
        return None
    value = os.path.expanduser(os.fspath(value))
    return value if os.path.isabs(value) or base_dir is None else os.path.join(base_dir, value)


def open_jsonl(*, path: str, image_root: str | None = None, format: str = "auto",
               base_dir: str | None = None) -> Any:
    from data_pipelines.jsonl_source import JsonlSource

    return JsonlSource(_path(path, base_dir), image_root=_path(image_root, base_dir), format=format)


def open_array_record_spec(*, data_dir: str, name: str, split: str = "train", image_root: str | None = None,
                           base_dir: str | None = None) -> Any:
    from data_pipelines.tfds_builder import open_array_record

    return open_array_record(_path(data_dir, base_dir), name, split=split,
                             image_root=_path(image_root, base_dir))


def open_mixture(*, sources: list[Mapping[str, Any]], weights: list[float] | None = None, seed: int = 0,
                 num_records: int | str = "max", names: list[str] | None = None, tag: bool = True,
                 base_dir: str | None = None) -> Any:
    from data_pipelines.mixture import Mixture

    if not isinstance(sources, (list, tuple)) or not sources:
        raise ValueError("mixture: 'sources' must be a non-empty list of source specs")
    opened = []
    for i, child in enumerate(sources):
        try:
            opened.append(open_source(child, base_dir=base_dir))
        except ValueError as err:
            raise ValueError(f"mixture sources[{i}]: {err}") from err
    return Mixture(opened, weights, seed=seed, num_records=num_records, names=names, tag=tag)


class LazyClass:
    """A factory naming a class by module and attribute, imported on first use (so a registry
    entry can point at a class that is being written, or is heavy to import)."""

    def __init__(self, module: str, attr: str):
        self.module, self.attr = module, attr

    def resolve(self) -> type:
        cls = getattr(importlib.import_module(self.module), self.attr, None)
        if cls is None:
            raise ValueError(f"{self.module}.{self.attr} does not exist")
        return cls

    @property
    def __signature__(self) -> inspect.Signature:
        return inspect.signature(self.resolve())

    def __call__(self, **kwargs: Any) -> Any:
        return self.resolve()(**kwargs)


SOURCE_TYPES: dict[str, SourceFactory] = {
    "jsonl": open_jsonl,
    "array_record": open_array_record_spec,
    "synthetic_visual_qa": LazyClass("data_pipelines.synthetic", "SyntheticVisualQA"),
    "mixture": open_mixture,
}


def register_source_type(type_name: str, factory: SourceFactory, *, replace: bool = False) -> None:
    """Add ``type_name`` to the registry (``replace=True`` to override an existing entry)."""
    if type_name in SOURCE_TYPES and not replace:
        raise ValueError(f"source type {type_name!r} is already registered")
    SOURCE_TYPES[type_name] = factory


def _parameters(type_name: str, factory: SourceFactory) -> dict[str, inspect.Parameter]:
    params = inspect.signature(factory).parameters
    return {n: p for n, p in params.items()
            if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and n not in ("self", "base_dir")}


def check_spec(spec: Any) -> tuple[SourceFactory, dict[str, Any]]:
    """(factory, keyword arguments) of a spec, without opening anything; ValueError names an
    unknown type or key, or a missing required key (a mixture's children are checked too)."""
    if not isinstance(spec, Mapping):
        raise ValueError(f"a source spec must be a mapping, got {type(spec).__name__}")  # noqa: TRY004
    if "type" not in spec:
        raise ValueError(f"source spec has no 'type' key (known types: {sorted(SOURCE_TYPES)})")
    type_name = spec["type"]
    factory = SOURCE_TYPES.get(type_name) if isinstance(type_name, str) else None
    if factory is None:
        raise ValueError(f"unknown source type {type_name!r} (key 'type'); "
                         f"known types: {sorted(SOURCE_TYPES)}")
    params = _parameters(type_name, factory)
    kwargs = {k: v for k, v in spec.items() if k != "type"}
    for key in kwargs:
        if key not in params:
            raise ValueError(f"{type_name} source: unknown key {key!r} (allowed: {sorted(params)})")
    for name, p in params.items():
        if p.default is inspect.Parameter.empty and name not in kwargs:
            raise ValueError(f"{type_name} source: missing required key {name!r}")
        if isinstance(p.default, tuple) and isinstance(kwargs.get(name), list):
            kwargs[name] = tuple(kwargs[name])
    for name in ("path", "data_dir", "image_root"):
        if name in kwargs and kwargs[name] is not None and not isinstance(kwargs[name], (str, os.PathLike)):
            raise ValueError(f"{type_name} source: {name} must be a path, got {kwargs[name]!r}")
    if factory is open_mixture:
        children = kwargs.get("sources")
        if not isinstance(children, (list, tuple)) or not children:
            raise ValueError("mixture: 'sources' must be a non-empty list of source specs")
        for i, child in enumerate(children):
            try:
                check_spec(child)
            except ValueError as err:
                raise ValueError(f"mixture sources[{i}]: {err}") from err
    return factory, kwargs


def open_source(spec: Mapping[str, Any], base_dir: str | os.PathLike | None = None) -> Any:
    """A random-access source from a spec dict; ValueError names an unknown type or key, or a
    missing required key (``check_spec``)."""
    factory, kwargs = check_spec(spec)
    if "base_dir" in inspect.signature(factory).parameters:
        kwargs["base_dir"] = None if base_dir is None else os.fspath(base_dir)
    return factory(**kwargs)
