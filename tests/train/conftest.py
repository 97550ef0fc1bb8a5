"""Shared fixtures of the training tests: the demo's small tokenizer/processor and model config."""

import pytest

from qwen2vl_jax.train.run_config import load_run_config
from qwen2vl_jax.train.setup import build_model_config, build_processor

DEMO_RECIPE = "experiments/configs/demo.yaml"


@pytest.fixture(scope="session")
def demo_setup(tmp_path_factory):
    """(run config, processor, model config) of the demo recipe, in a temp run directory."""
    out = tmp_path_factory.mktemp("demo_setup")
    run = load_run_config(DEMO_RECIPE, [f"output_dir={out}"])
    processor = build_processor(run)
    return run, processor, build_model_config(run, processor)
