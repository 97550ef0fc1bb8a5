"""Recipes: base_config inheritance, dotted overrides, unknown keys, coercion; every shipped recipe loads."""

from pathlib import Path

import pytest

from qwen2vl_jax.config import get_preset
from qwen2vl_jax.train.run_config import RunConfig, dump_yaml, load_run_config

CONFIGS = sorted(p for p in Path("experiments/configs").glob("*.yaml") if not p.name.startswith("_"))


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_every_shipped_recipe_loads_and_validates(path):
    run = load_run_config(path)
    assert isinstance(run, RunConfig) and run.run_dir == Path(run.output_dir) / run.run_name
    assert load_run_config(path, []) == run


def test_the_paper_stages_for_every_size():
    for size in ("2b", "7b", "72b"):
        s1, s2, s3 = (load_run_config(f"experiments/configs/{stage}_{size}.yaml")
                      for stage in ("stage1_pretrain", "stage2_multitask", "stage3_sft"))
        assert all(s.model.preset == size for s in (s1, s2, s3))
        get_preset(s1.model.preset)  # a real preset
        assert (s1.freeze.freeze_vision, s1.freeze.freeze_merger, s1.freeze.freeze_llm) == (False, False, True)
        assert (s2.freeze.freeze_vision, s2.freeze.freeze_merger, s2.freeze.freeze_llm) == (False, False, False)
        assert (s3.freeze.freeze_vision, s3.freeze.freeze_merger, s3.freeze.freeze_llm) == (True, False, False)
        assert s1.data.labels == s2.data.labels == "all_text" and s3.data.labels == "assistant"
        assert s1.run_name == f"stage1_pretrain_{size}"
        assert s1.optimizer.b2 == 0.95  # inherited from base.yaml through two levels


def test_inheritance_overrides_and_coercion(tmp_path):
    (tmp_path / "base.yaml").write_text("steps: 10\nmodel: {preset: tiny}\nruntime: {dtype: float32}\n"
                                        "data: {source: {type: jsonl, path: a.jsonl}, text_budget: 256}\n")
    (tmp_path / "child.yaml").write_text("base_config: base.yaml\nrun_name: child\n"
                                         "data: {source: {type: synthetic_visual_qa, seed: 3}}\n")
    run = load_run_config(tmp_path / "child.yaml", ["optimizer.learning_rate=1e-5", "freeze.freeze_vision=true",
                                                     "steps=20", "data.num_workers=2"])
    assert run.steps == 20 and run.run_name == "child" and run.model.preset == "tiny"
    assert run.optimizer.learning_rate == 1e-5  # YAML reads 1e-5 as a string: coerced to float
    assert run.freeze.freeze_vision is True and run.data.num_workers == 2 and run.data.text_budget == 256
    assert run.data.source == {"type": "synthetic_visual_qa", "seed": 3}  # a typed spec replaces, never merges
    assert load_run_config(None, [f"{k}" for k in []] + ["model.preset=tiny"]).model.preset == "tiny"
    # The resolved config round-trips through the YAML written into the run directory.
    (tmp_path / "resolved.yaml").write_text(dump_yaml(run))
    assert load_run_config(tmp_path / "resolved.yaml") == run


@pytest.mark.parametrize("override, message", [
    ("stepz=3", "unknown config key.*stepz"),
    ("optimizer.lr=3", "unknown config key.*optimizer.lr.*learning_rate"),
    ("steps=abc", "steps"),
    ("steps=2.5", "steps: expected an integer"),
    ("steps=0", "steps must be >= 1"),
    ("freeze.freeze_llm=maybe", "freeze.freeze_llm"),
    ("steps", "not key=value"),
    ("model.preset=null", "model.preset"),
    ("model.dtype=bfloat16", "model.dtype is a runtime setting: use runtime.dtype"),
    ("runtime.dtype=float16", "dtype 'float16' is not supported"),
    ("runtime.text_remat=some", "text_remat 'some' is not one of"),
    ("runtime.buckets.text_buckets=[]", "text_buckets must be a non-empty list"),
])
def test_bad_overrides_are_named(override, message):
    with pytest.raises(ValueError, match=message):
        load_run_config(None, ["model.preset=tiny", override] if "preset" not in override else [override])


def test_base_config_cycle_and_missing_file(tmp_path):
    (tmp_path / "a.yaml").write_text("base_config: b.yaml\n")
    (tmp_path / "b.yaml").write_text("base_config: a.yaml\n")
    with pytest.raises(ValueError, match="cycle"):
        load_run_config(tmp_path / "a.yaml")
    with pytest.raises(FileNotFoundError, match="nope.yaml"):
        load_run_config(tmp_path / "nope.yaml")


def test_top_level_mesh_key_sets_the_runtime_mesh(tmp_path):
    (tmp_path / "r.yaml").write_text("model: {preset: tiny}\nmesh: fsdp=4,tensor=2\n")
    assert load_run_config(tmp_path / "r.yaml").runtime.mesh == "fsdp=4,tensor=2"
    assert load_run_config(tmp_path / "r.yaml", ["mesh=data=2,fsdp=-1"]).runtime.mesh == "data=2,fsdp=-1"
    with pytest.raises(ValueError, match="unknown axis 'model'"):
        load_run_config(tmp_path / "r.yaml", ["mesh=model=2"])
