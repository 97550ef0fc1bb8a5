"""The training recipe: frozen dataclasses are the schema, YAML files the recipes.

    run = load_run_config("experiments/configs/stage3_sft_2b.yaml", ["steps=100", "optimizer.learning_rate=1e-5"])

* ``base_config: other.yaml`` (relative to the file) is loaded first and the file's keys are
  merged over it, recursively; a dict that names a ``type`` (a data source spec) replaces the
  inherited one whole instead of merging into it.
* ``key=value`` overrides use dotted keys; values are parsed as YAML (``steps=10``,
  ``freeze.freeze_vision=true``, ``data.source={type: jsonl, path: a.jsonl}``).
* Unknown keys are errors naming the key and the valid ones; values are coerced to the field's
  type (so ``1e-5``, which YAML reads as a string, is a float) or rejected with the key named.
* ``mesh: fsdp=4,tensor=2`` (top level, or ``mesh=...`` on the command line) sets
  ``runtime.mesh``; without it every device is on ``fsdp``.

The resolved config (``to_dict``) is saved in the run directory and in every checkpoint.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from pathlib import Path
from typing import Any

import yaml

from data_pipelines.pipeline import DataConfig
from qwen2vl_jax.config import RuntimeConfig
from qwen2vl_jax.train.freezing import FreezeConfig
from qwen2vl_jax.train.optimizer import OptimizerConfig


# A packed row shorter than this holds no chat sample: the system, user and assistant turn
# markers of the built-in template are more tokens than that before any text.
MIN_TEXT_BUDGET = 16


@dataclasses.dataclass(frozen=True)
class ModelSection:
    """Where the model comes from: a checkpoint (HF or our Orbax format, ``checkpoint``) to
    fine-tune, or a preset initialised from scratch (``preset`` alone). With both, the
    checkpoint's architecture must equal the preset's (a guard against a wrong path).
    ``overrides`` changes architecture fields for ablations (``{text: {num_hidden_layers: 4}}``).
    How the model runs (dtypes, attention kernels, remat) is the recipe's ``runtime:`` section."""

    preset: str | None = None
    checkpoint: str | None = None
    overrides: dict = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class EvalSection:
    """``qwen2vl-jax eval`` (and the demo): loss and exact match of generated answers."""

    source: dict | None = None  # a source spec; None: no evaluation data configured
    num_examples: int = 200
    max_new_tokens: int = 16
    batch_size: int = 16


@dataclasses.dataclass(frozen=True)
class RunConfig:
    run_name: str = "run"
    output_dir: str = "runs"  # the run directory is output_dir/run_name
    # Where the Orbax checkpoints go; None: <run directory>/checkpoints. May be a bucket
    # (gs://...): Orbax writes it directly, every host its own shards.
    checkpoint_dir: str | None = None
    steps: int = 1000
    checkpoint_every: int = 500
    keep_checkpoints: int = 3
    log_every: int = 10
    seed: int = 0
    per_device_batch_size: int = 1  # packed rows per device per microbatch
    grad_accum: int = 1  # microbatches per optimizer step
    z_loss_weight: float = 0.0
    peak_tflops: float | None = None  # per device, for MFU (None: from the device kind)
    tensorboard: str = "auto"  # "auto" (if tensorboardX is installed) | "true" | "false"
    wandb: dict | None = None  # e.g. {project: qwen2vl, name: stage1}; needs the [track] extra
    max_nonfinite_steps: int = 3  # stop after this many steps in a row with a non-finite loss/grad
    accept_changed_recipe: bool = False  # resume even if what is trained changed (train/resume_check.py)
    tokenizer: str | None = None  # a dir with tokenizer.json etc.; None: model.checkpoint's;
    #                               "builtin:synthetic_visual_qa" builds the demo's small tokenizer
    model: ModelSection = dataclasses.field(default_factory=ModelSection)
    # dtype / param_dtype (bf16 compute over fp32 master weights in the shipped recipes),
    # vision/text_attention_impl, vision/text_remat, buckets, mesh: qwen2vl_jax.config.RuntimeConfig.
    runtime: RuntimeConfig = dataclasses.field(default_factory=RuntimeConfig)
    data: DataConfig = dataclasses.field(default_factory=DataConfig)
    optimizer: OptimizerConfig = dataclasses.field(default_factory=OptimizerConfig)
    freeze: FreezeConfig = dataclasses.field(default_factory=FreezeConfig)
    eval: EvalSection = dataclasses.field(default_factory=EvalSection)

    @property
    def run_dir(self) -> Path:
        return Path(self.output_dir) / self.run_name

    @property
    def checkpoints(self) -> str | Path:
        """The checkpoint directory (a string when it is a bucket URL: pathlib drops the //)."""
        if self.checkpoint_dir is None:
            return self.run_dir / "checkpoints"
        return self.checkpoint_dir if "://" in self.checkpoint_dir else Path(self.checkpoint_dir)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def validate(self) -> None:
        if self.model.preset is None and self.model.checkpoint is None:
            raise ValueError("set model.preset (train from scratch) or model.checkpoint (fine-tune; with "
                             "model.preset too, the checkpoint's architecture is checked against it)")
        for name in ("steps", "checkpoint_every", "log_every", "per_device_batch_size", "grad_accum",
                     "keep_checkpoints", "max_nonfinite_steps"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.tensorboard not in ("auto", "true", "false"):
            raise ValueError(f"tensorboard must be auto, true or false, got {self.tensorboard!r}")
        self._validate_budgets()
        from data_pipelines.sources import check_spec

        for key, spec in (("data.source", self.data.source), ("eval.source", self.eval.source)):
            if spec is not None:
                try:
                    check_spec(spec)
                except ValueError as e:
                    raise ValueError(f"{key}: {e}") from e

    def _validate_budgets(self) -> None:
        """Budgets that no sample could ever fit (the pipeline would skip every record)."""
        vision = self.model.overrides.get("vision") or {}
        merge = vision.get("spatial_merge_size", 2) if isinstance(vision, dict) else 2
        unit = merge**2 if isinstance(merge, int) and not isinstance(merge, bool) and merge > 0 else 4
        if self.data.patches_per_row < unit or self.data.patches_per_row % unit:
            raise ValueError(f"data.patches_per_row must be a positive multiple of {unit} (one vision token "
                             f"is {merge}x{merge} merged patches), got {self.data.patches_per_row}")
        if self.data.text_budget < MIN_TEXT_BUDGET:
            raise ValueError(f"data.text_budget must be >= {MIN_TEXT_BUDGET} tokens (the turn markers of the "
                             f"smallest chat sample alone take more), got {self.data.text_budget}")
        if self.data.num_workers < 0:
            raise ValueError(f"data.num_workers must be >= 0, got {self.data.num_workers}")
        for name in ("num_examples", "max_new_tokens", "batch_size"):
            if getattr(self.eval, name) < 1:
                raise ValueError(f"eval.{name} must be >= 1, got {getattr(self.eval, name)}")


# ---------------------------------------------------------------------------- loading


def _merge(base: dict, child: dict) -> dict:
    out = dict(base)
    for key, value in child.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict) and "type" not in value:
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def load_yaml_recipe(path: str | Path, _seen: tuple[Path, ...] = ()) -> dict:
    path = Path(path).resolve()
    if path in _seen:
        raise ValueError(f"base_config cycle: {' -> '.join(map(str, (*_seen, path)))}")
    if not path.exists():
        raise FileNotFoundError(f"config file not found: {path}")
    try:
        with open(path, "rb") as f:  # a stream: YAML's errors then name the file and the line
            raw = yaml.safe_load(f) or {}
    except (OSError, yaml.YAMLError, RecursionError) as e:
        raise ValueError(f"{path}: not a readable YAML file ({_first_line(e)})") from e
    if not isinstance(raw, dict):
        raise ValueError(f"{path}: a recipe must be a mapping, got {type(raw).__name__}")
    base = raw.pop("base_config", None)
    if base is None:
        return raw
    if not isinstance(base, str):
        raise ValueError(f"{path}: base_config must be a file name, got {base!r}")
    return _merge(load_yaml_recipe(path.parent / base, (*_seen, path)), raw)


def _first_line(e: BaseException) -> str:
    """A one-line reason (YAML's own messages span several lines with a caret drawing)."""
    mark = getattr(e, "problem_mark", None)
    if isinstance(e, yaml.MarkedYAMLError) and e.problem and mark is not None:
        return f"{e.problem} at line {mark.line + 1}, column {mark.column + 1}"
    text = " ".join(str(e).split())
    return text[:300] or type(e).__name__


def apply_overrides(tree: dict, overrides: list[str]) -> dict:
    tree = dict(tree)
    for item in overrides:
        if "=" not in item:
            raise ValueError(f"override {item!r} is not key=value")
        key, text = item.split("=", 1)
        try:
            value = yaml.safe_load(text) if text else None
        except (yaml.YAMLError, RecursionError) as e:
            raise ValueError(f"override {item!r}: the value is not YAML ({_first_line(e)})") from e
        node, parts = tree, key.strip().split(".")
        for part in parts[:-1]:
            child = node.get(part)
            node[part] = dict(child) if isinstance(child, dict) else {}
            node = node[part]
        node[parts[-1]] = value
    return tree


def _coerce(value: Any, annotation: Any, key: str) -> Any:
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(annotation)
        if value is None and type(None) in args:
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, key)
            except (TypeError, ValueError):
                continue
        raise ValueError(f"{key}: cannot use {value!r} as {annotation}")
    if dataclasses.is_dataclass(annotation):
        return from_dict(annotation, value, key)
    if annotation is bool:
        if isinstance(value, bool):
            return value
        if str(value).lower() in ("true", "false"):
            return str(value).lower() == "true"
        raise ValueError(f"{key}: expected true/false, got {value!r}")
    if annotation in (int, float):
        try:
            number = float(value)
        except (TypeError, ValueError):
            number = None
        if isinstance(value, bool) or number is None:
            raise ValueError(f"{key}: expected a number, got {value!r}")
        if annotation is float:
            return number
        if number != int(number):
            raise ValueError(f"{key}: expected an integer, got {value!r}")
        return int(number)
    if annotation is str:
        if isinstance(value, (dict, list)):
            raise ValueError(f"{key}: expected a string, got {value!r}")
        return str(value).lower() if isinstance(value, bool) else str(value)
    if annotation is dict or origin is dict:
        if not isinstance(value, dict):
            raise ValueError(f"{key}: expected a mapping, got {value!r}")
        return dict(value)
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ValueError(f"{key}: expected a list, got {value!r}")
        item = typing.get_args(annotation)[0]
        return tuple(_coerce(v, item, f"{key}[{i}]") for i, v in enumerate(value))
    return value


def from_dict(cls: type, tree: Any, prefix: str = "") -> Any:
    """Build dataclass ``cls`` from a nested dict; unknown keys and bad values name the key."""
    if not isinstance(tree, dict):
        raise ValueError(f"{prefix or 'config'}: expected a mapping, got {tree!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(map(str, set(tree) - fields))  # YAML keys may be numbers or null
    if unknown:
        where = f"{prefix}." if prefix else ""
        raise ValueError(f"unknown config key(s) {', '.join(where + k for k in unknown)}; valid keys"
                         f"{' under ' + prefix if prefix else ''}: {', '.join(sorted(fields))}")
    kwargs = {k: _coerce(v, hints[k], f"{prefix}.{k}" if prefix else k) for k, v in tree.items()}
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as e:  # a section's own checks (e.g. RuntimeConfig's)
        raise ValueError(f"{prefix}: {e}" if prefix and not str(e).startswith(prefix) else str(e)) from e


def load_run_config(path: str | Path | None, overrides: list[str] = ()) -> RunConfig:
    """The recipe at ``path`` (or the defaults) with ``key=value`` overrides applied."""
    tree = apply_overrides(load_yaml_recipe(path) if path is not None else {}, list(overrides))
    for section in ("runtime", "model"):
        if not isinstance(tree.get(section) or {}, dict):
            raise ValueError(f"{section}: expected a mapping, got {tree[section]!r}")
    if "mesh" in tree:  # the top-level ``mesh:`` key (and ``mesh=...``) is runtime.mesh
        tree["runtime"] = {**(tree.get("runtime") or {}), "mesh": tree.pop("mesh")}
    moved = sorted(set(tree.get("model") or {}) & {f.name for f in dataclasses.fields(RuntimeConfig)})
    if moved:  # these lived under model: before the architecture / runtime split
        raise ValueError("; ".join(f"model.{k} is a runtime setting: use runtime.{k}" for k in moved))
    run = from_dict(RunConfig, tree)
    run.validate()
    return run


def dump_yaml(run: RunConfig) -> str:
    return yaml.safe_dump(run.to_dict(), sort_keys=False)
