"""The qwen2vl-jax command line."""

import subprocess
import sys

import pytest

from qwen2vl_jax.cli import main


@pytest.mark.parametrize("preset,count", [("2b", "2,208,985,600"), ("7b", "8,291,375,616"),
                                          ("72b", "73,405,560,320")])
def test_info_prints_exact_parameter_count(preset, count, capsys):
    assert main(["info", "--preset", preset]) == 0
    out = capsys.readouterr().out
    assert f"parameters: {count}\n" in out
    assert '"mrope_section": [\n      16,\n      24,\n      24\n    ]' in out


def test_console_entry_point_runs():
    proc = subprocess.run([sys.executable, "-m", "qwen2vl_jax", "info", "--preset", "tiny", "--json"],
                          capture_output=True, text=True, check=True)
    assert '"parameters": ' in proc.stdout


def test_convert_errors_are_reported(tmp_path, capsys):
    assert main(["convert", "--hf", str(tmp_path), "--out", str(tmp_path / "o")]) == 2
    assert "no config.json" in capsys.readouterr().err
    assert main(["convert", "--orbax", str(tmp_path), "--to-hf", str(tmp_path / "h")]) == 2
    assert "not a qwen2vl_jax Orbax checkpoint" in capsys.readouterr().err


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    """A random tiny checkpoint with a tokenizer, converted HF -> Orbax with the CLI."""
    from PIL import Image

    from qwen2vl_jax.testing.tiny_checkpoint import write_tiny_checkpoint

    root = tmp_path_factory.mktemp("cli")
    write_tiny_checkpoint(root / "hf", max_pixels=56 * 84)
    assert main(["convert", "--hf", str(root / "hf"), "--out", str(root / "orbax")]) == 0
    Image.new("RGB", (150, 100), (200, 30, 30)).save(root / "red.png")
    return root


def test_generate_end_to_end_on_a_converted_checkpoint(converted):
    for name in ("tokenizer.json", "preprocessor_config.json", "generation_config.json"):
        assert (converted / "orbax" / name).exists()  # convert carries the sidecar files
    cmd = [sys.executable, "-m", "qwen2vl_jax", "generate", "--model", str(converted / "orbax"),
           "--image", str(converted / "red.png"), "--prompt", "Describe this image.",
           "--max-new-tokens", "12", "--dtype", "float32", "--text-buckets", "128",
           "--patch-buckets", "256", "--precompile", "--stream-chunk", "4"]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=True)
    assert "precompiled 4 programs" in proc.stderr  # prefill text-only + with image; decode x2
    assert "prefill" in proc.stderr and "tokens/s" in proc.stderr
    assert proc.stdout.endswith("\n")
    # Greedy and deterministic: the same command prints the same answer.
    again = subprocess.run(cmd, capture_output=True, text=True, check=True)
    assert again.stdout == proc.stdout


def test_generate_reports_a_bad_image(converted, tmp_path):
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"not an image")
    assert main(["generate", "--model", str(converted / "orbax"), "--image", str(bad),
                 "--prompt", "hi", "--max-new-tokens", "2"]) == 2


def test_the_training_demo_runs_from_the_shipped_recipe(tmp_path, capsys):
    """The README's first command: the training demo (a few steps), its recipe found in the checkout."""
    from qwen2vl_jax.demo.training import RECIPE

    assert RECIPE.is_file(), RECIPE
    args = ["demo", "--workdir", str(tmp_path), "steps=2", "log_every=1", "eval.num_examples=4",
            "eval.batch_size=4", "tensorboard=false", "per_device_batch_size=2", "data.patches_per_row=192"]
    assert main(args) == 0
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert last.startswith("held-out exact match: ") and "answer-without-looking baseline:" in last


def test_demo_runs(tmp_path, capsys):
    assert main(["demo", "--inference", "--workdir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "logits identical across the three formats: True" in out
    assert "same seed, same answer: True" in out
    assert "2b: 2,208,985,600" in out
