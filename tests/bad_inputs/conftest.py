"""Shared material of the bad-input corpus: a tiny checkpoint (tokenizer, processor configs,
zero weights: nothing is initialised or compiled), its native Orbax copy, the loaded model, and
runners for the command line (in-process ``main`` and a real ``python -m qwen2vl_jax``)."""

from __future__ import annotations

import functools
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
# Lines a command may print on stderr before its error: progress, never a traceback.
PROGRESS = re.compile(r"^\[(convert|generate)\] ")


class Resources:
    """Lazily built, shared by every case of the session."""

    def __init__(self, root: Path):
        self.root = root

    @functools.cached_property
    def ckpt(self) -> Path:
        """A HF checkpoint directory: config.json, model.safetensors (zeros), tokenizer, processor."""
        import jax
        import numpy as np
        from flax import nnx
        from tokenizers import Tokenizer

        from qwen2vl_jax.checkpoint.safetensors_io import save_hf_weights
        from qwen2vl_jax.config import get_preset
        from qwen2vl_jax.model import abstract_model
        from qwen2vl_jax.testing.tiny_checkpoint import HUB_PREPROCESSOR_CONFIG, build_tiny_tokenizer

        d = self.root / "tiny_hf"
        build_tiny_tokenizer(d)
        (d / "preprocessor_config.json").write_text(json.dumps({**HUB_PREPROCESSOR_CONFIG,
                                                               "max_pixels": 56 * 84}))
        tok = Tokenizer.from_file(str(d / "tokenizer.json"))
        tid = tok.token_to_id
        base = get_preset("tiny")
        cfg = base.replace(
            text=base.text.__class__(**{**base.text.__dict__, "vocab_size": tok.get_vocab_size()}),
            image_token_id=tid("<|image_pad|>"), video_token_id=tid("<|video_pad|>"),
            vision_start_token_id=tid("<|vision_start|>"), vision_end_token_id=tid("<|vision_end|>"),
            vision_token_id=tid("<|vision_pad|>"), bos_token_id=tid("<|endoftext|>"),
            eos_token_id=tid("<|im_end|>"), pad_token_id=tid("<|endoftext|>"))
        params = nnx.to_pure_dict(nnx.state(abstract_model(cfg), nnx.Param))
        self.params = jax.tree.map(lambda x: np.zeros(x.shape, np.float32), params)
        self.cfg = cfg
        save_hf_weights(d, cfg, self.params)
        (d / "config.json").write_text(json.dumps(cfg.to_hf_dict("float32"), indent=2))
        (d / "generation_config.json").write_text(json.dumps(
            {"eos_token_id": [tid("<|im_end|>"), tid("<|endoftext|>")], "pad_token_id": tid("<|endoftext|>"),
             "do_sample": False}))
        return d

    @functools.cached_property
    def native(self) -> Path:
        """The same weights as our Orbax checkpoint (with the tokenizer files)."""
        from qwen2vl_jax.checkpoint.convert import copy_sidecar_files
        from qwen2vl_jax.checkpoint.native import save_native

        src = self.ckpt
        out = save_native(self.root / "tiny_native", self.cfg, self.params)
        copy_sidecar_files(src, out)
        return out

    @functools.cached_property
    def model(self):
        from qwen2vl_jax.hf import Qwen2VLForConditionalGeneration

        return Qwen2VLForConditionalGeneration.from_pretrained(self.ckpt)

    def copy(self, src: Path, dst: Path) -> Path:
        shutil.copytree(src, dst)
        return dst


class Runner:
    """Runs one case: the command line in-process (``cli``) or as a real process (``process``)."""

    def __init__(self, capsys: pytest.CaptureFixture, resources: Resources):
        self.capsys = capsys
        self.res = resources

    def _outcome(self, status: int, stderr: str) -> tuple[str, str]:
        assert "Traceback" not in stderr, stderr
        lines = stderr.strip().splitlines()
        errors = [i for i, line in enumerate(lines) if not PROGRESS.match(line)]
        assert errors, f"no error line on stderr: {stderr!r}"
        # Everything before the error is progress; the error (possibly several lines listing
        # tensors) runs to the end.
        assert all(PROGRESS.match(line) for line in lines[:errors[0]]), stderr
        return f"exit {status}", "\n".join(lines[errors[0]:])

    def cli(self, *argv: str) -> tuple[str, str]:
        from qwen2vl_jax.cli import main

        self.capsys.readouterr()
        status = main([str(a) for a in argv])
        return self._outcome(status, self.capsys.readouterr().err)

    def process(self, *argv: str) -> tuple[str, str]:
        env = {**os.environ, "JAX_PLATFORMS": "cpu"}
        proc = subprocess.run([sys.executable, "-m", "qwen2vl_jax", *map(str, argv)], capture_output=True,
                              text=True, env=env, cwd=ROOT, timeout=300, check=False)
        status, text = self._outcome(proc.returncode, proc.stderr)
        return f"{status} (process)", text


@pytest.fixture(scope="session")
def resources(tmp_path_factory: pytest.TempPathFactory) -> Resources:
    return Resources(tmp_path_factory.mktemp("bad_inputs"))


@pytest.fixture
def runner(capsys: pytest.CaptureFixture, resources: Resources) -> Runner:
    return Runner(capsys, resources)
