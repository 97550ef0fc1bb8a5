"""Round trips: HF dir -> ours -> save_pretrained -> transformers, and HF -> Orbax -> HF."""

import json

import numpy as np
import pytest
import torch
from safetensors.numpy import load_file, save_file

from qwen2vl_jax import Qwen2VLForConditionalGeneration
from qwen2vl_jax.cli import main as cli_main
from qwen2vl_jax.testing.hf_oracle import HFModel, build_hf_model, case_inputs, hf_forward

CASE = "left_padded_batch_of_2"


@pytest.fixture(scope="module", params=["tied", "untied"])
def hf_dir(request, tmp_path_factory):
    tie = request.param == "tied"
    path = tmp_path_factory.mktemp(f"src_{request.param}")
    build_hf_model(seed=3, tie=tie).save_pretrained(path)
    return path


def _hf_logits(path, dtype=torch.float32):
    model = HFModel.from_pretrained(path, dtype=dtype).eval()
    return hf_forward(model, case_inputs(CASE)).logits.float().numpy()


def test_save_pretrained_loads_in_transformers(hf_dir, tmp_path):
    ours = Qwen2VLForConditionalGeneration.from_pretrained(hf_dir)
    out = tmp_path / "exported"
    ours.save_pretrained(out)
    src_keys = set(load_file(str(hf_dir / "model.safetensors")))
    assert set(load_file(str(out / "model.safetensors"))) == src_keys  # same names; no lm_head if tied
    np.testing.assert_array_equal(_hf_logits(out), _hf_logits(hf_dir))
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["model_type"] == "qwen2_vl" and cfg["architectures"] == ["Qwen2VLForConditionalGeneration"]


def test_sharded_export_and_import(hf_dir, tmp_path):
    ours = Qwen2VLForConditionalGeneration.from_pretrained(hf_dir)
    out = tmp_path / "sharded"
    ours.save_pretrained(out, max_shard_bytes=200_000)
    index = json.loads((out / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) > 2
    np.testing.assert_array_equal(_hf_logits(out), _hf_logits(hf_dir))
    again = Qwen2VLForConditionalGeneration.from_pretrained(out)
    inputs = case_inputs(CASE)
    np.testing.assert_array_equal(np.asarray(again(**inputs).logits), np.asarray(ours(**inputs).logits))


def test_bf16_export_loads_in_transformers(hf_dir, tmp_path):
    ours = Qwen2VLForConditionalGeneration.from_pretrained(hf_dir, dtype="bfloat16")
    ours.save_pretrained(tmp_path / "bf16")
    loaded = load_file(str(tmp_path / "bf16" / "model.safetensors"))
    assert all(str(v.dtype) == "bfloat16" for v in loaded.values())
    ref = HFModel.from_pretrained(hf_dir, dtype=torch.bfloat16).eval()
    exported = HFModel.from_pretrained(tmp_path / "bf16", dtype=torch.bfloat16).eval()
    for (n1, p1), (n2, p2) in zip(ref.state_dict().items(), exported.state_dict().items()):
        assert n1 == n2 and torch.equal(p1, p2), n1


def test_in_memory_transformers_names_are_accepted(hf_dir, tmp_path):
    # transformers >= 4.52 state_dict() names: model.language_model.* / model.visual.*
    renamed = {}
    for name, tensor in load_file(str(hf_dir / "model.safetensors")).items():
        if name.startswith("visual."):
            name = "model." + name
        elif name.startswith("model."):
            name = "model.language_model." + name[len("model."):]
        renamed[name] = tensor
    d = tmp_path / "renamed"
    d.mkdir()
    save_file(renamed, str(d / "model.safetensors"), metadata={"format": "pt"})
    (d / "config.json").write_text((hf_dir / "config.json").read_text())
    inputs = case_inputs(CASE)
    a = Qwen2VLForConditionalGeneration.from_pretrained(d)(**inputs).logits
    b = Qwen2VLForConditionalGeneration.from_pretrained(hf_dir)(**inputs).logits
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_orbax_round_trip_through_the_cli(hf_dir, tmp_path):
    orbax_dir, back = tmp_path / "orbax", tmp_path / "back"
    assert cli_main(["convert", "--hf", str(hf_dir), "--out", str(orbax_dir)]) == 0
    inputs = case_inputs(CASE)
    native = Qwen2VLForConditionalGeneration.from_pretrained(orbax_dir)
    direct = Qwen2VLForConditionalGeneration.from_pretrained(hf_dir)
    np.testing.assert_array_equal(np.asarray(native(**inputs).logits), np.asarray(direct(**inputs).logits))
    assert cli_main(["convert", "--orbax", str(orbax_dir), "--to-hf", str(back)]) == 0
    np.testing.assert_array_equal(_hf_logits(back), _hf_logits(hf_dir))


def test_orbax_conversion_to_bf16(hf_dir, tmp_path):
    orbax_dir = tmp_path / "orbax16"
    assert cli_main(["convert", "--hf", str(hf_dir), "--out", str(orbax_dir), "--dtype", "bfloat16"]) == 0
    native = Qwen2VLForConditionalGeneration.from_pretrained(orbax_dir, dtype="bfloat16")
    direct = Qwen2VLForConditionalGeneration.from_pretrained(hf_dir, dtype="bfloat16")
    inputs = case_inputs(CASE)
    np.testing.assert_array_equal(np.asarray(native(**inputs).logits), np.asarray(direct(**inputs).logits))
