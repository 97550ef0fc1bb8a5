"""Checkpoint conversion: HF safetensors <-> our Orbax format, streaming one tensor at a time.

HF -> Orbax: tensors are read one by one into preallocated host buffers of the target params
(no jax arrays, no second copy), then Orbax writes them. Orbax -> HF: params are restored from
Orbax and streamed tensor by tensor into safetensors files. Either way the peak host memory is
the model size plus about one tensor (``tools/measure_convert_memory.py`` measures it).
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from collections.abc import Callable
from pathlib import Path

import jax
import jax.numpy as jnp
from flax import nnx

from qwen2vl_jax.checkpoint.native import is_native_checkpoint, load_native, save_native
from qwen2vl_jax.checkpoint.safetensors_io import load_hf_weights, save_hf_weights, stored_dtype
from qwen2vl_jax.config import ModelConfig, RuntimeConfig
from qwen2vl_jax.model import abstract_model

# Everything a checkpoint directory holds besides weights and config.json: carried over by
# conversion so the result is as usable (generate, processor) as the source.
SIDECAR_FILES = (
    "generation_config.json", "tokenizer.json", "tokenizer_config.json", "vocab.json", "merges.txt",
    "special_tokens_map.json", "added_tokens.json", "preprocessor_config.json",
    "video_preprocessor_config.json", "chat_template.json", "chat_template.jinja",
)


def copy_sidecar_files(src: Path, dst: Path) -> list[str]:
    copied = []
    for name in SIDECAR_FILES:
        if (src / name).is_file():
            shutil.copyfile(src / name, dst / name)
            copied.append(name)
    return copied


def _progress(msg: str) -> None:
    print(f"[convert] {msg}", file=sys.stderr, flush=True)


def _abstract_params(cfg: ModelConfig, dtype: str) -> dict:
    runtime = RuntimeConfig(dtype=dtype, param_dtype=dtype)
    return nnx.to_pure_dict(nnx.state(abstract_model(cfg, runtime), nnx.Param))


def hf_to_orbax(hf_dir: str | os.PathLike, out_dir: str | os.PathLike, dtype: str | None = None,
                progress: Callable[[str], None] = _progress, mesh: str | None = None) -> Path:
    """Convert a HF checkpoint directory into our native Orbax checkpoint.

    On accelerators (or with ``mesh``) every tensor goes straight onto its shards of the mesh
    (default: all devices on ``fsdp``) and Orbax writes the shards: the host holds one tensor at
    a time. On a CPU-only host the devices ARE host memory, so the tensors are streamed into host
    buffers that Orbax writes without staging copies (peak ~1.06x the model).
    """
    hf_dir = Path(hf_dir)
    if not (hf_dir / "config.json").exists():
        raise ValueError(f"{hf_dir}: no config.json; is this a HF checkpoint directory?")
    dt = dtype or stored_dtype(hf_dir)
    if dt not in ("float32", "bfloat16"):
        raise ValueError(f"{hf_dir}: weights are stored as {dt}; pass --dtype float32 or bfloat16")
    cfg = ModelConfig.from_json_file(hf_dir / "config.json")
    if mesh is None and jax.default_backend() == "cpu":
        params = load_hf_weights(hf_dir, cfg, _abstract_params(cfg, dt), jnp.dtype(dt), progress=progress)
    else:
        from qwen2vl_jax.hf import Qwen2VLForConditionalGeneration

        params = Qwen2VLForConditionalGeneration.from_pretrained(hf_dir, dt, progress, mesh=mesh).pure_params()
    progress(f"writing Orbax checkpoint to {out_dir}")
    out = save_native(out_dir, cfg, params)
    copy_sidecar_files(hf_dir, out)
    return out


def orbax_to_hf(orbax_dir: str | os.PathLike, out_dir: str | os.PathLike, dtype: str | None = None,
                progress: Callable[[str], None] = _progress) -> Path:
    """Convert our native Orbax checkpoint into a HF safetensors directory."""
    orbax_dir = Path(orbax_dir)
    if not is_native_checkpoint(orbax_dir):
        raise ValueError(f"{orbax_dir}: not a qwen2vl_jax Orbax checkpoint (no qwen2vl_jax.json)")
    with open(orbax_dir / "qwen2vl_jax.json") as f:
        stored = json.load(f)["dtype"]
    cfg = ModelConfig.from_json_file(orbax_dir / "config.json")
    progress(f"restoring {orbax_dir}")
    params = load_native(orbax_dir, _abstract_params(cfg, stored), as_numpy=True)
    out = Path(out_dir)
    save_hf_weights(out, cfg, params, dtype=dtype, progress=progress)
    with open(out / "config.json", "w") as f:
        json.dump(cfg.to_hf_dict(dtype or stored), f, indent=2)
    copy_sidecar_files(orbax_dir, out)
    return out
