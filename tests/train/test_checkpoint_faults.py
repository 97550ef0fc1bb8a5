"""Checkpoint faults lose nothing: a corrupt or incomplete latest step falls back to the newest
valid one, old steps go only after a newer one is verified, a full disk fails the save with a
clear message and leaves the previous checkpoint intact."""

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from qwen2vl_jax.train.checkpointing import TrainCheckpointer, check_step_dir


def _tree(v):
    return {"w": np.full((64, 64), v, np.float32), "b": np.arange(8, dtype=np.float32) + v}


def _save_steps(directory, steps, keep_last=5):
    with TrainCheckpointer(directory, keep_last=keep_last, say=lambda _: None) as ckpt:
        for s in steps:
            ckpt.save(s, _tree(s), _tree(-s), data_iter_state={"i": s}, config={"steps": s})


def _largest_file(step_dir):
    files = [p for p in step_dir.rglob("*") if p.is_file() and p.name != "qwen2vl_manifest.json"]
    return max(files, key=lambda p: p.stat().st_size)


def test_a_truncated_latest_step_falls_back_to_the_previous_one(tmp_path):
    _save_steps(tmp_path, [1, 2])
    victim = _largest_file(tmp_path / "2")
    victim.write_bytes(victim.read_bytes()[: victim.stat().st_size // 2])
    assert "truncated" in check_step_dir(tmp_path / "2")
    said = []
    with TrainCheckpointer(tmp_path, say=said.append) as ckpt:
        assert ckpt.latest_step() == 1
        step, params, opt, data, _ = ckpt.restore(_tree(0), _tree(0))
    assert step == 1 and data == {"i": 1} and float(params["w"][0, 0]) == 1.0
    assert said and "step 2" in said[0] and "truncated" in said[0]


def test_a_step_killed_after_orbax_committed_it_but_before_its_manifest_is_read_back(tmp_path):
    _save_steps(tmp_path, [1, 2])
    (tmp_path / "2" / "qwen2vl_manifest.json").unlink()  # what a kill between commit and manifest leaves
    said = []
    with TrainCheckpointer(tmp_path, say=said.append) as ckpt:
        assert ckpt.valid_steps() == [1]
        step, params, _, data, _ = ckpt.restore(_tree(0), _tree(0))
        assert step == 2 and data == {"i": 2} and float(params["w"][0, 0]) == 2.0
        assert ckpt.valid_steps() == [1, 2]  # read back in full, so its manifest is written
    assert "no manifest" in said[0]


def test_a_step_killed_mid_save_is_ignored(tmp_path):
    _save_steps(tmp_path, [1, 2])
    # What a kill during the write leaves: Orbax's temporary directory, never renamed to "3".
    (tmp_path / "3.orbax-checkpoint-tmp-1234").mkdir()
    with TrainCheckpointer(tmp_path, say=lambda _: None) as ckpt:
        assert ckpt.all_steps() == [1, 2] and ckpt.restore(_tree(0), _tree(0))[0] == 2


def test_a_manifestless_step_that_does_not_read_back_falls_back(tmp_path):
    _save_steps(tmp_path, [1, 2])
    (tmp_path / "2" / "qwen2vl_manifest.json").unlink()
    victim = _largest_file(tmp_path / "2")
    victim.write_bytes(victim.read_bytes()[: victim.stat().st_size // 2])
    said = []
    with TrainCheckpointer(tmp_path, say=said.append) as ckpt:
        assert ckpt.restore(_tree(0), _tree(0))[0] == 1
    assert "step 2 is unreadable" in said[0]


def test_a_corrupt_array_that_keeps_its_size_is_caught_by_orbax(tmp_path):
    _save_steps(tmp_path, [1, 2])
    meta = next(p for p in (tmp_path / "2").rglob("*") if p.name in ("_METADATA", "metadata") and p.is_file())
    meta.write_bytes(b"x" * meta.stat().st_size)  # same size: only reading it reveals the damage
    said = []
    with TrainCheckpointer(tmp_path, say=said.append) as ckpt:
        assert ckpt.restore(_tree(0), _tree(0))[0] == 1
    assert "step 2 is unreadable" in said[0]


def test_old_steps_are_deleted_only_after_a_newer_one_is_verified(tmp_path):
    _save_steps(tmp_path, [1, 2, 3], keep_last=2)
    assert sorted(int(p.name) for p in tmp_path.iterdir() if p.name.isdigit()) == [2, 3]
    with pytest.raises(ValueError, match="no checkpoint to restore"):
        TrainCheckpointer(tmp_path / "empty").restore(_tree(0), _tree(0))


def test_a_full_disk_stops_the_save_and_keeps_the_previous_checkpoint(tmp_path):
    """RLIMIT_FSIZE makes every write past 8 KB fail with EFBIG, like a full disk."""
    script = textwrap.dedent(f"""
        import resource, signal, sys
        import numpy as np
        sys.path.insert(0, {os.path.dirname(__file__)!r})
        from test_checkpoint_faults import _tree
        from qwen2vl_jax.train.checkpointing import CheckpointWriteError, TrainCheckpointer
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        ckpt = TrainCheckpointer({str(tmp_path)!r}, keep_last=1, say=print)
        ckpt.save(1, _tree(1), _tree(-1))
        ckpt.wait()
        big = {{"w": np.random.default_rng(0).standard_normal((512, 512)).astype(np.float32)}}
        resource.setrlimit(resource.RLIMIT_FSIZE, (8192, resource.RLIM_INFINITY))
        try:
            ckpt.save(2, big, big)
            ckpt.wait()
        except CheckpointWriteError as e:
            print("ERROR:", e)
        resource.setrlimit(resource.RLIMIT_FSIZE, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
        print("VALID:", ckpt.valid_steps())
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300,
                         env={**os.environ, "JAX_PLATFORMS": "cpu"})
    assert "ERROR: could not write the checkpoint of step 2" in out.stdout, out.stdout + out.stderr[-2000:]
    assert "the checkpoint of step 1 is intact" in out.stdout
    assert "VALID: [1]" in out.stdout
    with TrainCheckpointer(tmp_path, say=lambda _: None) as ckpt:
        assert ckpt.restore(_tree(0), _tree(0))[0] == 1
