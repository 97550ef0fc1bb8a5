"""Shared fixtures of the data-pipeline tests: the demo recipe's processor and model config."""

import pytest

from qwen2vl_jax.train.run_config import load_run_config
from qwen2vl_jax.train.setup import build_model_config, build_processor


@pytest.fixture(scope="session")
def demo_parts(tmp_path_factory):
    """(processor, model config) of experiments/configs/demo.yaml, in a temp run directory."""
    out = tmp_path_factory.mktemp("demo_parts")
    run = load_run_config("experiments/configs/demo.yaml", [f"output_dir={out}"])
    processor = build_processor(run)
    return processor, build_model_config(run, processor)
