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
